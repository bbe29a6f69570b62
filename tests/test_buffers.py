"""aggkit._buffers: pooled accumulators are reused only when nobody else holds them."""

from __future__ import annotations

import numpy as np

import aggkit as ak
from aggkit import _buffers

N = _buffers.MIN_POOLED_BYTES // 8 + 1


def test_a_released_buffer_comes_back_zeroed():
    _buffers.clear()
    a = _buffers.zeros(N)
    a[:] = 7.0
    address = a.ctypes.data
    del a
    b = _buffers.zeros(N)
    assert b.ctypes.data == address  # reused: no fresh pages to fault in
    assert not b.any()


def test_a_held_buffer_or_view_is_never_handed_out_again():
    _buffers.clear()
    a = _buffers.zeros(N)
    view = a[10:20]
    del a
    b = _buffers.zeros(N)
    assert not np.shares_memory(b, view)
    b[:] = 1.0
    assert not view.any()


def test_small_and_integer_buffers():
    assert _buffers.zeros(10).dtype == np.float64
    c = _buffers.zeros(N, np.int64)
    assert c.dtype == np.int64 and c.shape == (N,) and not c.any()


def test_results_of_consecutive_rounds_stay_independent():
    """A round's result must survive the next round, although their accumulators are pooled."""
    n = N + 5
    process = ak.mean().create(ak.TensorSpec((n,), np.float64))
    state = process.initialize()
    rng = np.random.default_rng(0)
    first_values = [rng.normal(size=n) for _ in range(3)]
    first = process.next(state, first_values, [1.0, 1.0, 1.0]).result
    kept = first.copy()
    second = process.next(state, [rng.normal(size=n) for _ in range(3)], [1, 2, 3]).result
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)
    np.testing.assert_allclose(first, np.mean(first_values, axis=0), rtol=1e-12)
