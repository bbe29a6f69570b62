"""hadamard: TFF's rotation_test.py cases (rotation around an inner factory), inversion,
composition."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pytest

import aggkit as ak
from aggkit import kernels
from aggkit.compression import quantized_sum
from aggkit.hadamard import HadamardFactory, HadamardProcess, hadamard
from aggkit.process import AggregationProcess, Factory, Round
from aggkit.sum import SumRound
from aggkit.testing import SumPlusOneFactory

F32 = np.float32


@dataclass(frozen=True)
class _SpyFactory(Factory):
    """A sum that records every block of rows it receives (as float64 copies with coefficients)."""

    log: list

    is_weighted = False

    def __hash__(self) -> int:
        return id(self)

    def _create(self, layout):
        return _SpyProcess(layout, self.log)


class _SpyProcess(AggregationProcess):
    def __init__(self, layout, log):
        super().__init__(layout)
        self.log = log

    def initialize(self):
        return ()

    def begin_round(self, state):
        return _SpyRound(self.layout, self.log)


class _SpyRound(Round):
    def __init__(self, layout, log):
        self.sum = SumRound(layout)
        self.log = log

    def add(self, block, weights):
        self.log.append((block.matrix.astype(np.float64), block.coef.copy(), block.layout))
        self.sum.add(block, None)

    def finish(self):
        return self.sum.finish()


# -- construction -------------------------------------------------------------------------------


def test_argument_checks():
    with pytest.raises(ValueError, match="num_repeats"):
        hadamard(ak.sum(), num_repeats=0)
    with pytest.raises(TypeError, match="num_repeats"):
        hadamard(ak.sum(), num_repeats=1.5)
    with pytest.raises(TypeError, match="unweighted"):
        hadamard(ak.mean())
    with pytest.raises(TypeError, match="factory"):
        hadamard(lambda: None)
    with pytest.raises(ValueError, match="seed"):
        hadamard(ak.sum(), seed=-3)


def test_mixed_integer_and_float_structures_are_rejected():
    factory = hadamard(ak.sum())
    with pytest.raises(TypeError, match="all-floating or all-integer"):
        factory.create([ak.TensorSpec((3,), np.int32), ak.TensorSpec((3,), F32)])


def test_type_properties_state_and_measurements_pass_through():
    factory = hadamard(SumPlusOneFactory(), num_repeats=2, seed=0)
    assert factory == HadamardFactory(SumPlusOneFactory(), 2, 0) and not factory.is_weighted
    assert hadamard().inner == ak.sum()
    template = {"a": ak.TensorSpec((5,), F32), "b": ak.TensorSpec((2, 3), F32)}
    process = factory.create(template)
    assert isinstance(process, HadamardProcess) and not process.is_weighted
    assert [s.shape for s in process.padded_layout.specs] == [(8,), (8,)]
    assert all(s.dtype == F32 for s in process.padded_layout.specs)
    inner_state, seed = process.initialize()
    assert inner_state == 0 and seed.dtype == np.uint64 and seed[1] == 0
    state = process.initialize()
    for round_index in range(1, 3):
        out = process.next(state, [{"a": np.ones(5, F32), "b": np.ones((2, 3), F32)}])
        assert out.measurements == {"hd": 42}
        assert out.state[0] == round_index  # the inner counter
        assert out.state[1][1] == 2 * 2 * round_index  # num_repeats * num_tensors per round
        state = out.state


def test_the_inverse_rotation_of_the_inner_plus_one():
    """SumPlusOne adds 1 to each rotated coordinate; un-rotating the ones vector gives
    sqrt(d) * sign at coordinate 0 and zeros elsewhere (H 1 = d e0), so only coordinate 0 moves."""
    process = hadamard(SumPlusOneFactory(), seed=5).create(ak.TensorSpec((6,), np.float64))
    value = np.arange(6, dtype=np.float64)
    out = process.next(process.initialize(), [value, value])
    np.testing.assert_allclose(out.result[1:], 2 * value[1:], atol=1e-12)
    assert abs(out.result[0] - 2 * value[0]) == pytest.approx(np.sqrt(8))


# -- rotation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 5, 8, 1000, 1025, 40_000])
@pytest.mark.parametrize("num_repeats", [1, 3])
def test_rotation_keeps_norms_and_the_sum_inverts(size, num_repeats):
    log = []
    process = hadamard(_SpyFactory(log), num_repeats, seed=size).create(ak.TensorSpec((size,), F32))
    values = np.random.default_rng(size).standard_normal((4, size)).astype(F32)
    out = process.next(process.initialize(), list(values))
    (rotated, _, layout) = log[0]
    padded = 1 << (size - 1).bit_length()
    assert rotated.shape == (4, padded) and layout.specs[0].shape == (padded,)
    np.testing.assert_allclose(
        np.linalg.norm(rotated, axis=1), np.linalg.norm(values, axis=1), rtol=1e-5
    )
    assert not np.allclose(rotated[:, :size], values)  # it did rotate
    scale = np.abs(values).sum(axis=0).max()
    np.testing.assert_allclose(out.result, values.sum(axis=0), rtol=0, atol=1e-5 * scale)


def test_float64_values_stay_float64_and_invert_tightly():
    process = hadamard(ak.sum(), num_repeats=2, seed=1).create(ak.TensorSpec((3, 7), np.float64))
    assert process.padded_layout.specs[0].dtype == np.float64
    values = np.random.default_rng(2).standard_normal((5, 3, 7))
    out = process.next(process.initialize(), list(values))
    np.testing.assert_allclose(out.result, values.sum(axis=0), rtol=0, atol=1e-12)


def test_size_one_and_empty_tensors_are_unchanged():
    log = []
    template = [ak.TensorSpec((), F32), ak.TensorSpec((1,), F32), ak.TensorSpec((0,), F32)]
    process = hadamard(_SpyFactory(log), seed=0).create(template)
    out = process.next(process.initialize(), [[F32(2.5), np.array([-1.5], F32), np.zeros(0, F32)]])
    np.testing.assert_array_equal(log[0][0], [[2.5, -1.5]])  # passed through, not signed
    assert out.result[0] == 2.5 and out.result[1].tolist() == [-1.5] and out.result[2].size == 0


def test_integer_values_round_back():
    process = hadamard(ak.sum(), seed=3).create(ak.TensorSpec((11,), np.int32))
    values = np.random.default_rng(0).integers(-1000, 1000, (3, 11)).astype(np.int32)
    out = process.next(process.initialize(), list(values))
    assert out.result.dtype == np.int32
    np.testing.assert_array_equal(out.result, values.sum(axis=0))


def test_one_rotation_per_round_shared_by_all_clients_and_fresh_each_round():
    log = []
    process = hadamard(_SpyFactory(log), seed=9).create(ak.TensorSpec((16,), F32))
    value = np.random.default_rng(0).standard_normal(16).astype(F32)
    state = process.initialize()
    out = process.next(state, [value, value])
    np.testing.assert_array_equal(log[0][0][0], log[0][0][1])  # same client, same rotation
    process.next(state, [value])
    np.testing.assert_array_equal(log[1][0][0], log[0][0][0])  # same state, same rotation
    process.next(out.state, [value])
    assert not np.allclose(log[2][0][0], log[0][0][0])  # next round, new signs


def test_coefficients_are_carried_to_the_inner_process():
    log = []
    process = ak.mean(hadamard(_SpyFactory(log), seed=4)).create(ak.TensorSpec((10,), F32))
    values = np.random.default_rng(1).standard_normal((3, 10)).astype(F32)
    weights = np.array([1.0, 0.0, 3.0])
    out = process.next(process.initialize(), list(values), weights)
    np.testing.assert_array_equal(log[0][1], weights)
    assert not log[0][0][1].any()  # a zero-weight row is not rotated
    expected = weights @ values.astype(np.float64) / weights.sum()
    np.testing.assert_allclose(out.result, expected, atol=1e-5)


def test_zero_weight_rows_with_nan_are_ignored():
    process = ak.mean(hadamard(ak.sum(), seed=4)).create(ak.TensorSpec((10,), F32))
    bad = np.full(10, np.nan, F32)
    out = process.next(process.initialize(), [np.ones(10, F32), bad], [2.0, 0.0])
    np.testing.assert_allclose(out.result, 1.0, atol=1e-6)
    with pytest.raises(ak.InvalidUpdateError, match="client 1"):
        process.next(process.initialize(), [np.ones(10, F32), bad], [2.0, 1.0])


# -- with quantization --------------------------------------------------------------------------


def test_rotation_reduces_the_quantization_error_of_spiky_updates():
    """A few large entries stretch a client's [min, max] and coarsen every other coordinate's
    step; after a rotation the range shrinks to about norm * sqrt(2 log d / d)."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((8, 30_000)) * 0.01).astype(F32)
    values[:, :5] = 10.0
    template = ak.TensorSpec((30_000,), F32)
    truth = values.astype(np.float64).mean(axis=0)
    errors = {}
    for name, factory in {
        "plain": ak.unweighted_mean(quantized_sum(bits=4, seed=1)),
        "rotated": ak.unweighted_mean(hadamard(quantized_sum(bits=4, seed=1), seed=2)),
    }.items():
        process = factory.create(template)
        out = process.next(process.initialize(), list(values))
        errors[name] = np.sqrt(np.mean((out.result - truth) ** 2))
        measured = out.measurements["mean_value"]
        if name == "rotated":
            measured = measured["hd"]
        assert measured["bytes_per_client"] < 0.2 * 30_000 * 4
    assert errors["rotated"] < errors["plain"] / 5


def test_weighted_mean_of_rotated_quantized_values_is_close():
    process = ak.mean(hadamard(quantized_sum(seed=1), seed=2)).create(ak.TensorSpec((50_000,), F32))
    values = np.random.default_rng(3).standard_normal((6, 50_000)).astype(F32)
    weights = np.arange(1.0, 7.0)
    out = process.next(process.initialize(), list(values), weights)
    expected = weights @ values.astype(np.float64) / weights.sum()
    assert np.sqrt(np.mean((out.result - expected) ** 2)) < 0.02


@pytest.mark.parametrize(
    "inner",
    [ak.sum(), quantized_sum(bits=4, threshold=0, seed=1), ak.secure_sum(8.0, -8.0)],
    ids=["sum", "quantized_sum", "secure_sum"],
)
def test_rows_rotated_a_few_at_a_time_give_the_bits_of_one_block(monkeypatch, inner):
    # Rounds hand the inner round ROTATED_BYTES of rotated rows at a time; sums add each column
    # in row order and random streams follow the client index, so the bits must not change.
    template = [ak.TensorSpec((3000,), F32), ak.TensorSpec((7, 5), F32)]
    values = np.random.default_rng(4).standard_normal((10, 3035)).astype(F32)
    weights = np.arange(1.0, 11.0)

    def run():
        process = ak.mean(hadamard(inner, seed=2)).create(template)
        return process.next(process.initialize(), ak.ClientBatch(values, process.layout), weights)

    whole = run()
    calls = []
    rotate_rows = kernels.hadamard.rotate_rows
    monkeypatch.setattr(
        kernels.hadamard,
        "rotate_rows",
        lambda m, *args: calls.append(len(m)) or rotate_rows(m, *args),
    )
    monkeypatch.setattr(sys.modules["aggkit.hadamard"], "ROTATED_BYTES", 3 * (4096 + 64) * 4)
    chunked = run()
    assert calls == [4, 4, 2]  # 3 rows fit, rounded up to an even count
    for ours, theirs in zip(chunked.result, whole.result, strict=True):
        np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert repr(chunked.measurements) == repr(whole.measurements)
