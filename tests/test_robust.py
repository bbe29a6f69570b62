"""Zeroing and clipping: every numbered case of TFF's robust_test.py, properties,
and fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aggkit as ak
from aggkit import kernels
from aggkit.process import Contributions, EstimationProcess
from aggkit.testing import SumPlusOneFactory
from tests.memory import peak_allocation
from tests.strategies import client_matrices

F32 = ak.TensorSpec((), np.float32)
STRUCT4 = [F32, (F32, F32), F32]  # four equal entries v: L2 norm 2v, L1 4v, L-inf v


def _struct(v):
    return [v, (v, v), v]


class Counting(EstimationProcess):
    """Reports 1, 2, 3, ... (times ``scale``, plus ``offset``): TFF's test norm process."""

    def __init__(self, scale=1.0, offset=0.0):
        self.scale, self.offset = scale, offset

    def initialize(self):
        return 1

    def next(self, state, values):
        return state + 1

    def report(self, state):
        return self.offset + self.scale * state


def _rounds(factory, template, data, weights=None, rounds=1):
    process = factory.create(template)
    state = process.initialize()
    outputs = []
    for _ in range(rounds):
        out = process.next(state, data, weights)
        state = out.state
        outputs.append(out)
    return outputs


# -- TFF: zeroing --------------------------------------------------------------------------------


def test_zeroing_state_and_measurement_structure():
    process = ak.zeroing(2.0, ak.mean()).create(F32)
    assert process.is_weighted
    assert process.initialize() == {
        "zeroing_norm": (),
        "inner_agg": {"value_sum_process": (), "weight_sum_process": ()},
        "zeroed_count_agg": (),
    }
    out = process.next(process.initialize(), [1.0], [1.0])
    assert out.measurements == {
        "zeroing": {"mean_value": (), "mean_weight": ()},
        "zeroing_norm": 2.0,
        "zeroed_count": 0,
    }
    assert not ak.zeroing(2.0, ak.sum()).create(F32).is_weighted


def test_count_factory_is_used_for_the_count():
    process = ak.zeroing(2.0, ak.sum(), zeroed_count_sum=SumPlusOneFactory()).create(F32)
    out = process.next(process.initialize(), [1.0, 5.0])
    assert out.measurements["zeroed_count"] == 2  # one zeroed, plus one
    assert out.state["zeroed_count_agg"] == 1


@pytest.mark.parametrize("order", [2.0, math.inf])
def test_fixed_zero_sum(order):
    [out] = _rounds(ak.zeroing(2.0, ak.sum(), norm_order=order), F32, [1.0, 2.0, 5.0])
    assert out.result == 3.0 and out.measurements["zeroed_count"] == 1


@pytest.mark.parametrize("order", [2.0, math.inf])
def test_fixed_zero_mean(order):
    [out] = _rounds(
        ak.zeroing(2.0, ak.mean(), norm_order=order), F32, [1.0, 2.0, 5.0], [1.0, 2.0, 2.0]
    )
    assert out.result == pytest.approx(1.0)  # 5 / 5: the zeroed client keeps its weight


def test_fixed_zero_struct_l2():
    [out] = _rounds(
        ak.zeroing(4.0, ak.sum(), norm_order=2.0),
        STRUCT4,
        [_struct(1.0), _struct(2.0), _struct(5.0)],
    )
    assert out.result == _struct(3.0) and out.measurements["zeroed_count"] == 1


def test_fixed_zero_struct_inf():
    [out] = _rounds(
        ak.zeroing(2.0, ak.mean()),
        STRUCT4,
        [_struct(1.0), _struct(2.0), _struct(5.0)],
        [1.0, 2.0, 2.0],
    )
    assert out.result == _struct(1.0)


def test_increasing_zero_sum():
    outs = _rounds(ak.zeroing(Counting(), ak.sum()), F32, [0.5, 1.5, 2.5], rounds=3)
    assert [o.result for o in outs] == [0.5, 2.0, 4.5]
    assert [o.measurements["zeroed_count"] for o in outs] == [2, 1, 0]
    assert [o.measurements["zeroing_norm"] for o in outs] == [1.0, 2.0, 3.0]


def test_increasing_zero_mean():
    outs = _rounds(ak.zeroing(Counting(), ak.mean()), F32, [0.5, 1.5, 2.5], [1.0, 2.0, 1.0], 3)
    np.testing.assert_allclose([o.result for o in outs], [0.5 / 4, 3.5 / 4, 6 / 4], rtol=1e-6)


def test_increasing_zero_clip_sum():
    factory = ak.zeroing(
        Counting(scale=0.75, offset=0.25),  # 1, 1.75, 2.5, 3.25, 4.0
        ak.clipping(Counting(scale=0.25, offset=0.75), ak.sum()),  # 1, 1.25, 1.5, 1.75, 2.0
    )
    outs = _rounds(factory, F32, [1.0, 2.0, 3.0], rounds=5)
    np.testing.assert_allclose([o.result for o in outs], [1, 1, 2.5, 4.5, 5], rtol=1e-6)
    assert [o.measurements["zeroed_count"] for o in outs] == [2, 2, 1, 0, 0]
    assert [o.measurements["zeroing"]["clipped_count"] for o in outs] == [0, 0, 1, 2, 1]
    assert set(outs[0].measurements["zeroing"]) == {"clipping", "clipping_norm", "clipped_count"}


@pytest.mark.parametrize("second", [(10.0, 1.0), (1.0, 10.0), (10.0, 10.0)])
def test_zero_mixed_float_dtype(second):
    template = (ak.TensorSpec((), np.float16), ak.TensorSpec((), np.float32))
    values = [(np.float16(1), np.float32(1)), (np.float16(0.5), np.float32(0.5))]
    [out] = _rounds(ak.zeroing(3.0, ak.sum()), template, values)
    assert out.result == (1.5, 1.5) and out.result[0].dtype == np.float16
    values = [values[0], (np.float16(second[0]), np.float32(second[1]))]
    [out] = _rounds(ak.zeroing(3.0, ak.sum()), template, values)
    assert out.result == (1.0, 1.0)


@pytest.mark.parametrize("permutation", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_norms(permutation):
    parts = [np.float32(1.0), (np.float32(-2.0), np.float32(2.0)), np.float32(-4.0)]
    value = [parts[i] for i in permutation]
    layout = ak.Layout(value)
    block = Contributions(layout.pack([value]))
    assert block.norms(math.inf)[0] == 4.0
    assert block.norms(2.0)[0] == 5.0
    assert block.norms(1.0)[0] == 9.0


def test_nonfinite_clients_are_zeroed_and_counted():
    [out] = _rounds(
        ak.zeroing(100.0, ak.mean()),
        ak.TensorSpec((2,), np.float32),
        [[1.0, 1.0], [np.nan, 1.0], [np.inf, 0.0]],
        [1.0, 1.0, 1.0],
    )
    assert out.measurements["zeroed_count"] == 2
    np.testing.assert_allclose(out.result, [1 / 3, 1 / 3], rtol=1e-6)


# -- TFF: clipping -------------------------------------------------------------------------------


def test_clipping_state_and_measurement_structure():
    process = ak.clipping(2.0, ak.sum()).create(F32)
    assert process.initialize() == {"clipping_norm": (), "inner_agg": (), "clipped_count_agg": ()}
    out = process.next(process.initialize(), [1.0])
    assert out.measurements == {"clipping": (), "clipping_norm": 2.0, "clipped_count": 0}


def test_fixed_clip_sum():
    [out] = _rounds(ak.clipping(2.0, ak.sum()), F32, [1.0, 3.0, 5.0])
    assert out.result == 5.0 and out.measurements["clipped_count"] == 2


def test_fixed_clip_mean():
    [out] = _rounds(ak.clipping(2.0, ak.mean()), F32, [1.0, 3.0, 5.0], [1.0, 2.0, 1.0])
    assert out.result == pytest.approx(7 / 4)


def test_fixed_clip_struct():
    data = [_struct(1.0), _struct(2.0), _struct(3.0)]
    [out] = _rounds(ak.clipping(4.0, ak.sum()), STRUCT4, data)
    np.testing.assert_allclose(np.array(out.result, dtype=object).tolist()[0], 5.0)
    assert out.measurements["clipped_count"] == 1  # norm 4 == C is not clipped
    [out] = _rounds(ak.clipping(4.0, ak.mean()), STRUCT4, data, [1.0, 2.0, 1.0])
    assert float(out.result[0]) == pytest.approx(7 / 4)


def test_increasing_clip_sum_and_mean():
    outs = _rounds(ak.clipping(Counting(), ak.sum()), F32, [1.0, 3.0, 5.0], rounds=3)
    assert [o.result for o in outs] == [3.0, 5.0, 7.0]
    assert [o.measurements["clipped_count"] for o in outs] == [2, 2, 1]
    outs = _rounds(ak.clipping(Counting(), ak.mean()), F32, [1.0, 3.0, 5.0], [1.0, 2.0, 1.0], 3)
    np.testing.assert_allclose([o.result for o in outs], [1.0, 7 / 4, 10 / 4], rtol=1e-6)


@pytest.mark.parametrize(("second", "expected"), [((3, 4), (2.8, 3.4)), ((4, 3), (3.4, 2.8))])
def test_clip_mixed_float_dtype(second, expected):
    template = (ak.TensorSpec((), np.float16), ak.TensorSpec((), np.float32))
    [out] = _rounds(
        ak.clipping(3.0, ak.sum()),
        template,
        [(np.float16(1), np.float32(1)), (np.float16(0.5), np.float32(0.5))],
    )
    assert out.result == (1.5, 1.5)
    [out] = _rounds(
        ak.clipping(3.0, ak.sum()),
        template,
        [(np.float16(1), np.float32(1)), (np.float16(second[0]), np.float32(second[1]))],
    )
    np.testing.assert_allclose(np.array(out.result, dtype=np.float64), expected, atol=1e-3)
    assert out.result[0].dtype == np.float16


def _clip_by_global_norm(values, clip):
    """NumPy restatement of tf.clip_by_global_norm for one structure (list of arrays)."""
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in values))
    scale = clip / max(norm, clip)
    return [v * scale for v in values]


@pytest.mark.parametrize("clip", [1e-3, 1.0, 100.0])
def test_clip_by_global_l2_norm(clip):
    rng = np.random.default_rng(3)
    template = [ak.TensorSpec((3, 4), np.float32), ak.TensorSpec((5,), np.float32)]
    clients = [
        [rng.normal(0, s, (3, 4)).astype(np.float32), rng.normal(0, s, 5).astype(np.float32)]
        for s in (0.01, 1.0, 30.0)
    ]
    for client in clients:
        [out] = _rounds(ak.clipping(clip, ak.sum()), template, [client])
        for got, want in zip(out.result, _clip_by_global_norm(client, clip), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_nonfinite_clients_are_dropped_by_clipping():
    [out] = _rounds(
        ak.clipping(1.0, ak.sum()),
        ak.TensorSpec((2,), np.float32),
        [[0.3, 0.4], [np.inf, 1.0], [np.nan, 0.0]],
    )
    np.testing.assert_allclose(out.result, [0.3, 0.4], rtol=1e-6)
    assert out.measurements["clipped_count"] == 2


# -- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_norms_raise_value_error(bad):
    with pytest.raises(ValueError, match="norm"):
        ak.zeroing(bad, ak.sum())
    with pytest.raises(ValueError, match="norm"):
        ak.clipping(bad, ak.sum())


def test_bad_arguments_raise_type_or_value_errors():
    with pytest.raises(TypeError, match="norm"):
        ak.clipping("1.0", ak.sum())
    with pytest.raises(TypeError, match="inner"):
        ak.zeroing(1.0, ak.sum)
    with pytest.raises(ValueError, match="norm_order"):
        ak.zeroing(1.0, ak.sum(), norm_order=3.0)
    with pytest.raises(TypeError, match="count_sum"):
        ak.clipping(1.0, ak.sum(), clipped_count_sum=ak.mean())
    with pytest.raises(TypeError, match="floating"):
        ak.clipping(1.0, ak.sum()).create(ak.TensorSpec((2,), np.int32))


# -- properties ----------------------------------------------------------------------------------


class Recorder(ak.Factory):
    """An unweighted sum that also keeps every client contribution it was given."""

    is_weighted = False

    def __init__(self):
        self.seen = []

    def _create(self, layout):
        recorder = self

        class Process(ak.AggregationProcess):
            def initialize(self):
                return ()

            def begin_round(self, state):
                from aggkit.process import Round
                from aggkit.sum import SumRound

                sum_round = SumRound(layout)

                class Rec(Round):
                    owns_result = True

                    def add(self, block, weights):
                        recorder.seen.append(_contributions(block))
                        sum_round.add(block, weights)

                    def finish(self):
                        return sum_round.finish()

                return Rec()

        return Process(layout)


def _contributions(block):
    """``coef[i] * matrix[i]`` per client, exact zeros for coefficient 0."""
    out = np.zeros(block.matrix.shape, dtype=block.matrix.dtype)
    for i in np.flatnonzero(block.coef):
        out[i] = (block.coef[i] * block.matrix[i].astype(np.float64)).astype(out.dtype)
    return out


@given(client_matrices(max_rows=7, max_cols=40, magnitude=1e3), st.floats(1e-3, 1e3))
def test_every_clipped_contribution_is_in_the_ball(matrix, clip):
    recorder = Recorder()
    layout = ak.Layout([ak.TensorSpec((matrix.shape[1],), matrix.dtype)])
    process = ak.clipping(clip, recorder).create(layout)
    out = process.next(process.initialize(), ak.ClientBatch(matrix, layout))
    [seen] = recorder.seen
    norms = np.linalg.norm(seen.astype(np.float64), axis=1)
    assert np.all(norms <= clip * (1 + 1e-6))
    finite = np.isfinite(matrix).all(axis=1)
    raw = np.linalg.norm(matrix.astype(np.float64), axis=1)
    assert out.measurements["clipped_count"] == int(np.sum(~finite | (raw > clip)))


@given(
    client_matrices(max_rows=7, max_cols=40, magnitude=1e3),
    st.floats(1e-3, 1e3),
    st.sampled_from([1.0, 2.0, math.inf]),
)
def test_zeroed_count_is_the_number_of_clients_over_the_threshold(matrix, limit, order):
    layout = ak.Layout([ak.TensorSpec((matrix.shape[1],), matrix.dtype)])
    process = ak.zeroing(limit, ak.sum(), norm_order=order).create(layout)
    out = process.next(process.initialize(), ak.ClientBatch(matrix, layout))
    with np.errstate(invalid="ignore", over="ignore"):
        norms = (
            np.linalg.norm(matrix.astype(np.float64), ord=order, axis=1)
            if matrix.shape[1]
            else np.zeros(len(matrix))
        )
    bad = ~np.isfinite(matrix).all(axis=1)
    assert out.measurements["zeroed_count"] == int(np.sum(bad | (norms > limit)))
    assert np.isfinite(out.result[0]).all()


def _numpy_robust_mean(clients, weights, zero_limit, clip_limit):
    """The robust composition written plainly on the clients: zero, clip, weighted mean."""
    total = np.zeros(clients.shape[1])
    zeroed = clipped = 0
    for x, w in zip(clients.astype(np.float64), weights, strict=True):
        if not np.isfinite(x).all() or np.abs(x).max(initial=0) > zero_limit:
            x = np.zeros_like(x)
            zeroed += 1
        norm = np.linalg.norm(x)
        if norm > clip_limit:
            x = x * (clip_limit / norm)
            clipped += 1
        total += w * x
    return total / weights.sum(), zeroed, clipped


@given(client_matrices(max_rows=8, max_cols=60, magnitude=50.0), st.data())
def test_fused_path_equals_a_plain_numpy_composition(matrix, data):
    weights = data.draw(st.lists(st.floats(0.1, 10), min_size=len(matrix), max_size=len(matrix)))
    weights = np.asarray(weights)
    layout = ak.Layout([ak.TensorSpec((matrix.shape[1],), matrix.dtype)])
    process = ak.robust_aggregator().create(layout)
    state = process.initialize()
    if len(matrix) == 0:
        return
    expected, zeroed, clipped = _numpy_robust_mean(matrix, weights, 21.0, 1.0)
    out = process.next(state, ak.ClientBatch(matrix, layout), weights)
    rtol = 1e-5 if matrix.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out.result[0], expected, rtol=rtol, atol=1e-6)
    assert out.measurements["zeroed_count"] == zeroed
    assert out.measurements["zeroing"]["clipped_count"] == clipped


def _robust_batch(process, clients=32):
    batch = process.layout.empty_batch(clients)
    rng = np.random.default_rng(0)
    batch.matrix[:] = rng.normal(0, 0.1, batch.matrix.shape)
    batch.matrix[3] *= 1000  # zeroed
    return batch


_LARGE = {"w": ak.TensorSpec((200, 500), np.float32), "b": ak.TensorSpec((500,), np.float32)}


def test_zeroing_clipping_mean_reads_the_matrix_twice(monkeypatch):
    calls = {"stats": 0, "sum_rows": 0}
    stats, rows = kernels.row_stats.row_stats, kernels.weighted_sum.weighted_row_sum
    template = {"w": ak.TensorSpec((50, 20), np.float32), "b": ak.TensorSpec((20,), np.float32)}
    process = ak.robust_aggregator().create(template)
    batch = _robust_batch(process, 12)

    def counting_stats(matrix, *args, **kwargs):
        calls["stats"] += matrix is batch.matrix
        return stats(matrix, *args, **kwargs)

    def counting_sum(matrix, *args, **kwargs):
        # Only reads of the client matrix count (not the weight, count and record sums).
        calls["sum_rows"] += matrix is batch.matrix
        return rows(matrix, *args, **kwargs)

    monkeypatch.setattr(kernels.row_stats, "row_stats", counting_stats)
    monkeypatch.setattr(kernels.weighted_sum, "weighted_row_sum", counting_sum)
    process.next(process.initialize(), batch, np.ones(12))
    assert calls == {"stats": 1, "sum_rows": 1}


def test_zeroing_clipping_mean_never_copies_the_matrix():
    process = ak.robust_aggregator().create(_LARGE)
    batch = _robust_batch(process)
    state, weights = process.initialize(), np.ones(batch.num_clients)
    process.next(state, batch, weights)  # compiles and warms the buffer pool
    out, peak = peak_allocation(lambda: process.next(state, batch, weights))
    assert out.measurements["zeroed_count"] == 1
    # One copy of the matrix would be 12.9 MB; accumulators and the result take about 1.2 MB.
    assert peak < batch.matrix.nbytes / 4, (peak, batch.matrix.nbytes)


def test_the_peak_check_sees_a_copy_of_the_matrix():
    """The instrument of the no-copy tests: a round that copies the matrix exceeds the bound."""
    process = ak.robust_aggregator().create(_LARGE)
    batch = _robust_batch(process)
    state, weights = process.initialize(), np.ones(batch.num_clients)
    process.next(state, batch, weights)

    def copying_round():
        copy = ak.ClientBatch(batch.matrix * np.float32(1.0), batch.layout)
        return process.next(state, copy, weights)

    _, peak = peak_allocation(copying_round)
    assert peak >= batch.matrix.nbytes


# -- the preset ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize(
    ("zeroing", "clipping"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_robust_aggregator_weightedness(weighted, zeroing, clipping):
    factory = ak.robust_aggregator(zeroing=zeroing, clipping=clipping, weighted=weighted)
    assert factory.is_weighted is weighted
    assert factory.create(ak.TensorSpec((3,), np.float32)).is_weighted is weighted


def test_robust_aggregator_state_and_measurements_nest_as_tff():
    process = ak.robust_aggregator().create(ak.TensorSpec((4,), np.float32))
    qe = (10.0, 0.98, math.log(10), ())
    state = process.initialize()
    assert state["zeroing_norm"] == (qe, ())
    assert state["inner_agg"]["clipping_norm"] == ((1.0, 0.8, 0.2, ()), ())
    assert state["inner_agg"]["inner_agg"] == {"value_sum_process": (), "weight_sum_process": ()}
    assert state["zeroed_count_agg"] == () and state["inner_agg"]["clipped_count_agg"] == ()
    values = [np.full(4, 0.1, np.float32), np.full(4, 2.0, np.float32)]
    out = process.next(state, values, [1.0, 1.0])
    assert out.measurements == {
        "zeroing": {
            "clipping": {"mean_value": (), "mean_weight": ()},
            "clipping_norm": 1.0,
            "clipped_count": 1,
        },
        "zeroing_norm": 21.0,  # 2 * 10 + 1 in the first round
        "zeroed_count": 0,
    }
    # After the round each estimate moved by exp(-lr (b - q)) with its own lr and q.
    zeroing_estimate = out.state["zeroing_norm"][0][0]
    assert zeroing_estimate == pytest.approx(10.0 * math.exp(-math.log(10) * (1.0 - 0.98)))
    clip_estimate = out.state["inner_agg"]["clipping_norm"][0][0]
    assert clip_estimate == pytest.approx(1.0 * math.exp(-0.2 * (0.5 - 0.8)))


def test_robust_aggregator_unweighted_measurements():
    process = ak.robust_aggregator(weighted=False).create(F32)
    out = process.next(process.initialize(), [1.0, 2.0])
    assert out.measurements["zeroing"]["clipping"] == {"mean_value": (), "mean_count": ()}


def test_one_broken_client_does_not_wreck_the_round():
    rng = np.random.default_rng(0)
    process = ak.robust_aggregator().create(ak.TensorSpec((100,), np.float32))
    state = process.initialize()
    honest = [rng.normal(0, 0.01, 100).astype(np.float32) for _ in range(9)]
    for attack in (np.full(100, 1e6, np.float32), np.full(100, np.nan, np.float32)):
        out = process.next(state, [*honest, attack], np.ones(10))
        assert np.abs(out.result).max() < 0.1
        assert out.measurements["zeroed_count"] == 1
