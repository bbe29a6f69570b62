"""The process model: inputs, streaming, weights, bad input, estimation processes."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import aggkit as ak
from aggkit import process as process_module
from aggkit.testing import SumPlusOneFactory

TEMPLATE = {"w": ak.TensorSpec((3, 2), np.float32), "b": ak.TensorSpec((2,), np.float32)}


def _clients(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "w": rng.standard_normal((3, 2), dtype=np.float32),
            "b": rng.standard_normal(2, dtype=np.float32),
        }
        for _ in range(count)
    ]


def _bits(structure):
    return {k: np.asarray(v).tobytes() for k, v in structure.items()}


def test_output_is_a_three_field_record():
    out = ak.sum().create(TEMPLATE).next((), _clients(2))
    assert out._fields == ("state", "result", "measurements")
    state, result, measurements = out
    assert state == () and measurements == () and set(result) == {"w", "b"}


def test_every_input_form_gives_the_same_bits():
    clients = _clients(7)
    weights = np.arange(1.0, 8.0)
    process = ak.mean().create(TEMPLATE)
    state = process.initialize()
    layout = process.layout
    reference = _bits(process.next(state, clients, weights).result)
    batch = layout.pack(clients)
    assert _bits(process.next(state, batch, weights).result) == reference
    assert _bits(process.next(state, tuple(clients), list(weights)).result) == reference
    assert _bits(process.next(state, iter(clients), iter(weights)).result) == reference
    assert _bits(process.next(state, (c for c in clients), weights).result) == reference


def test_streaming_in_small_blocks_gives_the_same_bits(monkeypatch):
    clients = _clients(23, seed=1)
    weights = np.random.default_rng(2).random(23)
    process = ak.mean().create(TEMPLATE)
    reference = _bits(process.next(process.initialize(), clients, weights).result)
    row_bytes = process.layout.size * 4
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 3 * row_bytes)  # 3 clients a block
    assert _bits(process.next(process.initialize(), iter(clients), iter(weights)).result) == (
        reference
    )
    assert _bits(process.next(process.initialize(), clients, weights).result) == reference


def test_streaming_keeps_memory_bounded(monkeypatch):
    # With 2 clients per block, packing never holds more than 2 rows whatever the client count.
    process = ak.sum().create(TEMPLATE)
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 2 * process.layout.size * 4)
    seen = []
    original = process_module.Contributions.__init__

    def spy(self, batch, *args, **kwargs):
        seen.append(batch.num_clients)
        original(self, batch, *args, **kwargs)

    monkeypatch.setattr(process_module.Contributions, "__init__", spy)
    total = process.next((), (c for c in _clients(9))).result
    assert max(seen) == 2 and sum(seen) == 9
    expected = np.sum([c["b"].astype(np.float64) for c in _clients(9)], axis=0)
    np.testing.assert_allclose(total["b"], expected, rtol=1e-6)


def test_stacked_ndarray_for_single_tensor_templates():
    process = ak.sum().create(ak.TensorSpec((2, 2), np.float32))
    stacked = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(process.next((), stacked).result, stacked.sum(axis=0))
    np.testing.assert_array_equal(
        process.next((), stacked[:, ::-1]).result, stacked.sum(axis=0)[::-1]
    )


def test_weightedness_is_enforced():
    with pytest.raises(TypeError, match="needs client weights"):
        ak.mean().create(TEMPLATE).next(ak.mean().create(TEMPLATE).initialize(), _clients(1))
    with pytest.raises(TypeError, match="takes no weights"):
        ak.sum().create(TEMPLATE).next((), _clients(1), [1.0])


@pytest.mark.parametrize(
    ("weights", "client", "words"),
    [
        ([1.0, -1.0, 1.0], 1, "non-negative"),
        ([1.0, 1.0, np.nan], 2, "finite"),
        ([np.inf, 1.0, 1.0], 0, "finite"),
        ([1.0, 1.0], None, "one weight per client"),
        ([[1.0], [1.0], [1.0]], None, "one weight per client"),
    ],
)
def test_bad_weights_raise_and_leave_state_untouched(weights, client, words):
    process = ak.mean(SumPlusOneFactory(), SumPlusOneFactory()).create(TEMPLATE)
    state = process.next(process.initialize(), _clients(3), [1.0, 1.0, 1.0]).state
    before = copy.deepcopy(state)
    with pytest.raises(ak.InvalidUpdateError, match=words) as info:
        process.next(state, _clients(3), weights)
    assert info.value.client == client and info.value.path == "weight"
    assert state == before
    # The same state still works, and gives what it would have given without the failed call.
    again = process.next(state, _clients(3), [1.0, 2.0, 3.0])
    assert again.state == {"value_sum_process": 2, "weight_sum_process": 2}


def test_mismatched_stream_weight_counts_raise():
    process = ak.mean().create(TEMPLATE)
    with pytest.raises(ak.InvalidUpdateError, match="fewer weights"):
        process.next(process.initialize(), iter(_clients(3)), iter([1.0, 1.0]))
    with pytest.raises(ak.InvalidUpdateError, match="more weights"):
        process.next(process.initialize(), iter(_clients(3)), iter([1.0] * 4))


@pytest.mark.parametrize("special", [np.nan, np.inf])
@pytest.mark.parametrize("factory", [ak.sum(), ak.mean(), ak.unweighted_mean()])
def test_nonfinite_values_raise_naming_client_and_tensor(factory, special):
    clients = _clients(4)
    clients[2]["b"] = np.array([0.0, special], np.float32)
    process = factory.create(TEMPLATE)
    state = process.initialize()
    weights = [1.0] * 4 if factory.is_weighted else None
    with pytest.raises(ak.InvalidUpdateError, match=r"NaN|Inf") as info:
        process.next(state, clients, weights)
    assert (info.value.client, info.value.path) == (2, "['b']")


def test_nonfinite_value_in_a_later_stream_block_names_the_global_client(monkeypatch):
    process = ak.sum().create(TEMPLATE)
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 2 * process.layout.size * 4)
    clients = _clients(7)
    clients[5]["w"][1, 1] = np.nan
    with pytest.raises(ak.InvalidUpdateError) as info:
        process.next((), iter(clients))
    assert (info.value.client, info.value.path) == (5, "['w']")


def test_zero_weight_clients_are_not_read():
    # A client with weight 0 contributes exactly nothing (its values are never multiplied).
    clients = _clients(3)
    clients[1]["b"][:] = np.nan
    out = (
        ak.mean()
        .create(TEMPLATE)
        .next(ak.mean().create(TEMPLATE).initialize(), clients, [1.0, 0.0, 1.0])
    )
    expected = (clients[0]["b"].astype(np.float64) + clients[2]["b"]) / 2
    np.testing.assert_allclose(out.result["b"], expected, rtol=1e-6)


def test_batch_with_another_layout_is_rejected():
    process = ak.sum().create(TEMPLATE)
    other = ak.Layout({"w": ak.TensorSpec((6,), np.float32), "b": ak.TensorSpec((2,), np.float32)})
    with pytest.raises(ak.InvalidUpdateError, match="layout"):
        process.next((), other.empty_batch(2))


def test_state_is_plain_picklable_data():
    process = ak.mean(SumPlusOneFactory(), SumPlusOneFactory()).create(TEMPLATE)
    state = process.next(process.initialize(), _clients(2), [1.0, 1.0]).state
    restored = pickle.loads(pickle.dumps(state))
    a = process.next(state, _clients(2, seed=5), [1.0, 2.0])
    b = process.next(restored, _clients(2, seed=5), [1.0, 2.0])
    assert a.state == b.state and _bits(a.result) == _bits(b.result)


def test_factories_are_immutable_values():
    factory = ak.mean(no_nan_division=True)
    assert factory == ak.mean(no_nan_division=True) and hash(factory) == hash(
        ak.mean(no_nan_division=True)
    )
    with pytest.raises(AttributeError):
        factory.no_nan_division = False


def test_constant_and_mapped_estimation_processes():
    constant = ak.ConstantEstimate(2.5)
    state = constant.next(constant.initialize(), np.array([1.0, 100.0]))
    assert state == () and constant.report(state) == 2.5
    doubled = constant.map(lambda v: 2 * v + 1)
    assert doubled.report(doubled.initialize()) == 6.0
    assert isinstance(doubled, ak.EstimationProcess)
    assert process_module.as_estimation_process(3, "norm") == ak.ConstantEstimate(3.0)
    assert process_module.as_estimation_process(doubled, "norm") is doubled
    for bad in ("1.0", None, True, [1.0]):
        with pytest.raises(TypeError, match="norm"):
            process_module.as_estimation_process(bad, "norm")


# -- the round protocol's optional capabilities --------------------------------------------------


class _PlainRound(process_module.Round):
    """A round that offers nothing optional: it sums into a fresh array it does not own."""

    def __init__(self, layout):
        self.total = np.zeros(layout.size)
        self.blocks = 0

    def add(self, block, weights):
        self.blocks += 1
        self.total += block.coef @ block.matrix.astype(np.float64)

    def finish(self):
        return (), self.total, ()


class _PlainSum(ak.Factory):
    is_weighted = False

    def _create(self, layout):
        class Process(ak.AggregationProcess):
            def initialize(self):
                return ()

            def begin_round(self, state):
                return _PlainRound(self.layout)

        return Process(layout)


def test_a_round_without_capabilities_gets_the_defaults_and_keeps_its_array():
    layout = ak.Layout(ak.TensorSpec((3,), np.float32))
    round_ = _PlainRound(layout)
    round_.add_last(process_module.Contributions(layout.pack([np.ones(3, np.float32)])), None)
    assert round_.blocks == 1  # add_last defaults to add
    kept = round_.total
    _, quotient, _ = round_.finish_divided(4.0, np.float32)
    assert quotient.dtype == np.float32 and quotient is not kept
    np.testing.assert_array_equal(kept, [1.0, 1.0, 1.0])  # not divided in place: not owned
    np.testing.assert_array_equal(quotient, [0.25, 0.25, 0.25])
    _, owned, _ = round_.finish_owned()
    assert owned is not kept


def test_a_mean_over_a_sum_without_capabilities_agrees_with_the_fused_mean():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((6, 5000)).astype(np.float32)
    weights = rng.random(6)
    template = ak.TensorSpec((5000,), np.float32)
    fused = ak.mean().create(template)
    plain = ak.mean(_PlainSum()).create(template)
    a = fused.next(fused.initialize(), ak.ClientBatch(matrix, fused.layout), weights).result
    b = plain.next(plain.initialize(), ak.ClientBatch(matrix, plain.layout), weights).result
    np.testing.assert_allclose(a, b, rtol=1e-6)  # the plain round sums in another order


def test_begin_round_must_return_a_round():
    class Duck(ak.AggregationProcess):
        def initialize(self):
            return ()

        def begin_round(self, state):
            return object()

    process = Duck(ak.Layout(ak.TensorSpec((1,), np.float32)))
    with pytest.raises(TypeError, match=r"begin_round must return an aggkit\.process\.Round"):
        process.next((), [np.ones(1, np.float32)])


def test_invalid_update_errors_carry_client_path_and_detail():
    process = ak.mean().create({"w": ak.TensorSpec((2,), np.float32)})
    with pytest.raises(ak.InvalidUpdateError) as info:
        process.next(
            process.initialize(),
            [{"w": np.ones(2, np.float32)}, {"w": np.array([1.0, np.nan], np.float32)}],
            [1, 1],
        )
    error = info.value
    assert (error.client, error.path) == (1, "['w']")
    assert str(error) == f"client 1, tensor ['w']: {error.detail}" and "NaN" in error.detail
    copy_ = pickle.loads(pickle.dumps(error))
    assert (copy_.client, copy_.path, copy_.detail, str(copy_)) == (
        1,
        "['w']",
        error.detail,
        str(error),
    )
