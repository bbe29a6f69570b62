"""The weighted-sum kernel against its NumPy twin: same bits, whatever the shapes and blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels.divide_cast import divide_cast_numpy
from aggkit.kernels.weighted_sum import (
    MAX_BLOCK,
    MIN_BLOCK,
    SMALL_COLUMNS,
    block_size,
    small_weighted_row_sum,
    weighted_row_sum,
    weighted_row_sum_numpy,
)
from tests.strategies import client_matrices, coefficients


@given(st.data(), client_matrices(allow_nonfinite=False), st.integers(1, 64))
def test_matches_twin_bit_for_bit(data, matrix, block):
    coef = data.draw(coefficients(matrix.shape[0]))
    start = data.draw(st.floats(-10, 10))
    ours = weighted_row_sum(matrix, coef, np.full(matrix.shape[1], start), block=block)
    twin = weighted_row_sum_numpy(matrix, coef, np.full(matrix.shape[1], start))
    np.testing.assert_array_equal(ours, twin)


@given(client_matrices(allow_nonfinite=True, max_rows=6), st.integers(1, 32))
def test_rows_with_zero_coefficient_are_skipped_even_when_nonfinite(matrix, block):
    finite = np.isfinite(matrix).all(axis=1)
    coef = np.where(finite, 1.5, 0.0)
    ours = weighted_row_sum(matrix, coef, np.zeros(matrix.shape[1]), block=block)
    expected = (1.5 * matrix[finite].astype(np.float64)).sum(axis=0) if finite.any() else 0.0
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-300)


def test_nonfinite_rows_with_nonzero_coefficient_propagate():
    matrix = np.array([[1.0, 2.0], [np.nan, 0.0]], np.float32)
    out = weighted_row_sum(matrix, np.array([1.0, 1.0]), np.zeros(2))
    assert np.isnan(out[0]) and out[1] == 2.0


@given(
    st.integers(0, 7),
    st.integers(0, 50),
    st.sampled_from([np.int32, np.int64, np.int8]),
    st.integers(1, 16),
)
def test_integer_matrices_sum_exactly(rows, cols, dtype, block):
    rng = np.random.default_rng(rows * 100 + cols)
    info = np.iinfo(dtype)
    # Bounded so that up to 7 rows cannot overflow int64 (the kernel does not check overflow).
    bound = min(info.max, np.iinfo(np.int64).max // 8)
    matrix = rng.integers(-bound, bound, size=(rows, cols)).astype(np.int64)
    coef = rng.integers(0, 2, size=rows).astype(np.int64)
    ours = weighted_row_sum(matrix, coef, np.zeros(cols, np.int64), block=block)
    expected = sum(
        (int(c) * matrix[i].astype(object) for i, c in enumerate(coef)),
        start=np.zeros(cols, dtype=object),
    )
    np.testing.assert_array_equal(ours, expected.astype(np.int64))


def test_float32_precision_is_kept_over_many_clients():
    # 10,000 clients of 0.1f: a float32 accumulator drifts by about 1e-3 relative; float64 does not.
    matrix = np.full((10_000, 3), 0.1, np.float32)
    out = weighted_row_sum(matrix, np.ones(10_000), np.zeros(3))
    np.testing.assert_allclose(out, 10_000 * np.float64(np.float32(0.1)), rtol=1e-12)


def test_empty_inputs():
    assert weighted_row_sum(np.zeros((0, 5), np.float32), np.zeros(0), np.zeros(5)).sum() == 0
    assert weighted_row_sum(np.zeros((3, 0), np.float32), np.ones(3), np.zeros(0)).shape == (0,)


def test_block_size_is_long_yet_leaves_every_thread_work():
    assert block_size(431_080, 2) == MAX_BLOCK  # 14 blocks, 7 a thread
    assert block_size(10_000_000, 64) == MAX_BLOCK
    assert block_size(431_080, 16) == 6_736  # four per thread ...
    assert block_size(431_080, 64) == MIN_BLOCK  # ... but never shorter than the minimum
    assert block_size(10, 2) == MIN_BLOCK
    for columns, threads in [(1, 1), (40_000, 3), (10**7, 2), (123_457, 16)]:
        block = block_size(columns, threads)
        assert MIN_BLOCK <= block <= MAX_BLOCK
        blocks = -(-columns // block)
        assert blocks >= 4 * threads or block in (MIN_BLOCK, MAX_BLOCK) or blocks == 1


def test_default_blocks_match_twin_past_the_largest_block():
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((13, 2 * MAX_BLOCK + 77), dtype=np.float32)
    coef = rng.random(13)
    ours = weighted_row_sum(matrix, coef, np.zeros(matrix.shape[1]))
    np.testing.assert_array_equal(ours, weighted_row_sum_numpy(matrix, coef, np.zeros(ours.size)))


@given(st.data(), client_matrices(allow_nonfinite=True, max_rows=6), st.integers(1, 64))
def test_fresh_ignores_the_accumulator_and_finite_reports_it(data, matrix, block):
    coef = data.draw(coefficients(matrix.shape[0]))
    garbage = np.full(matrix.shape[1], np.nan)
    finite = np.zeros(1, dtype=bool)
    ours = weighted_row_sum(matrix, coef, garbage, block=block, fresh=True, finite=finite)
    twin = weighted_row_sum_numpy(matrix, coef, np.zeros(matrix.shape[1]))
    np.testing.assert_array_equal(ours, twin)
    assert finite[0] == bool(np.isfinite(twin).all())
    # Without fresh, the flag reads what the accumulator holds after the sum, start included.
    start = np.zeros(matrix.shape[1])
    if start.size:
        start[-1] = np.inf
    weighted_row_sum(matrix, coef, start, block=block, finite=finite)
    assert finite[0] == bool(np.isfinite(start).all())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, MAX_BLOCK - 1, MAX_BLOCK, 2 * MAX_BLOCK + 76])
def test_finite_flag_finds_one_bad_value_in_any_block(bad, where):
    matrix = np.ones((9, 2 * MAX_BLOCK + 77), np.float32)
    matrix[4, where] = bad
    finite = np.ones(1, dtype=bool)
    acc = weighted_row_sum(matrix, np.ones(9), np.empty(matrix.shape[1]), fresh=True, finite=finite)
    assert not finite[0]
    assert np.isfinite(np.delete(acc, where)).all()
    # A zero coefficient drops the row, and its NaN or Inf with it.
    coef = np.ones(9)
    coef[4] = 0.0
    weighted_row_sum(matrix, coef, acc, fresh=True, finite=finite)
    assert finite[0] and (acc == 8.0).all()


def test_fresh_with_no_active_rows_gives_zeros():
    acc = np.full(5, 7.0)
    finite = np.zeros(1, dtype=bool)
    weighted_row_sum(np.ones((2, 5), np.float32), np.zeros(2), acc, fresh=True, finite=finite)
    assert (acc == 0.0).all() and finite[0]


@given(st.data(), client_matrices(allow_nonfinite=True, max_rows=9), st.booleans())
def test_small_numpy_path_matches_the_kernel_bit_for_bit(data, matrix, fresh):
    matrix = np.ascontiguousarray(matrix[:, :SMALL_COLUMNS])  # kernels take contiguous rows
    coef = data.draw(coefficients(matrix.shape[0]))
    start = data.draw(st.floats(-10, 10))
    ours = small_weighted_row_sum(matrix, coef, np.full(matrix.shape[1], start), fresh=fresh)
    kernel = weighted_row_sum(matrix, coef, np.full(matrix.shape[1], start), fresh=fresh)
    np.testing.assert_array_equal(ours, kernel)


@given(
    st.data(),
    client_matrices(allow_nonfinite=True, max_rows=9),
    st.integers(1, 64),
    st.sampled_from(["float32", "float64", "acc"]),
    st.sampled_from([0.0, 1.0, 3.0, 0.7, 1e-300, 1e300, -2.5]),
)
def test_fused_quotient_matches_divide_cast_bit_for_bit(data, matrix, block, into, denominator):
    coef = data.draw(coefficients(matrix.shape[0]))
    acc = np.full(matrix.shape[1], np.nan)  # fresh: its contents must not matter
    quotient = acc if into == "acc" else np.full(matrix.shape[1], np.nan, into)
    finite = np.zeros(1, dtype=bool)
    with np.errstate(all="ignore"):
        weighted_row_sum(
            matrix,
            coef,
            acc,
            block=block,
            fresh=True,
            finite=finite,
            quotient=quotient,
            denominator=denominator,
        )
        total = weighted_row_sum_numpy(matrix, coef, np.zeros(matrix.shape[1]))
        twin = divide_cast_numpy(total, denominator, np.empty(total.size, quotient.dtype))
    np.testing.assert_array_equal(quotient, twin)
    assert finite[0] == bool(np.isfinite(total).all())  # checked before the division
    if into != "acc":
        np.testing.assert_array_equal(acc, total)


def test_fused_quotient_past_the_largest_block_and_bad_arguments():
    rng = np.random.default_rng(8)
    matrix = rng.standard_normal((11, 2 * MAX_BLOCK + 5), dtype=np.float32)
    coef = rng.random(11)
    quotient = np.empty(matrix.shape[1], np.float32)
    acc = weighted_row_sum(
        matrix, coef, np.empty(quotient.size), fresh=True, quotient=quotient, denominator=coef.sum()
    )
    twin = divide_cast_numpy(acc, coef.sum(), np.empty(quotient.size, np.float32))
    np.testing.assert_array_equal(quotient, twin)
    with pytest.raises(TypeError, match="quotient must be"):
        weighted_row_sum(matrix, coef, acc, quotient=np.empty(3, np.float32))
    with pytest.raises(TypeError, match="quotient must be"):
        weighted_row_sum(matrix, coef, acc, quotient=np.empty(acc.size, np.int32))


def test_small_numpy_path_sums_integers_exactly():
    matrix = np.array([[2**40, 3], [5, -7], [1, 1]], np.int64)
    coef = np.array([3, 0, 2], np.int64)
    acc = np.array([1, 1], np.int64)
    small_weighted_row_sum(matrix, coef, acc)
    np.testing.assert_array_equal(acc, [3 * 2**40 + 3, 12])
