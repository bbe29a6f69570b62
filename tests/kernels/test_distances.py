"""Pairwise and center distances against their NumPy twins and exact references."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggkit.kernels.distances import (
    center_distances,
    center_distances_numpy,
    center_step,
    center_step_numpy,
    pairwise_sq_distances,
    pairwise_sq_distances_numpy,
)

#: Widths up to two blocks and a bit of :func:`pairwise_sq_distances`'s explicit ``width=256``.
COLUMNS = 256


@st.composite
def matrices(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    k = draw(st.integers(1, 11))
    n = draw(st.integers(0, 2 * COLUMNS + 3))
    elements = st.floats(-1e3, 1e3, width=np.dtype(dtype).itemsize * 8)
    matrix = draw(hnp.arrays(dtype, (k, n), elements=elements))
    coef = draw(hnp.arrays(np.float64, k, elements=st.sampled_from([0.0, 1.0, 0.25, 3.0])))
    return matrix, coef


def _exact_sq(matrix, coef):
    x = np.where(coef[:, None] == 0, 0.0, coef[:, None] * matrix.astype(np.float64))
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2), x


@given(matrices(), st.data())
def test_pairwise_matches_twin_and_differences(case, data):
    matrix, coef = case
    reference = data.draw(st.integers(0, len(matrix) - 1))
    width = data.draw(st.sampled_from([None, 1, 7, COLUMNS]))  # None: one block here
    ours = pairwise_sq_distances(matrix, coef, reference, width=width)
    exact, x = _exact_sq(matrix, coef)
    scale = max(1.0, float((x**2).sum()))
    twin = pairwise_sq_distances_numpy(matrix, coef, reference, width=width)
    np.testing.assert_allclose(ours, twin, atol=1e-12 * scale)
    np.testing.assert_allclose(ours, exact, rtol=1e-9, atol=1e-12 * scale)
    assert (ours >= 0).all() and (np.diag(ours) == 0).all()
    np.testing.assert_array_equal(ours, ours.T)


def test_identical_rows_are_exactly_zero_apart_and_a_large_common_part_cancels():
    rng = np.random.default_rng(0)
    common = rng.standard_normal(10_000).astype(np.float32) * np.float32(1e4)
    matrix = common + rng.standard_normal((6, 10_000)).astype(np.float32) * np.float32(1e-2)
    matrix[4] = matrix[1]
    ours = pairwise_sq_distances(matrix, np.ones(6))
    assert ours[1, 4] == 0.0
    exact, _ = _exact_sq(matrix, np.ones(6))
    np.testing.assert_allclose(ours, exact, rtol=1e-6)


def test_one_huge_row_leaves_the_others_distances_intact():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((6, 3_000)).astype(np.float32)
    matrix[0] = np.finfo(np.float32).max
    ours = pairwise_sq_distances(matrix, np.ones(6), reference=3)
    exact, _ = _exact_sq(matrix, np.ones(6))
    np.testing.assert_allclose(ours[1:, 1:], exact[1:, 1:], rtol=1e-9)
    assert (ours[0, 1:] > 1e70).all()


def test_rows_with_zero_coefficient_are_not_read():
    matrix = np.ones((3, 700), np.float32)
    matrix[1, 5] = np.nan
    d = pairwise_sq_distances(matrix, np.array([1.0, 0.0, 1.0]))
    assert np.isfinite(d).all() and np.isclose(d[0, 1], 700.0, rtol=1e-12)
    c = center_distances(matrix, np.array([1.0, 0.0, 1.0]), np.zeros(700))
    np.testing.assert_allclose(c, [np.sqrt(700), 0.0, np.sqrt(700)])
    matrix[1, 5] = np.inf
    assert not np.isfinite(pairwise_sq_distances(matrix, np.ones(3))).all()


@given(matrices(), st.data())
def test_center_distances_match_twin(case, data):
    matrix, coef = case
    center = data.draw(hnp.arrays(np.float64, matrix.shape[1], elements=st.floats(-1e3, 1e3)))
    ours = center_distances(matrix, coef, center)
    np.testing.assert_allclose(ours, center_distances_numpy(matrix, coef, center), rtol=1e-12)


@given(matrices(), st.data())
def test_center_step_matches_twin(case, data):
    # The fused step: the new center has the twin's bits (a row-order weighted sum, then
    # keep * center + S / denominator, no reassociation); the distances to it match the twin's
    # up to the order of each sum, for any block width (blocks cut the distances' sums only).
    matrix, coef = case
    k, n = matrix.shape
    row_coef = data.draw(hnp.arrays(np.float64, k, elements=st.sampled_from([0.0, 0.5, 1.0, 7.0])))
    denominator = data.draw(st.sampled_from([1.0, 3.0, 0.1]))
    keep = data.draw(st.sampled_from([0.0, 0.25, 1.0]))
    center_dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    center = data.draw(hnp.arrays(center_dtype, n, elements=st.floats(-1e3, 1e3, width=32)))
    distances = data.draw(st.booleans())
    width = data.draw(st.sampled_from([None, 1, 5, 256]))
    out_dtype = np.float64 if distances else data.draw(st.sampled_from([np.float32, np.float64]))
    ours_out, twin_out = np.empty(n, out_dtype), np.empty(n, out_dtype)
    kwargs = {"keep": keep, "center": center, "distances": distances}
    ours = center_step(matrix, coef, row_coef, denominator, ours_out, width=width, **kwargs)
    twin = center_step_numpy(matrix, coef, row_coef, denominator, twin_out, **kwargs)
    np.testing.assert_array_equal(ours_out, twin_out)
    if distances:
        np.testing.assert_allclose(ours, twin, rtol=1e-12)
        np.testing.assert_allclose(ours, center_distances(matrix, coef, ours_out), rtol=1e-12)
    else:
        np.testing.assert_array_equal(ours, [0.0])


def test_center_step_reads_neither_zero_rows_nor_the_old_center_and_flags_nonfinite():
    matrix = np.ones((3, 700), np.float32)
    matrix[1, 5] = np.nan  # row 1 has coefficient 0 and row weight 0: never read
    coef, row_coef = np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 3.0])
    out = np.full(700, np.nan)  # keep == 0: the old center (here out itself) is not read
    d = center_step(matrix, coef, row_coef, 4.0, out)
    np.testing.assert_array_equal(out, np.ones(700))
    np.testing.assert_allclose(d, [0.0, np.sqrt(700), 0.0], atol=1e-12)
    flag = center_step(matrix, np.ones(3), np.ones(3), 3.0, np.empty(700), distances=False)
    assert np.isnan(flag[0])  # the NaN row is summed: the center is not finite
    d = center_step(matrix, np.ones(3), np.ones(3), 3.0, np.empty(700))
    assert np.isnan(d).all()
