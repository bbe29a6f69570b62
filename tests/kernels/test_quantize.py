"""The quantization kernels against their NumPy twins, and the properties aggregators rely on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels.counter_rng import derive_key
from aggkit.kernels.quantize import (
    TASK,
    chunk_size,
    pack_bits,
    pack_bits_numpy,
    packed_words,
    quantized_row_sum,
    quantized_row_sum_numpy,
    stochastic_levels,
    stochastic_levels_numpy,
    unpack_bits,
    unpack_bits_numpy,
)
from tests.strategies import client_matrices, coefficients, offsets

BITS = st.integers(1, 16)
CHUNK = chunk_size(16)  # the longer of the two chunk sizes


def _ranges(matrix, coef, offs, bits):
    """Per row and tensor: the range of ``coef * x`` (float64), its scale and step."""
    top = float(2**bits - 1)
    rows, num_tensors = matrix.shape[0], len(offs) - 1
    lo = np.zeros((rows, num_tensors))
    hi = np.zeros((rows, num_tensors))
    for t in range(num_tensors):
        seg = matrix[:, offs[t] : offs[t + 1]].astype(np.float64)
        if seg.shape[1]:
            lo[:, t] = coef * seg.min(axis=1)
            hi[:, t] = coef * seg.max(axis=1)
    span = hi - lo
    with np.errstate(divide="ignore", over="ignore"):
        scale = np.where(span > 0, top / span, 0.0)
    scale[~np.isfinite(scale)] = 0.0
    return lo, scale, span / top


@st.composite
def quantized_sums(draw, max_cols=TASK + CHUNK + 7):
    matrix = draw(client_matrices(max_rows=9, max_cols=max_cols, allow_nonfinite=False))
    offs = draw(offsets(matrix.shape[1], max_tensors=4))
    coef = draw(coefficients(matrix.shape[0]))
    quantize = np.array(
        draw(st.lists(st.booleans(), min_size=len(offs) - 1, max_size=len(offs) - 1))
    )
    bits = draw(BITS)
    key = draw(st.integers(0, 2**64 - 1))
    first = draw(st.integers(0, 10**6))
    return matrix, coef, offs, quantize, bits, key, first


@given(quantized_sums())
def test_fused_sum_matches_twin_bit_for_bit(case):
    matrix, coef, offs, quantize, bits, key, first = case
    lo, scale, step = _ranges(matrix, coef, offs, bits)
    args = (matrix, coef, offs, quantize, lo, scale, step, bits, key, first)
    ours = quantized_row_sum(*args, np.zeros(matrix.shape[1]))
    twin = quantized_row_sum_numpy(*args, np.zeros(matrix.shape[1]))
    np.testing.assert_array_equal(ours, twin)


# Each case compiles its own kernel (aggkit.kernels.quantize._row_sum_kernel): with and without
# rows left over after the groups of four, with and without a tensor summed exactly.
@pytest.mark.parametrize("rows, exact", [(11, True), (13, False)])
@pytest.mark.parametrize("bits", [4, 8])  # 32-bit and 16-bit uniforms
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sum_matches_twin_across_tasks_and_row_groups(dtype, bits, rows, exact):
    rng = np.random.default_rng(3)
    cols = 2 * TASK + CHUNK + 13  # three tasks, the last with a partial chunk
    # 11 rows, one of them inactive: two groups of four rows, then two; 13: three groups.
    matrix = rng.standard_normal((rows, cols)).astype(dtype)
    coef = rng.random(rows)
    coef[5] = 0.0
    offs = np.array([0, 7, cols - 500, cols])
    quantize = np.array([True, True, not exact])
    lo, scale, step = _ranges(matrix, coef, offs, bits)
    args = (matrix, coef, offs, quantize, lo, scale, step, bits, 99, 3)
    ours = quantized_row_sum(*args, np.zeros(cols))
    np.testing.assert_array_equal(ours, quantized_row_sum_numpy(*args, np.zeros(cols)))


@given(quantized_sums(max_cols=3 * CHUNK), st.data())
def test_fused_sum_does_not_depend_on_how_rows_are_split(case, data):
    matrix, coef, offs, quantize, bits, key, first = case
    lo, scale, step = _ranges(matrix, coef, offs, bits)
    whole = quantized_row_sum(
        matrix, coef, offs, quantize, lo, scale, step, bits, key, first, np.zeros(matrix.shape[1])
    )
    cut = data.draw(st.integers(0, matrix.shape[0]))
    acc = np.zeros(matrix.shape[1])
    for rows in (slice(0, cut), slice(cut, None)):
        start = rows.start or 0
        quantized_row_sum(
            np.ascontiguousarray(matrix[rows]),
            coef[rows],
            offs,
            quantize,
            lo[rows],
            scale[rows],
            step[rows],
            bits,
            key,
            first + start,
            acc,
        )
    np.testing.assert_array_equal(acc, whole)


@given(quantized_sums(max_cols=3 * CHUNK))
def test_fused_sum_is_the_sum_of_each_clients_decoded_levels(case):
    """The fused pass adds exactly what decoding each client's own levels gives."""
    matrix, coef, offs, quantize, bits, key, first = case
    lo, scale, step = _ranges(matrix, coef, offs, bits)
    fused = quantized_row_sum(
        matrix, coef, offs, quantize, lo, scale, step, bits, key, first, np.zeros(matrix.shape[1])
    )
    expected = np.zeros(matrix.shape[1])
    for i in np.flatnonzero(coef):
        for t in range(len(offs) - 1):
            seg = slice(offs[t], offs[t + 1])
            if quantize[t]:
                stream = derive_key(key, first + int(i), t)
                q = stochastic_levels(matrix[i, seg], coef[i], lo[i, t], scale[i, t], bits, stream)
                expected[seg] += lo[i, t] + q.astype(np.float64) * step[i, t]
            else:
                expected[seg] += coef[i] * matrix[i, seg].astype(np.float64)
    np.testing.assert_array_equal(fused, expected)


@given(
    client_matrices(max_rows=1, max_cols=3 * CHUNK + 17, allow_nonfinite=False),
    st.floats(0, 100),
    BITS,
    st.integers(0, 2**64 - 1),
)
def test_levels_match_twin_and_round_to_a_neighbour(matrix, coef, bits, key):
    x = matrix.reshape(-1)
    lo, scale, _ = _ranges(x[None, :], np.array([coef]), np.array([0, x.size]), bits)
    ours = stochastic_levels(x, coef, lo[0, 0], scale[0, 0], bits, key)
    np.testing.assert_array_equal(
        ours, stochastic_levels_numpy(x, coef, lo[0, 0], scale[0, 0], bits, key)
    )
    assert ours.dtype == np.uint32
    assert (ours <= 2**bits - 1).all()
    u = (coef * x.astype(np.float64) - lo[0, 0]) * scale[0, 0]
    assert (np.abs(ours - u) < 1 + 1e-9).all()


def test_levels_on_the_grid_are_exact_and_others_take_both_neighbours():
    x = np.array([0.0, 1.0, 2.0, 3.0] + [1.5] * 4000)
    q = stochastic_levels(x, 1.0, 0.0, 1.0, 2, key=11)
    np.testing.assert_array_equal(q[:4], [0, 1, 2, 3])
    assert set(np.unique(q[4:])) == {1, 2}
    assert abs(q[4:].mean() - 1.5) < 4 * 0.5 / np.sqrt(4000)


def test_constant_tensor_gives_level_zero():
    q = stochastic_levels(np.full(5000, 3.25), 1.0, 3.25, 0.0, 8, key=5)
    assert not q.any()


def test_levels_depend_on_the_key_and_are_reproducible():
    x = np.linspace(0, 1, 5000)
    a = stochastic_levels(x, 1.0, 0.0, 255.0, 8, key=1)
    np.testing.assert_array_equal(a, stochastic_levels(x, 1.0, 0.0, 255.0, 8, key=1))
    assert (a != stochastic_levels(x, 1.0, 0.0, 255.0, 8, key=2)).mean() > 0.3


def test_zero_coefficient_rows_are_skipped_even_when_nonfinite():
    matrix = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]], np.float32)
    coef = np.array([0.0, 1.0])
    offs = np.array([0, 3])
    lo, scale, step = np.ones((2, 1)), np.full((2, 1), 127.5), np.full((2, 1), 2 / 255)
    acc = quantized_row_sum(
        matrix, coef, offs, np.array([True]), lo, scale, step, 8, 1, 0, np.zeros(3)
    )
    assert np.isfinite(acc).all()
    assert acc[0] == 1.0 and acc[2] == pytest.approx(3.0)


@given(st.data(), BITS, st.integers(0, 3000))
def test_pack_matches_twin_and_round_trips(data, bits, count):
    seed = data.draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(0, 2**bits, count).astype(np.uint32)
    if count and data.draw(st.booleans()):
        values[:] = 2**bits - 1  # all bits set
    words = pack_bits(values, bits)
    assert words.dtype == np.int32 and words.size == packed_words(count, bits)
    assert words.size == -(-count * bits // 28)
    assert ((words >= 0) & (words < 2**28)).all()
    np.testing.assert_array_equal(words, pack_bits_numpy(values, bits))
    np.testing.assert_array_equal(unpack_bits(words, bits, count), values)
    np.testing.assert_array_equal(unpack_bits_numpy(words, bits, count), values)


def test_pack_layout_is_a_little_endian_bit_stream():
    # 8-bit values 1, 2, 3, 4: stream bits 0-31; word 0 holds bits 0-27, word 1 bits 28-31.
    words = pack_bits(np.array([1, 2, 3, 4], np.uint32), 8)
    np.testing.assert_array_equal(words, [1 + (2 << 8) + (3 << 16) + ((4 & 0xF) << 24), 4 >> 4])
    # 7 bits: four values fill one word exactly.
    np.testing.assert_array_equal(pack_bits(np.array([127] * 4, np.uint32), 7), [2**28 - 1])


def test_pack_large_input_crosses_parallel_pieces():
    for bits in (1, 5, 8, 13, 16):
        values = np.random.default_rng(bits).integers(0, 2**bits, 200_003).astype(np.uint32)
        words = pack_bits(values, bits)
        np.testing.assert_array_equal(words, pack_bits_numpy(values, bits))
        np.testing.assert_array_equal(unpack_bits(words, bits, values.size), values)


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bits_out_of_range_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        pack_bits(np.zeros(3, np.uint32), bits)


def test_unpack_checks_the_word_count():
    with pytest.raises(ValueError, match="words"):
        unpack_bits(np.zeros(2, np.int32), 8, 100)
