"""The counter-based generators: Philox and SplitMix64 known answers, twins, keys, statistics.

Statistical tests use fixed keys, so each is deterministic; the tolerances are what a correct
generator passes with high probability for a random key (4 standard errors, or p > 1e-4), not
values tuned to these keys.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from aggkit.kernels import counter_rng as rng

KEYS = st.integers(0, 2**64 - 1)
INDICES = st.lists(st.integers(0, 2**63 - 1), min_size=0, max_size=20)

# Random123's known-answer vectors for Philox4x32-10 (kat_vectors in
# github.com/DEShawResearch/random123, tests/kat_vectors): counter words, key words, output words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


# The first outputs of Vigna's splitmix64.c (prng.di.unimi.it) seeded with 0; the same sequence
# as java.util.SplittableRandom's mix64 over the golden-gamma states.
SPLITMIX_SEED0 = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def _splitmix64_textbook(seed: int, count: int) -> list[int]:
    """SplitMix64 as its authors write it: a state advanced by the gamma, then the finalizer."""
    mask = (1 << 64) - 1
    state, out = seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


# Test-only jitted callers of the device functions (the inlined form other kernels get). Not
# cached: a cached caller outside aggkit/kernels would not notice edits to counter_rng.py.
_test_jit = numba.njit(cache=False, error_model="numpy")


@_test_jit
def _philox_scalar(c0, c1, c2, c3, k0, k1):
    u = np.uint64
    return rng.philox4x32_10(u(c0), u(c1), u(c2), u(c3), u(k0), u(k1))


@_test_jit
def _device_values(key, index, out):
    """Every device function at each index, through a jitted loop."""
    for j in range(index.size):
        i = index[j]
        out[j, 0] = rng.uniform01(key, i)
        out[j, 1] = rng.rademacher(key, i)
        out[j, 2] = rng.standard_normal(key, i)
        z0, z1 = rng.normal_pair(key, i)
        out[j, 3] = z0
        out[j, 4] = z1
        out[j, 5] = np.float64(rng.fold_in(key, i) >> np.uint64(11))


@_test_jit
def _mix_values(key, index, out):
    for j in range(index.size):
        out[j, 0] = rng.mix64(key, index[j])
        w0, w1, w2, w3 = rng.mix_block(key, index[j])
        out[j, 1] = w0
        out[j, 2] = w1
        out[j, 3] = w2
        out[j, 4] = w3


def test_splitmix64_known_answers():
    outputs = _splitmix64_textbook(0, 3)
    assert outputs == SPLITMIX_SEED0
    index = np.arange(3, dtype=np.uint64)
    assert [int(v) for v in rng.mix64_numpy(0, index)] == SPLITMIX_SEED0
    out = np.empty((3, 5), np.uint64)
    _mix_values(np.uint64(0), index, out)
    assert [int(v) for v in out[:, 0]] == SPLITMIX_SEED0


@given(KEYS, INDICES)
def test_splitmix64_matches_textbook_and_twins(key, indices):
    index = np.array(indices, dtype=np.uint64)
    out = np.empty((index.size, 5), np.uint64)
    _mix_values(np.uint64(key), index, out)
    np.testing.assert_array_equal(out[:, 0], rng.mix64_numpy(key, index))
    np.testing.assert_array_equal(out[:, 1:], rng.mix_block_numpy(key, index).reshape(-1, 4))
    if indices:
        # Output i is the (i + 1)-th step of the stateful generator started at the key.
        i = min(int(index[0]), 50)
        assert int(rng.mix64_numpy(key, [i])[0]) == _splitmix64_textbook(key, i + 1)[-1]
    # A block is two consecutive outputs cut into 32-bit words, low half first.
    block = rng.mix_block_numpy(key, index)
    pairs = rng.mix64_numpy(key, np.stack([2 * index, 2 * index + 1], -1))
    np.testing.assert_array_equal(block[..., 0::2], pairs & np.uint64(0xFFFFFFFF))
    np.testing.assert_array_equal(block[..., 1::2], pairs >> np.uint64(32))


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in _philox_scalar(*counter, *key)) == expected
    twin = rng.philox4x32_10_numpy(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert tuple(int(w) for w in twin) == expected
    # The one-counter form in Python ints that derive_key and seed_to_key use.
    assert rng._philox_words(*counter, *key) == expected


@given(KEYS, INDICES)
def test_device_functions_match_twins_bit_for_bit(key, indices):
    index = np.array(indices, dtype=np.uint64)
    out = np.empty((index.size, 6))
    _device_values(np.uint64(key), index, out)
    np.testing.assert_array_equal(out[:, 0], rng.uniform01_numpy(key, index))
    np.testing.assert_array_equal(out[:, 1], rng.rademacher_numpy(key, index))
    np.testing.assert_array_equal(out[:, 2], rng.standard_normal_numpy(key, index))
    z0, z1 = rng.normal_pair_numpy(key, index)
    np.testing.assert_array_equal(out[:, 3], z0)
    np.testing.assert_array_equal(out[:, 4], z1)
    folded = [rng.fold_in_numpy(key, int(i)) >> 11 for i in index]
    np.testing.assert_array_equal(out[:, 5], np.array(folded, dtype=np.float64))


@given(KEYS, st.integers(0, 2**40), st.integers(0, 300), st.sampled_from([np.float32, np.float64]))
def test_fill_kernels_match_twins(key, offset, size, dtype):
    ours, twin = np.empty(size, dtype), np.empty(size, dtype)
    rng.fill_uniform01(ours, key, offset)
    rng.fill_uniform01_numpy(twin, key, offset)
    np.testing.assert_array_equal(ours, twin)
    rng.fill_rademacher(ours, key, offset)
    rng.fill_rademacher_numpy(twin, key, offset)
    np.testing.assert_array_equal(ours, twin)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_kernels_across_pieces_and_piecewise(dtype):
    size = 2 * rng._PIECE + 5
    whole = rng.fill_uniform01(np.empty(size, dtype), 77, 3)
    np.testing.assert_array_equal(whole, rng.fill_uniform01_numpy(np.empty(size, dtype), 77, 3))
    split = 12_345
    first = rng.fill_uniform01(np.empty(split, dtype), 77, 3)
    rest = rng.fill_uniform01(np.empty(size - split, dtype), 77, 3 + split)
    np.testing.assert_array_equal(whole, np.concatenate([first, rest]))
    signs = rng.fill_rademacher(np.empty((5, size // 5), dtype), 77)
    np.testing.assert_array_equal(
        signs, rng.fill_rademacher_numpy(np.empty((5, size // 5), dtype), 77)
    )


def test_uniform_ranges_and_float32_grid():
    u64 = rng.fill_uniform01(np.empty(200_000), 5)
    u32 = rng.fill_uniform01(np.empty(200_000, np.float32), 5)
    assert u64.min() >= 0.0 and u64.max() < 1.0
    assert u32.min() >= 0.0 and u32.max() < 1.0
    # float32 values are the float64 ones rounded down to multiples of 2**-24.
    np.testing.assert_array_equal(u32, np.floor(u64 * 2.0**24) / 2.0**24)


def test_log_and_trig_polynomials_are_accurate():
    grid = np.concatenate(
        [
            np.arange(1, 1000) * 2.0**-53,
            np.random.default_rng(0).random(100_000),
            1.0 - np.arange(0, 1000) * 2.0**-53,
            [0.5, 0.25, math.sqrt(0.5), math.sqrt(0.5) + 2.0**-53],
        ]
    )
    ours = rng._log_unit_numpy(grid)
    np.testing.assert_allclose(ours, np.log(grid), rtol=4e-16, atol=4e-16)
    v = np.concatenate([np.arange(0, 9) / 8.0, np.random.default_rng(1).random(100_000)])
    v = v[v < 1.0]
    cos_t, sin_t = rng._cos_sin_turns_numpy(v)
    np.testing.assert_allclose(cos_t, np.cos(2 * np.pi * v), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sin_t, np.sin(2 * np.pi * v), rtol=0, atol=1e-15)
    # Scalar kernels agree with the twins on the extremes.
    for t in (2.0**-53, 2.0**-31, 0.5, math.sqrt(0.5), 1.0):
        assert rng._log_unit(t) == rng._log_unit_numpy(np.array([t]))[0]
    for t in (0.0, 0.125, 0.25, 0.5, 0.75, 1.0 - 2.0**-53):
        assert rng._cos_sin_turns(t) == tuple(float(a[0]) for a in rng._cos_sin_turns_numpy([t]))


@given(st.integers(0, 63), st.integers(1, 2**53))
def test_log_unit_kernel_is_its_twin_at_every_scaling_step(exponent, mantissa):
    """``t = mantissa * 2**-53 * 2**-exponent`` in (2**-117, 1], taken up to (2**-64, 1]: every
    combination of the seven power-of-two steps (branch-free selects in the kernel)."""
    t = max(math.ldexp(mantissa, -53 - exponent), 2.0**-64 * (1 + 2.0**-52))
    assert rng._log_unit(t) == rng._log_unit_numpy(np.array([t]))[0]


@given(st.integers(0, 2**53 - 1))
def test_cos_sin_turns_kernel_is_its_twin_in_every_quadrant(m):
    v = m * 2.0**-53
    assert rng._cos_sin_turns(v) == tuple(float(a[0]) for a in rng._cos_sin_turns_numpy([v]))


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_seed_to_key():
    assert rng.seed_to_key(0) == rng.seed_to_key(0)
    assert rng.seed_to_key(np.int64(3)) == rng.seed_to_key(3)
    keys = {rng.seed_to_key(s) for s in [*range(100), 2**64, 2**64 + 1, 2**200]}
    assert len(keys) == 103
    assert all(0 <= k < 2**64 for k in keys)
    assert rng.seed_to_key(5) != rng.seed_to_key(5 + 2**64)
    # None: fresh OS entropy each time.
    assert rng.seed_to_key(None) != rng.seed_to_key(None)
    # A Generator gives one draw and advances.
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    assert rng.seed_to_key(a) == rng.seed_to_key(b)
    assert rng.seed_to_key(a) != rng.seed_to_key(np.random.default_rng(9))


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)]
)
def test_seed_to_key_rejects(seed, error):
    with pytest.raises(error, match="seed"):
        rng.seed_to_key(seed)


@given(KEYS, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_derive_key_composes_and_matches_fold_in(key, a, b):
    assert rng.derive_key(key, a, b) == rng.derive_key(rng.derive_key(key, a), b)
    # Kernels take keys and data as np.uint64 (the module's calling convention): a Python int
    # above 2**63 - 1 cannot go through a signature numba compiled for int64.
    folded = int(rng.fold_in(np.uint64(key), np.uint64(a)))
    assert rng.derive_key(key, a) == rng.fold_in_numpy(key, a) == folded
    assert rng.derive_key(key) == key


@given(st.lists(KEYS, min_size=1, max_size=5), st.lists(KEYS, min_size=1, max_size=5))
def test_fold_in_array_matches_fold_in_element_by_element(keys, data):
    # Broadcast [K, 1] keys against [D] data, as the quantized sum folds clients and tensors.
    ours = rng.fold_in_array(np.array(keys, np.uint64)[:, None], np.array(data, np.uint64))
    assert ours.dtype == np.uint64 and ours.shape == (len(keys), len(data))
    assert ours.tolist() == [[rng.fold_in_numpy(k, d) for d in data] for k in keys]


def test_derive_key_separates_fields():
    base = rng.seed_to_key(1)
    keys = {
        rng.derive_key(base, "dp_noise"),
        rng.derive_key(base, "quantize"),
        rng.derive_key(base, 0),
        rng.derive_key(base, 1),
        rng.derive_key(base, "dp_noise", 0),
        rng.derive_key(base, "dp_noise", 1),
        rng.derive_key(base, 0, "dp_noise"),
        base,
    }
    assert len(keys) == 8


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: rng.derive_key(-1), ValueError, "key"),
        (lambda: rng.derive_key(2**64), ValueError, "key"),
        (lambda: rng.derive_key(1, 2.0), TypeError, "field"),
        (lambda: rng.fill_uniform01(np.empty(3), -1), ValueError, "key"),
        (lambda: rng.fill_uniform01(np.empty(3), 1, -1), ValueError, "offset"),
        (lambda: rng.fill_uniform01(np.empty(3, np.int64), 1), TypeError, "out"),
        (lambda: rng.fill_uniform01(np.empty((3, 3))[:, 0], 1), ValueError, "out"),
        (lambda: rng.fill_rademacher([0.0, 0.0], 1), TypeError, "out"),
    ],
)
def test_bad_arguments(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_read_only_out_is_rejected():
    out = np.zeros(4)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        rng.fill_rademacher(out, 1)


# --------------------------------------------------------------------------------------------
# Statistics (fixed keys)
# --------------------------------------------------------------------------------------------

N = 1_000_000


def test_uniforms_pass_chi_square_and_moments():
    u = rng.fill_uniform01(np.empty(N), rng.seed_to_key(2024))
    counts = np.bincount((u * 1000).astype(np.int64), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-4
    se = math.sqrt(1 / 12 / N)
    assert abs(u.mean() - 0.5) < 4 * se
    assert abs(u.var() - 1 / 12) < 4 * math.sqrt(1 / 180 / N)  # var of (u - 1/2)^2 is 1/180
    # Consecutive pairs fill the unit square evenly (serial test on a 32x32 grid).
    cells = (u[0::2] * 32).astype(np.int64) * 32 + (u[1::2] * 32).astype(np.int64)
    assert stats.chisquare(np.bincount(cells, minlength=1024)).pvalue > 1e-4


def test_every_output_bit_is_balanced():
    words = rng.random_block_numpy(rng.seed_to_key(7), np.arange(N // 4))
    bits = (words[..., None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)
    freq = bits.reshape(-1, 4, 32).mean(axis=0)
    assert np.all(np.abs(freq - 0.5) < 4 * math.sqrt(0.25 / (N // 4)) + 1e-12)


def test_rademacher_is_balanced_and_uncorrelated():
    s = rng.fill_rademacher(np.empty(N), rng.seed_to_key(11))
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert abs(s.mean()) < 4 / math.sqrt(N)
    assert abs(np.mean(s[1:] * s[:-1])) < 4 / math.sqrt(N)


@pytest.mark.parametrize(
    "other",
    [
        lambda k: k + 1,  # adjacent keys
        lambda k: k ^ (1 << 63),  # one high bit apart
        lambda k: rng.derive_key(k, 0),  # a derived sub-stream
    ],
    ids=["key+1", "high-bit", "derived"],
)
def test_streams_of_different_keys_are_uncorrelated(other):
    key = rng.seed_to_key(3)
    a = rng.fill_uniform01(np.empty(N), key) - 0.5
    b = rng.fill_uniform01(np.empty(N), other(key)) - 0.5
    corr = np.corrcoef(a, b)[0, 1]
    assert abs(corr) < 4 / math.sqrt(N)
    # and not a shifted copy of one another
    assert abs(np.corrcoef(a[1:], b[:-1])[0, 1]) < 4 / math.sqrt(N)
    assert not np.any(a[:1000] == b[:1000])


def test_splitmix_block_bits_and_halves_are_uniform():
    """The quantizer's stream: every bit balanced; its 16-bit uniforms and pairs of them even."""
    words = rng.mix_block_numpy(rng.seed_to_key(8), np.arange(N // 4))
    bits = (words[..., None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)
    freq = bits.reshape(-1, 4, 32).mean(axis=0)
    assert np.all(np.abs(freq - 0.5) < 4 * math.sqrt(0.25 / (N // 4)) + 1e-12)
    halves = np.stack([words & np.uint64(0xFFFF), words >> np.uint64(16)], -1).reshape(-1)
    u = halves.astype(np.float64) / 2**16
    counts = np.bincount((u * 1000).astype(np.int64), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-4
    cells = (u[0::2] * 32).astype(np.int64) * 32 + (u[1::2] * 32).astype(np.int64)
    assert stats.chisquare(np.bincount(cells, minlength=1024)).pvalue > 1e-4
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / u.size)


@pytest.mark.parametrize(
    "other",
    [
        lambda k: (k + 1) % 2**64,  # adjacent keys
        lambda k: k ^ (1 << 63),  # one high bit apart
        lambda k: rng.fold_in_numpy(k, 1),  # the next client's stream (how quantize keys them)
    ],
    ids=["key+1", "high-bit", "folded"],
)
def test_splitmix_streams_of_different_keys_are_uncorrelated(other):
    key = rng.derive_key(rng.seed_to_key(4), 0, 0)
    index = np.arange(N, dtype=np.uint64)
    a = (rng.mix64_numpy(key, index) >> np.uint64(11)).astype(np.float64) * 2.0**-53 - 0.5
    b = (rng.mix64_numpy(other(key), index) >> np.uint64(11)).astype(np.float64) * 2.0**-53 - 0.5
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(N)
    assert abs(np.corrcoef(a[1:], b[:-1])[0, 1]) < 4 / math.sqrt(N)
    assert abs(np.corrcoef(a[1:], a[:-1])[0, 1]) < 4 / math.sqrt(N)
    assert not np.any(a[:1000] == b[:1000])
