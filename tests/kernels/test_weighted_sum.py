"""The weighted-sum kernel against its NumPy twin: same bits, whatever the shapes and blocks."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels.weighted_sum import weighted_row_sum, weighted_row_sum_numpy
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
