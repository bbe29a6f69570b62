"""The order-statistics kernel against its NumPy twin (same bits) and the sorting networks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggkit.kernels.order_stats import (
    CLOSEST,
    MEDIAN,
    TRIMMED,
    order_statistic,
    order_statistic_numpy,
    sorting_network,
)


@pytest.mark.parametrize("k", range(1, 11))
def test_networks_sort_every_zero_one_input(k):
    # The 0-1 principle: a comparator network sorts every input iff it sorts every 0-1 input.
    comps = sorting_network(k)
    for bits in itertools.product((0, 1), repeat=k):
        wires = list(bits)
        for a, b in comps:
            if wires[a] > wires[b]:
                wires[a], wires[b] = wires[b], wires[a]
        assert wires == sorted(bits)


@given(st.integers(1, 130), st.data())
def test_pruned_networks_place_their_wires(k, data):
    first = data.draw(st.integers(0, k - 1))
    stop = data.draw(st.integers(first + 1, k))
    values = np.random.default_rng(k).permutation(k).astype(float)
    wires = values.copy()
    for a, b in sorting_network(k, first, stop):
        lo, hi = min(wires[a], wires[b]), max(wires[a], wires[b])
        wires[a], wires[b] = lo, hi
    np.testing.assert_array_equal(wires[first:stop], np.sort(values)[first:stop])


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    k = draw(st.integers(1, 12))
    n = draw(st.integers(0, 150))
    ties = draw(st.booleans())
    if ties:  # few distinct values, signed zeros included
        elements = st.sampled_from([-2.0, -0.0, 0.0, 1.0, 3.0])
    else:
        elements = st.floats(-1e6, 1e6, width=np.dtype(dtype).itemsize * 8)
    matrix = draw(hnp.arrays(dtype, (k, n), elements=elements))
    coef = draw(hnp.arrays(np.float64, k, elements=st.sampled_from([0.0, 1.0, 0.5, 0.3, 2.0])))
    subset = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    rows = np.asarray(subset, dtype=np.int64)
    mode = draw(st.sampled_from([MEDIAN, TRIMMED, CLOSEST]))
    size = len(rows)
    start = draw(st.integers(0, (size - 1) // 2))
    count = size - 2 * start if mode == TRIMMED else draw(st.integers(1, size))
    return matrix, rows, coef, mode, start, count


@given(cases())
def test_matches_twin_bit_for_bit(case):
    matrix, rows, coef, mode, start, count = case
    ours = np.full(matrix.shape[1], np.nan, matrix.dtype)
    twin = np.full(matrix.shape[1], np.nan, matrix.dtype)
    args = {"mode": mode, "start": start, "count": count}
    assert order_statistic(matrix, rows, coef, ours, **args)
    assert order_statistic_numpy(matrix, rows, coef, twin, **args)
    np.testing.assert_array_equal(ours.view(np.uint8), twin.view(np.uint8))


def test_median_is_numpys_and_long_rows_cross_blocks():
    rng = np.random.default_rng(3)
    for k in (1, 2, 7, 64, 100):
        matrix = rng.standard_normal((k, 5_000)).astype(np.float32)
        out = np.empty(5_000, np.float32)
        order_statistic(matrix, np.arange(k), np.ones(k), out, mode=MEDIAN)
        np.testing.assert_array_equal(out, np.median(matrix, axis=0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_are_reported_unless_their_row_is_skipped(bad):
    matrix = np.ones((5, 300), np.float32)
    matrix[2, 257] = bad
    out = np.empty(300, np.float32)
    coef = np.ones(5)
    assert not order_statistic(matrix, np.arange(5), coef, out, mode=MEDIAN)
    assert not order_statistic_numpy(matrix, np.arange(5), coef, out, mode=MEDIAN)
    coef[2] = 0.0
    assert order_statistic(matrix, np.arange(5), coef, out, mode=TRIMMED, start=2, count=3)
    assert order_statistic(matrix, np.array([0, 1, 3]), np.ones(5), out, mode=MEDIAN)


def test_invalid_arguments():
    out = np.empty(3)
    m = np.ones((4, 3))
    with pytest.raises(ValueError, match="at least one row"):
        order_statistic(m, np.zeros(0, np.int64), np.ones(4), out, mode=MEDIAN)
    with pytest.raises(ValueError, match="not within"):
        order_statistic(m, np.arange(4), np.ones(4), out, mode=TRIMMED, start=2, count=3)
    with pytest.raises(ValueError, match="mode"):
        order_statistic(m, np.arange(4), np.ones(4), out, mode=7)
