"""The statistics kernel against its NumPy twin (norms within float rounding, bit-exact extrema)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels.row_stats import row_stats, row_stats_numpy
from tests.strategies import client_matrices, offsets


def _rtol(dtype) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


@given(st.data(), client_matrices(), st.integers(1, 40), st.booleans(), st.booleans())
def test_matches_twin(data, matrix, chunk, with_l1, with_minmax):
    bounds = data.draw(offsets(matrix.shape[1]))
    ours = row_stats(matrix, bounds, with_l1=with_l1, with_minmax=with_minmax, chunk=chunk)
    twin = row_stats_numpy(matrix, bounds, with_l1=with_l1, with_minmax=with_minmax)
    np.testing.assert_array_equal(ours.finite, twin.finite)
    # Norms are sums in float64 (reassociated), so equal to the twin within rounding.
    np.testing.assert_allclose(ours.l2, twin.l2, rtol=1e-12)
    # max |x| and the per-tensor extrema are exact.
    np.testing.assert_array_equal(ours.linf, twin.linf)
    if with_l1:
        np.testing.assert_allclose(ours.l1, twin.l1, rtol=1e-12)
    else:
        assert ours.l1 is None
    if with_minmax:
        np.testing.assert_array_equal(ours.tensor_min, twin.tensor_min)
        np.testing.assert_array_equal(ours.tensor_max, twin.tensor_max)
        assert ours.tensor_min.shape == (matrix.shape[0], len(bounds) - 1)
    else:
        assert ours.tensor_min is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_nonfinite_rows_are_flagged_with_infinite_norms(dtype, special):
    matrix = np.ones((5, 70), dtype)
    matrix[3, 41] = special
    stats = row_stats(matrix, np.array([0, 40, 70]), with_l1=True, with_minmax=True, chunk=16)
    assert stats.finite.tolist() == [True, True, True, False, True]
    assert np.isinf(stats.l2[3]) and np.isinf(stats.linf[3]) and np.isinf(stats.l1[3])
    assert np.isnan(stats.tensor_min[3]).all() and np.isnan(stats.tensor_max[3]).all()
    np.testing.assert_allclose(stats.l2[[0, 1, 2, 4]], np.sqrt(70))


def test_huge_float64_rows_that_overflow_the_sums_are_still_finite():
    matrix = np.full((2, 4), 1e300)
    matrix[1] = 1.0
    stats = row_stats(matrix, np.array([0, 4]), with_l1=True)
    assert stats.finite.all()
    np.testing.assert_allclose(stats.l2, [2e300, 2.0])
    np.testing.assert_allclose(stats.l1, [4e300, 4.0])


def test_signed_zero_and_subnormal_extrema():
    matrix = np.array([[-0.0, 1e-45, -1e-45, 0.0]], np.float32)
    stats = row_stats(matrix, np.array([0, 1, 4]), with_minmax=True)
    assert stats.tensor_min[0, 0] == 0.0 and stats.tensor_max[0, 0] == 0.0
    assert stats.tensor_min[0, 1] == np.float32(-1e-45)
    assert stats.tensor_max[0, 1] == np.float32(1e-45)


def test_integer_matrix_is_rejected():
    with pytest.raises(TypeError, match="float32 or float64"):
        row_stats(np.zeros((2, 2), np.int64), np.array([0, 2]))


def test_empty_and_one_element():
    empty = row_stats(np.zeros((0, 3), np.float32), np.array([0, 3]), with_minmax=True)
    assert empty.l2.shape == (0,) and empty.tensor_min.shape == (0, 1)
    single = row_stats(np.array([[-2.5]], np.float32), np.array([0, 1]), with_minmax=True)
    assert single.l2[0] == 2.5 and single.linf[0] == 2.5 and single.tensor_min[0, 0] == -2.5
    no_tensors = row_stats(np.zeros((2, 0), np.float64), np.array([0]), with_minmax=True)
    assert no_tensors.l2.tolist() == [0.0, 0.0] and no_tensors.tensor_min.shape == (2, 0)
