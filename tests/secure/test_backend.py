"""MaskingBackend: the secure channels computed by the real masking protocol.

Without dropouts every result, measurement and state must be bit-identical to the default
in-process backend. With dropouts, the round must equal an in-process round over the survivors
only (which proves that every channel sum of the round covered exactly the same clients), and a
round with too few survivors must abort without touching the aggregator's state.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

pytest.importorskip("cryptography")

import aggkit as ak
from aggkit import channels
from aggkit.secure.backend import MaskingBackend
from aggkit.secure.errors import ProtocolAbort
from aggkit.secure.modular_sum import secure_modular_sum
from aggkit.secure.secure_sum import secure_sum

TEMPLATE = {"kernel": ak.TensorSpec((20, 12), np.float32), "bias": ak.TensorSpec((12,), np.float32)}


def _clients(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Client updates of varied norms: some get clipped, the last one is zeroed (huge values)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        scale = 0.05 * (1 + i % 4)
        out.append(
            {
                "kernel": rng.normal(0, scale, (20, 12)).astype(np.float32),
                "bias": rng.normal(0, scale, 12).astype(np.float32),
            }
        )
    out[-1]["bias"][3] = 60.0  # above the zeroing norm (21 at first) and the value bound
    return out


def _weights(count: int, seed: int) -> list[float]:
    return list(np.random.default_rng(seed + 100).uniform(0.5, 4.0, count))


def _assert_identical(a, b, path="out"):
    """Equal structure, dtypes and bits (NaN == NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray | np.generic):
        assert isinstance(b, np.ndarray | np.generic), path
        assert np.asarray(a).dtype == np.asarray(b).dtype, path
        assert np.asarray(a).shape == np.asarray(b).shape, path
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), f"{path}: {a!r} != {b!r}"


def _subset(values, weights, included):
    return [values[i] for i in included], None if weights is None else [
        weights[i] for i in included
    ]


# -- bit-identical without dropouts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("weighted", "code_bits"),
    [(True, 32), (False, 32), (True, 22)],
    ids=["weighted", "unweighted", "weighted-22-bit"],
)
def test_secure_aggregator_is_bit_identical_over_rounds(weighted, code_bits):
    process = ak.secure_aggregator(weighted=weighted, code_bits=code_bits).create(TEMPLATE)
    backend = MaskingBackend(seed=1)
    k = 10
    state_in = state_mask = process.initialize()
    for round_index in range(3):
        values = _clients(k, seed=round_index)
        weights = _weights(k, round_index) if weighted else None
        expected = process.next(state_in, values, weights)
        with channels.recording() as log, backend.round() as report:
            got = process.next(state_mask, values, weights)
        _assert_identical(got.result, expected.result, "result")
        _assert_identical(got.measurements, expected.measurements, "measurements")
        _assert_identical(got.state, expected.state, "state")
        state_in, state_mask = expected.state, got.state
        # Every secure channel use went through one protocol run, over all K clients, with the
        # modulus the channel prescribes.
        assert log and all(use.secure for use in log)
        assert len(report.sums) == len(log)
        for use, run in zip(log, report.sums, strict=True):
            assert (run.clients, run.length) == (k, use.length) == (use.clients, use.length)
            if use.bitwidth is not None:
                assert run.modulus == 2 ** (use.bitwidth + math.ceil(math.log2(k)))
            else:
                assert run.modulus == use.modulus
            assert run.included == tuple(range(k))
            assert run.bytes_to_server > 0 and run.bytes_to_clients > 0
            # Every float sum (values, weights, estimates' records) has code_bits-bit codes.
            assert use.bitwidth in (1, code_bits) or use.bitwidth is None
        assert report.aborted is None and report.dropped == {} and report.pruned == {}
    # The data exercised zeroing and clipping, and the rounds moved the estimates.
    assert got.measurements["zeroed_count"] >= 1
    assert got.measurements["zeroing"]["clipped_count"] >= 1
    assert got.measurements["zeroing_norm"] != 21.0
    assert backend.last_report is report and len(backend.reports) == 3
    assert [r.index for r in backend.reports] == [0, 1, 2]


def test_secagg_complete_graph_is_bit_identical_too():
    process = ak.secure_aggregator().create(TEMPLATE)
    values, weights = _clients(6, 3), _weights(6, 3)
    expected = process.next(process.initialize(), values, weights)
    backend = MaskingBackend(graph="secagg")
    got = backend.run(process, process.initialize(), values, weights)
    _assert_identical(got, expected)
    degree = {len(vs) for vs in backend.last_report.graph.values()}
    assert degree == {5}


@pytest.mark.parametrize(
    ("factory", "dtype", "bound"),
    [
        (lambda: secure_sum(0.5), np.float32, 0.8),
        (lambda: secure_sum(3.0, -1.0), np.float64, 4.0),
        (lambda: secure_sum(1000, -7), np.int32, 1200),
        (lambda: secure_sum(2**40, 0), np.int64, 2**41),
        (lambda: secure_modular_sum(1000), np.int32, 5000),
        (lambda: secure_modular_sum(77, symmetric_range=True), np.int64, 500),
        (lambda: secure_modular_sum(1), np.int32, 9),
    ],
    ids=["float-sym", "float", "int32", "int64-wide", "modular", "modular-odd-sym", "modulus-1"],
)
def test_secure_sum_and_modular_sum_alone_are_bit_identical(factory, dtype, bound):
    process = factory().create(ak.TensorSpec((7, 9), dtype))
    rng = np.random.default_rng(5)
    for k in (1, 2, 9):
        if np.dtype(dtype).kind == "f":
            values = [rng.uniform(-bound, bound, (7, 9)).astype(dtype) for _ in range(k)]
        else:
            values = [rng.integers(-bound, bound, (7, 9)).astype(dtype) for _ in range(k)]
        expected = process.next(process.initialize(), values)
        got = MaskingBackend(seed=k).run(process, process.initialize(), values)
        _assert_identical(got, expected)


def test_adaptive_secure_sum_is_bit_identical_over_rounds():
    bound = ak.quantile_estimator(0.3, 0.7, 0.5, secure_estimation=True)
    process = secure_sum(bound).create(ak.TensorSpec((40,), np.float32))
    backend = MaskingBackend()  # no seed: keys from os.urandom, the sums are the same
    rng = np.random.default_rng(11)
    state_in = state_mask = process.initialize()
    for _ in range(3):
        values = [rng.normal(0, 0.5, 40).astype(np.float32) for _ in range(8)]
        expected = process.next(state_in, values)
        got = backend.run(process, state_mask, values)
        _assert_identical(got, expected)
        state_in, state_mask = expected.state, got.state
    assert backend.last_report.index == 2


def test_sums_outside_a_round_are_rounds_of_their_own():
    backend = MaskingBackend(seed=0)
    x = np.random.default_rng(0).integers(0, 2**20, (5, 33))
    with channels.using_backend(backend):
        exact = channels.secure_sum_bitwidth(x, 20)
        modular = channels.secure_sum_modular(x % 1001, 1001)
    np.testing.assert_array_equal(exact, x.sum(axis=0))
    np.testing.assert_array_equal(modular, (x % 1001).sum(axis=0) % 1001)
    assert exact.dtype == modular.dtype == np.int64
    assert [len(r.sums) for r in backend.reports] == [1, 1]
    assert [r.sums[0].modulus for r in backend.reports] == [2**23, 1001]


def test_direct_sums_up_to_the_protocols_largest_modulus():
    backend = MaskingBackend(seed=0)
    x = np.array([[2**63 + 5, 7], [1, 2**64 - 1]], dtype=np.uint64)
    total = backend.modular_sum(x, 2**64)
    assert total.dtype == np.uint64  # 2**63 + 6 does not fit int64
    np.testing.assert_array_equal(total, np.array([2**63 + 6, 6], np.uint64))
    wrapped = backend.modular_sum(np.array([[2**63 + 5, 7], [2**63 + 1, 0]], np.uint64), 2**64)
    assert wrapped.dtype == np.int64
    np.testing.assert_array_equal(wrapped, [6, 7])
    small = backend.modular_sum(x % 2**62, 2**63)
    assert small.dtype == np.int64
    with pytest.raises(ValueError, match=r"at most 2\*\*64.*2\*\*\(b \+ ceil\(log2 K\)\)"):
        backend.modular_sum(np.zeros((3, 2), np.int64), 2**66)
    with pytest.raises(ValueError, match="modulo 1 to 2"):
        backend.modular_sum(np.zeros((3, 2), np.int64), 0)


# -- dropouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
def test_dropouts_give_the_round_of_the_survivors(weighted):
    """Clients vanish at several stages; the result, measurements and new state equal an
    in-process round over the survivors only, so every channel (values, weights, counts,
    quantile records) summed exactly the survivors."""
    process = ak.secure_aggregator(weighted=weighted).create(TEMPLATE)
    k = 12
    values = _clients(k, 7)
    weights = _weights(k, 7) if weighted else None
    dropouts = {"advertise_keys": [4], "share_keys": [1, 8], "masked_input": [11], "unmask": [0]}
    backend = MaskingBackend(graph="secagg", seed=3)
    state = process.initialize()
    with backend.round(dropouts=dropouts) as report:
        got = process.next(state, values, weights)
    survivors = (0, 2, 3, 5, 6, 7, 9, 10)  # 0 dropped after masking: still in the sum
    assert report.included == survivors
    assert report.dropped == {
        "advertise_keys": (4,),
        "share_keys": (1, 8),
        "masked_input": (11,),
        "unmask": (0,),
    }
    assert all(run.included == survivors for run in report.sums)
    assert all(run.dropped == report.dropped for run in report.sums)
    expected = process.next(state, *_subset(values, weights, survivors))
    _assert_identical(got, expected)
    # The zeroed client (11) dropped: nothing was zeroed, unlike with all clients.
    assert got.measurements["zeroed_count"] == 0


def test_fractional_dropouts_are_drawn_once_per_round_and_reproducible():
    process = ak.secure_aggregator().create(TEMPLATE)
    k = 10
    values, weights = _clients(k, 2), _weights(k, 2)
    outs = []
    for _ in range(2):
        backend = MaskingBackend(graph="secagg", seed=9, dropouts={"masked_input": 0.3})
        outs.append(backend.run(process, process.initialize(), values, weights))
        report = backend.last_report
        assert len(report.included) == 7 and len(report.dropouts["masked_input"]) == 3
        assert all(run.included == report.included for run in report.sums)
        expected = process.next(process.initialize(), *_subset(values, weights, report.included))
        _assert_identical(outs[-1], expected)
    _assert_identical(outs[0], outs[1])


def test_secagg_plus_pruning_is_the_same_in_every_sum():
    """A client that loses too many neighbours before masking is pruned, in every sum."""
    k, seed = 12, 21
    probe = MaskingBackend(degree=4, threshold=3, seed=seed)
    with probe.round() as first:
        channels.secure_sum_modular(np.zeros((k, 1), np.int64), 2)
    graph = first.graph  # round 0 of a backend with this seed always uses this graph
    target = 5
    gone = sorted(graph[target])[:3]  # 3 of its 4 neighbours: 2 holders left < threshold 3
    process = ak.secure_aggregator(weighted=False).create(TEMPLATE)
    values = _clients(k, 4)
    backend = MaskingBackend(degree=4, threshold=3, seed=seed)
    got = backend.run(process, process.initialize(), values, dropouts={"share_keys": gone})
    report = backend.last_report
    assert report.graph == graph
    assert target in report.pruned["share_keys"]
    assert target not in report.included and not set(gone) & set(report.included)
    assert all(
        run.included == report.included and run.pruned == report.pruned for run in report.sums
    )
    expected = process.next(process.initialize(), [values[i] for i in report.included])
    _assert_identical(got, expected)


def test_too_few_survivors_abort_and_leave_the_state_untouched():
    process = ak.secure_aggregator().create(TEMPLATE)
    k = 8
    backend = MaskingBackend(graph="secagg", seed=5)  # threshold: a majority, 5 of 8
    state = process.initialize()
    state = backend.run(process, state, _clients(k, 0), _weights(k, 0)).state  # a real state
    before = copy.deepcopy(state)
    values, weights = _clients(k, 1), _weights(k, 1)
    with pytest.raises(ProtocolAbort, match="masked_input") as error:
        backend.run(process, state, values, weights, dropouts={"masked_input": [0, 2, 4, 6]})
    assert error.value.stage == "masked_input"
    assert backend.last_report.aborted == "masked_input"
    _assert_identical(state, before, "state")
    # The backend is usable again, and the round can be replayed from the same state.
    got = backend.run(process, state, values, weights)
    _assert_identical(got, process.next(before, values, weights))


def test_abort_before_masking_when_every_client_is_pruned():
    backend = MaskingBackend(graph="secagg", threshold=4, seed=0)
    process = secure_sum(1.0).create(ak.TensorSpec((5,), np.float32))
    values = [np.full(5, 0.5, np.float32)] * 6
    with pytest.raises(ProtocolAbort) as error:
        backend.run(process, process.initialize(), values, dropouts={"advertise_keys": [0, 1, 2]})
    assert error.value.stage == "advertise_keys"


# -- configuration errors ------------------------------------------------------------------------


def test_dropouts_need_a_round():
    backend = MaskingBackend(dropouts={"masked_input": [1]})
    with channels.using_backend(backend), pytest.raises(RuntimeError, match=r"backend\.round"):
        channels.secure_sum_bitwidth(np.ones((4, 2), np.int64), 1)
    with pytest.raises(RuntimeError, match="nest"), backend.round(), backend.round():
        pass


def test_round_installs_the_backend_and_restores_the_default():
    backend = MaskingBackend()
    with backend.round():
        assert channels.current_backend() is backend
    assert channels.current_backend() is not backend
    assert backend._open is None


def test_dropouts_naming_missing_clients_are_refused():
    backend = MaskingBackend(dropouts={"unmask": [3]})
    with pytest.raises(ValueError, match=r"client 3 .* 3 clients"), backend.round():
        channels.secure_sum_bitwidth(np.ones((3, 2), np.int64), 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"graph": "ring"}, ValueError, "graph"),
        ({"graph": None}, TypeError, "graph"),
        ({"degree": -1}, ValueError, "degree"),
        ({"degree": 2.0}, TypeError, "degree"),
        ({"threshold": 0}, ValueError, "threshold"),
        ({"threshold": 1.5}, ValueError, "threshold"),
        ({"threshold": True}, TypeError, "threshold"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "x"}, TypeError, "seed"),
        ({"dropouts": [1, 2]}, TypeError, "dropouts"),
        ({"dropouts": {"masking": [1]}}, ValueError, "unknown stage"),
        ({"dropouts": {"unmask": 1.5}}, ValueError, "fraction"),
        ({"dropouts": {"unmask": [-1]}}, ValueError, "non-negative"),
        ({"dropouts": {"unmask": ["a"]}}, TypeError, "ints"),
        ({"dropouts": {"unmask": 1}}, TypeError, "fraction"),
        ({"history": 0}, ValueError, "history"),
    ],
)
def test_bad_parameters_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        MaskingBackend(**kwargs)
