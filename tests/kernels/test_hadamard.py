"""The Walsh-Hadamard kernels against their NumPy twins; orthonormality and inversion."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels.hadamard import (
    BLOCK,
    fill_signs,
    fill_signs_numpy,
    fwht,
    fwht_numpy,
    padded_size,
    rotate_rows,
    rotate_rows_numpy,
    unrotate,
    unrotate_numpy,
)
from tests.strategies import FLOAT_DTYPES


def _sylvester(d: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


def assert_same_bits(ours: np.ndarray, twin: np.ndarray) -> None:
    """Equal bit for bit (``assert_array_equal`` takes -0.0 for 0.0)."""
    assert ours.dtype == twin.dtype and ours.shape == twin.shape
    unsigned = np.dtype(f"u{ours.dtype.itemsize}")
    np.testing.assert_array_equal(ours.view(unsigned), twin.view(unsigned))


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """Run the test at one and at two numba threads (the bits must not change)."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield request.param
    numba.set_num_threads(before)


# Up to 2**18: past one L2 segment (2**16 float32 values) for both dtypes, so the in-register
# tiles, the in-block, in-segment and whole-vector passes and every radix of each all run.
@given(st.integers(0, 18), FLOAT_DTYPES, st.integers(0, 2**32 - 1), st.sampled_from([1, 2]))
def test_fwht_matches_twin_bit_for_bit(log_size, dtype, seed, threads):
    x = np.random.default_rng(seed).standard_normal(2**log_size).astype(dtype)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        assert_same_bits(fwht(x.copy()), fwht_numpy(x))
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("d", [1, 2, 4, 8, 32, 128])
def test_fwht_is_multiplication_by_the_hadamard_matrix(d):
    x = np.random.default_rng(d).standard_normal(d)
    np.testing.assert_allclose(fwht(x.copy()), _sylvester(d) @ x, rtol=1e-12, atol=1e-12)


def test_fwht_applied_twice_scales_by_the_size():
    d = 4 * BLOCK * 4  # exercises the in-block, radix-4 and radix-2 stages
    x = np.random.default_rng(0).standard_normal(d)
    np.testing.assert_allclose(fwht(fwht(x.copy())), d * x, rtol=1e-9, atol=1e-9)


def test_fwht_rejects_other_lengths():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(np.zeros(3))


@given(st.integers(0, 70_000), st.integers(0, 2**64 - 1))
def test_signs_match_twin(size, key):
    out = np.empty(size, np.int8)
    np.testing.assert_array_equal(fill_signs(out, key), fill_signs_numpy(size, key))
    assert set(np.unique(out)) <= {-1, 1}


def test_signs_are_balanced():
    signs = fill_signs(np.empty(100_000, np.int8), 9)
    assert abs(signs.astype(np.int64).sum()) < 4 * np.sqrt(100_000)


@st.composite
def rotations(draw):
    sizes = draw(
        st.lists(st.sampled_from([0, 1, 2, 3, 5, 8, 100, 1000, 2049, 5000]), min_size=1, max_size=4)
    )
    repeats = draw(st.integers(1, 3))
    rows = draw(st.integers(0, 5))
    # The (client matrix, rotated matrix) dtypes a process can meet.
    in_dtype, out_dtype = draw(
        st.sampled_from(
            [(np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float32)]
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    padded = np.concatenate([[0], np.cumsum([padded_size(s) for s in sizes])]).astype(np.int64)
    starts = np.zeros((len(sizes), repeats), np.int64)
    signs = []
    position = 0
    for t, s in enumerate(sizes):
        for r in range(repeats):
            starts[t, r] = position
            d = padded_size(s)
            signs.append(fill_signs_numpy(d, seed + 7 * t + r))
            position += d
    signs = np.concatenate(signs).astype(np.int8) if signs else np.zeros(0, np.int8)
    if in_dtype == np.int64:
        matrix = rng.integers(-1000, 1000, (rows, offs[-1]))
    else:
        matrix = rng.standard_normal((rows, offs[-1])).astype(in_dtype)
    coef = rng.choice([0.0, 1.0, 2.5], rows)
    return matrix, coef, offs, padded, signs, starts, out_dtype


@given(rotations())
def test_rotation_matches_twin_bit_for_bit(case):
    matrix, coef, offs, padded, signs, starts, dtype = case
    shape = (matrix.shape[0], padded[-1])
    ours = rotate_rows(matrix, coef, offs, padded, signs, starts, np.full(shape, 5, dtype))
    twin = rotate_rows_numpy(matrix, coef, offs, padded, signs, starts, np.empty(shape, dtype))
    assert_same_bits(ours, twin)
    assert not ours[coef == 0].any()


@given(rotations())
def test_rotation_keeps_norms_and_unrotation_inverts_it(case):
    matrix, coef, offs, padded, signs, starts, dtype = case
    rotated = rotate_rows(
        matrix, coef, offs, padded, signs, starts, np.empty((matrix.shape[0], padded[-1]), dtype)
    )
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for t in range(len(offs) - 1):
        before = np.linalg.norm(matrix[coef != 0, offs[t] : offs[t + 1]].astype(float), axis=1)
        after = np.linalg.norm(rotated[coef != 0, padded[t] : padded[t + 1]].astype(float), axis=1)
        np.testing.assert_allclose(after, before, rtol=rtol, atol=1e-300)
    total = (coef[:, None] * rotated.astype(np.float64)).sum(axis=0)
    expected = (coef[:, None] * matrix.astype(np.float64)).sum(axis=0)
    ours = unrotate(total.copy(), offs, padded, signs, starts, np.empty(offs[-1]))
    twin = unrotate_numpy(total, offs, padded, signs, starts, np.empty(offs[-1]))
    np.testing.assert_array_equal(ours, twin)
    scale = np.abs(matrix).max() * max(coef.sum(), 1) if matrix.size else 1.0
    np.testing.assert_allclose(ours, expected, rtol=0, atol=max(scale, 1) * rtol * 10)


def test_size_one_tensors_are_left_alone():
    matrix = np.array([[3.5, -2.0]])
    offs = np.array([0, 1, 2])
    starts = np.array([[0], [1]])
    out = rotate_rows(
        matrix, np.ones(1), offs, offs, np.array([-1, -1], np.int8), starts, np.empty((1, 2))
    )
    np.testing.assert_array_equal(out, matrix)


@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [(np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float32)],
)
def test_rotation_of_tensors_of_many_blocks_matches_twin(in_dtype, out_dtype, threads):
    # Padded sizes 131,072 and 524,288 (the MNIST CNN's largest layer pads to the latter): many
    # cache blocks and L2 segments, then the whole-vector stages, with tensors ending inside a
    # block (the padding's zeros take the signs: -0.0 where a sign is negative).
    sizes = [70_000, 3, 300_001]
    rng = np.random.default_rng(11)
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    padded = np.concatenate([[0], np.cumsum([padded_size(s) for s in sizes])]).astype(np.int64)
    repeats = 2
    starts = np.zeros((len(sizes), repeats), np.int64)
    signs, position = [], 0
    for t, s in enumerate(sizes):
        for r in range(repeats):
            starts[t, r] = position
            signs.append(fill_signs_numpy(padded_size(s), 100 + 7 * t + r))
            position += padded_size(s)
    signs = np.concatenate(signs).astype(np.int8)
    if in_dtype == np.int64:
        matrix = rng.integers(-1000, 1000, (2, offs[-1]))
    else:
        matrix = rng.standard_normal((2, offs[-1])).astype(in_dtype)
    coef = np.array([1.0, 2.0])
    shape = (2, int(padded[-1]))
    ours = rotate_rows(matrix, coef, offs, padded, signs, starts, np.full(shape, 5, out_dtype))
    twin = rotate_rows_numpy(matrix, coef, offs, padded, signs, starts, np.empty(shape, out_dtype))
    assert_same_bits(ours, twin)
    total = twin[0].astype(np.float64)
    assert_same_bits(
        unrotate(total.copy(), offs, padded, signs, starts, np.empty(offs[-1])),
        unrotate_numpy(total, offs, padded, signs, starts, np.empty(offs[-1])),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rotation_of_zeros_has_the_twins_signed_zeros(dtype, threads):
    # A zero row rotates to +-0.0 in a pattern set by the signs (0 * -inv is -0.0, and the
    # butterflies add and subtract signed zeros); the kernel must keep it bit for bit.
    sizes = [5, 70_000]
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    padded = np.concatenate([[0], np.cumsum([padded_size(s) for s in sizes])]).astype(np.int64)
    starts = np.array([[0], [padded[1]]], np.int64)
    signs = np.concatenate([fill_signs_numpy(padded_size(s), 3 + t) for t, s in enumerate(sizes)])
    matrix = np.zeros((1, offs[-1]), dtype)
    shape = (1, int(padded[-1]))
    one = np.ones(1)
    ours = rotate_rows(matrix, one, offs, padded, signs, starts, np.full(shape, 5, dtype))
    twin = rotate_rows_numpy(matrix, one, offs, padded, signs, starts, np.empty(shape, dtype))
    assert np.signbit(twin).any() and not np.signbit(twin).all()
    assert_same_bits(ours, twin)
