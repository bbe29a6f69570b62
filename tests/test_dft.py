"""ak.dft (and ak.hadamard beside it): unitary, invertible, seeded like hadamard."""

from __future__ import annotations

import numpy as np
import pytest

import aggkit as ak
from aggkit.dft import DftProcess
from aggkit.testing import SumPlusOneFactory
from tests.test_hadamard import _SpyFactory

TEMPLATE = {"a": ak.TensorSpec((7,), np.float64), "b": ak.TensorSpec((2, 3), np.float64)}


def _clients(rng, count):
    return [{"a": rng.normal(size=7), "b": rng.normal(size=(2, 3))} for _ in range(count)]


@pytest.mark.parametrize("rotation", [ak.dft, ak.hadamard])
@pytest.mark.parametrize("repeats", [1, 3])
def test_rotations_keep_norms_and_invert_exactly(rotation, repeats):
    rng = np.random.default_rng(0)
    log: list = []
    process = rotation(_SpyFactory(log), num_repeats=repeats, seed=4).create(TEMPLATE)
    clients = _clients(rng, 5)
    out = process.next(process.initialize(), clients)
    ((rotated, coef, _),) = log
    flat = np.array([np.concatenate([c["a"], c["b"].ravel()]) for c in clients])
    # Norm-preserving per tensor (so globally), on every client.
    for name, cut in (("a", slice(0, 7)), ("b", slice(7, 13))):
        padded = process.padded_layout.offsets
        t = 0 if name == "a" else 1
        np.testing.assert_allclose(
            np.linalg.norm(rotated[:, padded[t] : padded[t + 1]], axis=1),
            np.linalg.norm(flat[:, cut], axis=1),
            rtol=1e-13,
        )
    np.testing.assert_array_equal(coef, np.ones(5))
    expected = flat.sum(axis=0)
    np.testing.assert_allclose(out.result["a"], expected[:7], atol=1e-12)
    np.testing.assert_allclose(out.result["b"].ravel(), expected[7:], atol=1e-12)


def test_dft_pads_at_most_one_value():
    f64 = np.float64
    process = ak.dft(seed=0).create({"a": ak.TensorSpec((7,), f64), "b": ak.TensorSpec((8,), f64)})
    assert np.diff(process.padded_layout.offsets).tolist() == [8, 8]
    big = ak.dft(seed=0).create(ak.TensorSpec((1000,), np.float32))
    hd = ak.hadamard(seed=0).create(ak.TensorSpec((1000,), np.float32))
    assert big.padded_layout.size == 1000 and hd.padded_layout.size == 1024


def test_dft_spreads_a_spike_evenly():
    log: list = []
    process = ak.dft(_SpyFactory(log), seed=2).create(ak.TensorSpec((1024,), np.float64))
    spike = np.zeros(1024)
    spike[17] = 1.0
    process.next(process.initialize(), [spike])
    rotated = log[0][0][0]
    # One complex coordinate of modulus 1 becomes 512 of modulus 1/sqrt(512).
    modulus = np.hypot(rotated[:512], rotated[512:])
    np.testing.assert_allclose(modulus, 1 / np.sqrt(512), rtol=1e-12)


def test_dft_seeding_follows_hadamard():
    template = ak.TensorSpec((10,), np.float64)
    rows = []
    for seed in (5, 5, 6, None):
        log: list = []
        process = ak.dft(_SpyFactory(log), seed=seed).create(template)
        state = process.initialize()
        for _ in range(2):
            state = process.next(state, [np.arange(10.0)]).state
        rows.append([entry[0][0] for entry in log])
        assert state[1][1] == 2  # one tensor, one repeat per round
    np.testing.assert_array_equal(rows[0][0], rows[1][0])
    assert not np.allclose(rows[0][0], rows[0][1])  # a new rotation each round
    assert not np.allclose(rows[0][0], rows[2][0])
    assert not np.allclose(rows[0][0], rows[3][0])


def test_dft_ignores_coefficient_zero_rows_and_carries_coefficients():
    log: list = []
    factory = ak.clipping(1.0, ak.dft(_SpyFactory(log), seed=0))
    process = factory.create(ak.TensorSpec((4,), np.float64))
    out = process.next(process.initialize(), [np.full(4, 2.0), np.array([0.5, 0, 0, 0])])
    np.testing.assert_allclose(out.result, [1.0, 0.5, 0.5, 0.5], atol=1e-12)
    assert log[0][1].tolist() == [0.25, 1.0]  # the clipping factors reach the inner sum


def test_dft_integer_structures_round_back_and_mixes_are_refused():
    process = ak.dft(seed=0).create(ak.TensorSpec((5,), np.int32))
    out = process.next(process.initialize(), [np.arange(5, dtype=np.int32)] * 3)
    assert out.result.dtype == np.int32
    np.testing.assert_array_equal(out.result, 3 * np.arange(5))
    with pytest.raises(TypeError, match="mix"):
        ak.dft().create({"a": ak.TensorSpec((2,), np.int32), "b": ak.TensorSpec((2,), np.float32)})


def test_dft_state_and_measurements_and_inner():
    process = ak.dft(SumPlusOneFactory(), seed=0).create(ak.TensorSpec((4,), np.float32))
    assert isinstance(process, DftProcess)
    out = process.next(process.initialize(), [np.ones(4, np.float32)])
    assert out.measurements == {"dft": 42}
    with pytest.raises(ValueError, match="num_repeats"):
        ak.dft(num_repeats=0)
    with pytest.raises(TypeError, match="inner"):
        ak.dft(ak.mean())
