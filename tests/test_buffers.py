"""aggkit._buffers: pooled accumulators are reused only when nobody else holds them."""

from __future__ import annotations

import sys
import types

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


def test_float32_mean_results_reuse_a_free_buffer_and_never_a_held_one():
    """The mean writes a float32 result into a pooled buffer; its tensors are views of it."""
    n = N + 3
    layout = {"w": ak.TensorSpec((n - 3,), np.float32), "b": [ak.TensorSpec((3,), np.float32)]}
    process = ak.mean().create(layout)
    state = process.initialize()
    matrix = np.random.default_rng(1).normal(size=(4, n)).astype(np.float32)
    batch = ak.ClientBatch(matrix, process.layout)
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    expected = (weights @ matrix.astype(np.float64) / weights.sum()).astype(np.float32)

    first = process.next(state, batch, weights).result
    address = first["w"].ctypes.data
    kept = first["w"].copy()
    second = process.next(state, batch, weights).result
    assert not np.shares_memory(first["w"], second["w"])  # ``first`` is held
    np.testing.assert_array_equal(first["w"], kept)
    del first, second
    third = process.next(state, batch, weights).result  # nothing holds the first buffer now
    assert third["w"].ctypes.data == address
    assert third["w"].dtype == np.float32 and third["b"][0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([third["w"], third["b"][0]]), expected)


def test_unflatten_leaves_no_reference_cycle():
    """Results are freed by reference counting alone (a cycle would hold pooled buffers)."""
    import gc
    import sys

    spec = ak.TensorSpec((2,), np.float64)
    layout = ak.Layout({"a": spec, "b": (ak.TensorSpec((1,), np.float64),)})
    vector = np.arange(3.0)
    gc.disable()
    try:
        before = sys.getrefcount(vector)
        result = layout.unflatten(vector, copy=False)
        assert np.shares_memory(result["a"], vector)
        del result
        assert sys.getrefcount(vector) == before
    finally:
        gc.enable()


def test_a_round_of_zero_clients_after_a_full_one_sums_to_zeros():
    """The sum's pooled accumulator comes back with the last round's values in it; a round that
    adds no block must still return zeros (the kernel zeroes blocks only when it runs)."""
    n = _buffers.MIN_POOLED_BYTES // 8 + 100
    process = ak.sum().create(ak.TensorSpec((n,), np.float32))
    full = process.next((), np.full((3, n), 2.5, np.float32)).result
    assert (full == 7.5).all()
    del full  # back to the pool
    empty = process.next((), []).result
    np.testing.assert_array_equal(empty, np.zeros(n, np.float32))


def test_buffers_are_reused_where_reference_counts_are_exact():
    _buffers.clear()
    assert _buffers.refcounts_decide()  # this CPython has a GIL
    a = _buffers.zeros(N)
    address = a.ctypes.data
    del a
    assert _buffers.zeros(N).ctypes.data == address


def _allocates_afresh():
    """Under the simulated interpreter: nothing is pooled, so nothing is handed out twice."""
    _buffers.clear()
    assert not _buffers.refcounts_decide()
    a = _buffers.zeros(N)
    a[:] = 1.0
    view = a[:10]
    del a
    b = _buffers.empty(N)
    b[:] = 2.0
    c = _buffers.zeros(N)
    assert not c.any()
    assert (view == 1.0).all()  # the held view is never overwritten
    assert not _buffers._pool


def test_a_free_threaded_interpreter_allocates_afresh(monkeypatch):
    # A free-threaded CPython may defer reference counts: a held buffer could look free.
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    _allocates_afresh()


def test_another_implementation_allocates_afresh(monkeypatch):
    monkeypatch.setattr(sys, "implementation", types.SimpleNamespace(name="pypy"))
    _allocates_afresh()


def test_a_mean_is_right_without_the_pool(monkeypatch):
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    _buffers.clear()
    n = N + 3
    process = ak.mean().create(ak.TensorSpec((n,), np.float32))
    matrix = np.random.default_rng(2).normal(size=(3, n)).astype(np.float32)
    weights = np.array([1.0, 2.0, 3.0])
    first = process.next(process.initialize(), ak.ClientBatch(matrix, process.layout), weights)
    second = process.next(process.initialize(), ak.ClientBatch(matrix, process.layout), weights)
    assert not np.shares_memory(first.result, second.result)
    expected = (weights @ matrix.astype(np.float64) / weights.sum()).astype(np.float32)
    np.testing.assert_allclose(second.result, expected, rtol=1e-6)
