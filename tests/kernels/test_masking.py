"""Masking kernels against their NumPy twins, and against exact Python-int arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels import masking

DTYPES = st.sampled_from([np.uint32, np.uint64])


@st.composite
def modulus_for(draw, dtype, power_of_two: bool | None = None):
    bits = np.dtype(dtype).itemsize * 8
    kind = draw(st.booleans()) if power_of_two is None else power_of_two
    if kind:
        return 1 << draw(st.integers(1, bits))
    # Small, near a power of two, and near the top of the word (where uint64 sums wrap).
    candidate = draw(
        st.one_of(
            st.integers(3, 1000),
            st.integers(2, bits - 1).map(lambda b: (1 << b) + 1),
            st.integers((1 << bits) - 1000, (1 << bits) - 1),
            st.integers(3, (1 << bits) - 1),
        )
    )
    if candidate & (candidate - 1) == 0:
        candidate += 1
    return min(candidate, (1 << bits) - 1)


def values_below(rng, modulus, n, dtype):
    """Values in [0, modulus) (slightly biased, which does not matter here), extremes included."""
    v = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    if modulus < 2**64:
        v %= np.uint64(modulus)
    if n >= 2:
        v[0] = 0
        v[-1] = modulus - 1
    return v.astype(dtype)


@given(st.data(), DTYPES, st.integers(0, 300), st.booleans(), st.integers(0, 2**32))
def test_add_words_pow2_matches_twin_and_exact(data, dtype, n, subtract, seed):
    modulus = data.draw(modulus_for(dtype, power_of_two=True))
    rng = np.random.default_rng(seed)
    acc = values_below(rng, modulus, n, dtype)
    words = rng.integers(
        0, np.iinfo(dtype).max, size=n + data.draw(st.integers(0, 5)), dtype=dtype, endpoint=True
    )
    exact = (acc.astype(object) + (-1 if subtract else 1) * words[:n].astype(object)) % modulus
    ours = masking.add_words_pow2(acc.copy(), words, modulus, subtract)
    twin = masking.add_words_pow2_numpy(acc.copy(), words, modulus, subtract)
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(ours, exact.astype(dtype))


@given(st.data(), DTYPES, st.integers(0, 300), st.booleans(), st.integers(0, 2**32))
def test_add_mod_matches_twin_and_exact(data, dtype, n, subtract, seed):
    modulus = data.draw(modulus_for(dtype))
    rng = np.random.default_rng(seed)
    acc = values_below(rng, modulus, n, dtype)
    values = values_below(rng, modulus, n, dtype)[::-1].copy()
    exact = (acc.astype(object) + (-1 if subtract else 1) * values.astype(object)) % modulus
    ours = masking.add_mod(acc.copy(), values, modulus, subtract)
    twin = masking.add_mod_numpy(acc.copy(), values, modulus, subtract)
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(ours, exact.astype(dtype))


@given(
    st.data(),
    DTYPES,
    st.integers(0, 200),
    st.integers(0, 300),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_add_words_rejection_matches_twin(data, dtype, n, num_words, subtract, seed):
    modulus = data.draw(modulus_for(dtype, power_of_two=False))
    rng = np.random.default_rng(seed)
    acc = values_below(rng, modulus, n, dtype)
    start = data.draw(st.integers(0, n))
    words = rng.integers(0, np.iinfo(dtype).max, size=num_words, dtype=dtype, endpoint=True)
    limit = masking.rejection_limit(modulus, np.dtype(dtype).itemsize * 8)
    if num_words:  # make sure the rejection branch is exercised
        words[rng.integers(0, num_words)] = np.iinfo(dtype).max
        assert int(np.iinfo(dtype).max) >= limit
    ours_acc, twin_acc = acc.copy(), acc.copy()
    ours = masking.add_words_rejection(ours_acc, start, words, modulus, subtract)
    twin = masking.add_words_rejection_numpy(twin_acc, start, words, modulus, subtract)
    assert ours == twin
    np.testing.assert_array_equal(ours_acc, twin_acc)
    # Exact reference: the accepted words, in order, reduced mod the modulus.
    accepted = [int(w) % modulus for w in words if int(w) < limit][: n - start]
    expected = acc.astype(object)
    for i, v in enumerate(accepted):
        expected[start + i] = (expected[start + i] + (-v if subtract else v)) % modulus
    assert ours == start + len(accepted)
    np.testing.assert_array_equal(ours_acc, expected.astype(dtype))


def test_rejection_is_resumable_across_word_chunks():
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**32, size=1000, dtype=np.uint32)
    words[::7] = np.uint32(2**32 - 1)  # rejected for modulus 3 (limit 2**32 - 1)
    whole = np.zeros(600, np.uint32)
    masking.add_words_rejection(whole, 0, words, 3)
    pieces = np.zeros(600, np.uint32)
    pos = 0
    for chunk in np.array_split(words, 13):
        pos = masking.add_words_rejection(pieces, pos, chunk, 3)
    np.testing.assert_array_equal(whole, pieces)
    assert pos == 600


def test_empty_and_single_element():
    for dtype in (np.uint32, np.uint64):
        empty = np.zeros(0, dtype)
        assert masking.add_words_pow2(empty, np.zeros(0, dtype), 2**8).size == 0
        assert masking.add_mod(empty, np.zeros(0, dtype), 7).size == 0
        assert masking.add_words_rejection(empty, 0, np.ones(3, dtype), 7) == 0
        one = np.array([6], dtype)
        assert masking.add_mod(one, np.array([3], dtype), 7)[0] == 2
        assert masking.add_words_pow2(one, np.array([15], dtype), 16)[0] == 1


def test_full_width_moduli_wrap():
    acc = np.array([2**64 - 1, 5], np.uint64)
    masking.add_mod(acc, np.array([2, 2**64 - 1], np.uint64), 2**64)
    np.testing.assert_array_equal(acc, [1, 4])
    acc = np.array([0], np.uint32)
    masking.add_words_pow2(acc, np.array([1], np.uint32), 2**32, subtract=True)
    assert acc[0] == 2**32 - 1


def test_read_only_words_are_accepted():
    words = np.frombuffer(np.arange(4, dtype=np.uint32).tobytes(), np.uint32)
    acc = np.zeros(4, np.uint32)
    masking.add_words_pow2(acc, words, 2**32)
    masking.add_mod(acc, words, 2**32)
    np.testing.assert_array_equal(acc, [0, 2, 4, 6])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: masking.add_mod(np.zeros(2, np.int64), np.zeros(2, np.int64), 5), TypeError),
        (lambda: masking.add_mod(np.zeros(2, np.uint32), np.zeros(2, np.uint64), 5), TypeError),
        (lambda: masking.add_mod(np.zeros(3, np.uint32), np.zeros(2, np.uint32), 5), ValueError),
        (
            lambda: masking.add_mod(np.zeros(2, np.uint32), np.zeros(2, np.uint32), 2**33),
            ValueError,
        ),
        (lambda: masking.add_mod(np.zeros(2, np.uint32), np.zeros(2, np.uint32), 1), ValueError),
        (
            lambda: masking.add_words_pow2(np.zeros(2, np.uint32), np.zeros(2, np.uint32), 6),
            ValueError,
        ),
        (
            lambda: masking.add_words_rejection(
                np.zeros(2, np.uint32), 0, np.zeros(2, np.uint32), 8
            ),
            ValueError,
        ),
        (
            lambda: masking.add_words_rejection(
                np.zeros(2, np.uint32), 3, np.zeros(2, np.uint32), 7
            ),
            ValueError,
        ),
    ],
)
def test_bad_arguments(call, error):
    with pytest.raises(error):
        call()
