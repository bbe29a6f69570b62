"""Gaussian noise: bit-exact twin, reproducibility, thread-count independence, and statistics.

Statistical tests use fixed keys (so they are deterministic) and tolerances a correct sampler
passes with high probability for any key: 4 standard errors, or p > 1e-4.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from aggkit.kernels import counter_rng, gaussian_noise, limits
from aggkit.kernels.gaussian_noise import (
    add_gaussian_noise,
    add_gaussian_noise_numpy,
    gaussian,
    gaussian_numpy,
)

DTYPES = st.sampled_from([np.float32, np.float64])


@given(
    DTYPES,
    st.integers(0, 300),
    st.integers(0, 2**62),
    st.integers(0, 2**64 - 1),
    st.floats(0, 1e6, allow_nan=False),
    st.sampled_from([None, np.nan, np.inf, -np.inf, 0.0]),
)
def test_add_matches_twin_bit_for_bit(dtype, size, offset, key, sigma, special):
    base = np.random.default_rng(size).standard_normal(size).astype(dtype) * 100
    if size and special is not None:
        base[size // 2] = special
    ours, twin = base.copy(), base.copy()
    add_gaussian_noise(ours, sigma, key, offset)
    add_gaussian_noise_numpy(twin, sigma, key, offset)
    assert ours.tobytes() == twin.tobytes()
    if size and special is not None and not math.isfinite(special):
        assert ours[size // 2] == special or (np.isnan(special) and np.isnan(ours[size // 2]))


@given(DTYPES, st.integers(0, 300), st.integers(0, 2**62), st.integers(0, 2**64 - 1))
def test_gaussian_matches_twin(dtype, size, offset, key):
    ours = gaussian(size, 0.75, key, dtype, offset)
    assert ours.dtype == dtype and ours.shape == (size,)
    assert ours.tobytes() == gaussian_numpy(size, 0.75, key, dtype, offset).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 2, 2**40 + 1])
def test_large_vectors_across_pieces(dtype, offset):
    size = 2 * 2 * gaussian_noise._PIECE_PAIRS + 3  # three pieces, odd length
    ours = gaussian(size, 2.0, 123, dtype, offset)
    assert ours.tobytes() == gaussian_numpy(size, 2.0, 123, dtype, offset).tobytes()


def test_noise_can_be_added_piece_by_piece():
    whole = gaussian(10_001, 1.0, 5)
    cuts = [0, 1, 2, 999, 1000, 7777, 10_001]
    parts = [gaussian(b - a, 1.0, 5, offset=a) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_float32_gets_one_rounding_of_the_float64_sum():
    x = np.linspace(-3, 3, 1001).astype(np.float32)
    ours = add_gaussian_noise(x.copy(), 0.1, 9)
    z = counter_rng.standard_normal_numpy(9, np.arange(1001))
    np.testing.assert_array_equal(ours, (x.astype(np.float64) + 0.1 * z).astype(np.float32))


def test_reproducible_and_key_dependent():
    key = counter_rng.seed_to_key(42)
    a = gaussian((3, 1000), 1.0, key, np.float32)
    b = gaussian((3, 1000), 1.0, key, np.float32)
    c = gaussian((3, 1000), 1.0, counter_rng.derive_key(key, 1), np.float32)
    assert a.shape == (3, 1000)
    assert a.tobytes() == b.tobytes()
    assert not np.any(a == c)


def test_sigma_zero_adds_nothing():
    x = np.arange(10.0)
    np.testing.assert_array_equal(add_gaussian_noise(x.copy(), 0.0, 1), x)


THREADS_SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from aggkit.kernels import counter_rng, gaussian_noise

    digest = hashlib.sha256()
    for dtype in (np.float32, np.float64):
        for offset in (0, 3):
            x = np.linspace(-1, 1, 200_003).astype(dtype)
            gaussian_noise.add_gaussian_noise(x, 0.5, 2024, offset)
            digest.update(x.tobytes())
            u = counter_rng.fill_uniform01(np.empty(100_001, dtype), 7, offset)
            s = counter_rng.fill_rademacher(np.empty(100_001, dtype), 7, offset)
            digest.update(u.tobytes() + s.tobytes())
    print(digest.hexdigest())
    """
)


def _digest_with_threads(threads: int) -> str:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_bits_do_not_depend_on_thread_count():
    one, two = _digest_with_threads(1), _digest_with_threads(2)
    assert len(one) == 64
    assert one == two


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: add_gaussian_noise(np.zeros(3), -1.0, 1), ValueError, "sigma"),
        (lambda: add_gaussian_noise(np.zeros(3), np.nan, 1), ValueError, "sigma"),
        (lambda: add_gaussian_noise(np.zeros(3), np.inf, 1), ValueError, "sigma"),
        (lambda: add_gaussian_noise(np.zeros(3), "1", 1), TypeError, "sigma"),
        (lambda: add_gaussian_noise(np.zeros(3), 1.0, -5), ValueError, "key"),
        (lambda: add_gaussian_noise(np.zeros(3), 1.0, 1.0), TypeError, "key"),
        (lambda: add_gaussian_noise(np.zeros(3), 1.0, 1, -1), ValueError, "offset"),
        (lambda: add_gaussian_noise(np.zeros(3, np.int32), 1.0, 1), TypeError, "out"),
        (lambda: add_gaussian_noise(np.zeros((4, 4))[:, 1], 1.0, 1), ValueError, "out"),
        (lambda: gaussian(3, 1.0, 1, np.int64), TypeError, "dtype"),
    ],
)
def test_bad_arguments(call, error, name):
    with pytest.raises(error, match=name):
        call()


# --------------------------------------------------------------------------------------------
# Statistics (fixed keys, 10^6 draws)
# --------------------------------------------------------------------------------------------

N = 1_000_000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sigma", [1.0, 0.37])
def test_std_and_mean(dtype, sigma):
    z = gaussian(N, sigma, counter_rng.derive_key(counter_rng.seed_to_key(1), str(sigma)), dtype)
    z = z.astype(np.float64)
    assert abs(z.std() / sigma - 1.0) < 0.03
    # The tighter honest bound: the sample std's standard error is sigma / sqrt(2N).
    assert abs(z.std() - sigma) < 4 * sigma / math.sqrt(2 * N)
    assert abs(z.mean()) < 4 * sigma / math.sqrt(N)


def test_normality():
    z = gaussian(N, 1.0, counter_rng.seed_to_key(31337))
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # Chi-square on 200 equiprobable bins (sensitive in the body) ...
    bins = np.clip((stats.norm.cdf(z) * 200).astype(np.int64), 0, 199)
    assert stats.chisquare(np.bincount(bins, minlength=200)).pvalue > 1e-4
    # ... and the tails: P(|z| > 3) = 0.0027, P(|z| > 4) = 6.3e-5.
    for t in (3.0, 4.0):
        p = 2 * stats.norm.sf(t)
        assert abs(np.mean(np.abs(z) > t) - p) < 4 * math.sqrt(p * (1 - p) / N)
    assert abs(stats.skew(z)) < 4 * math.sqrt(6 / N)
    assert abs(stats.kurtosis(z)) < 4 * math.sqrt(24 / N)


def test_pairs_and_neighbours_are_independent():
    z = gaussian(N, 1.0, counter_rng.seed_to_key(77))
    # The two halves of a Box-Muller pair, and neighbouring pairs, are uncorrelated ...
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 4 / math.sqrt(N / 2)
    assert abs(np.corrcoef(z[1:-1:2], z[2::2])[0, 1]) < 4 / math.sqrt(N / 2)
    # ... including in their squares (Box-Muller pairs share a radius: a bad uniform would show).
    sq = z**2
    assert abs(np.corrcoef(sq[0::2], sq[1::2])[0, 1]) < 4 / math.sqrt(N / 2)
    # The angle of a pair is uniform: chi-square over 64 sectors.
    angle = np.arctan2(z[1::2], z[0::2])
    sectors = ((angle + np.pi) / (2 * np.pi) * 64).astype(np.int64) % 64
    assert stats.chisquare(np.bincount(sectors, minlength=64)).pvalue > 1e-4


def test_different_keys_give_uncorrelated_noise():
    base = counter_rng.seed_to_key(5)
    a = gaussian(N, 1.0, counter_rng.derive_key(base, "dp_noise", 0))
    b = gaussian(N, 1.0, counter_rng.derive_key(base, "dp_noise", 1))
    c = gaussian(N, 1.0, base + 1)
    for other in (b, c):
        assert abs(np.corrcoef(a, other)[0, 1]) < 4 / math.sqrt(N)


# -- the tail of Box-Muller's radius ------------------------------------------------------------

_tail_jit = numba.njit(cache=False)


@_tail_jit
def _tail_pairs(key, counters, out):
    for j in range(counters.size):
        z0, z1 = counter_rng.normal_pair_tail(key, counters[j])
        out[j, 0] = z0
        out[j, 1] = z1


@_tail_jit
def _head_pairs(key, counters, out, tails):
    for j in range(counters.size):
        z0, z1, tail = counter_rng.normal_pair_head(key, counters[j])
        out[j, 0] = z0
        out[j, 1] = z1
        tails[j] = tail


@given(st.integers(0, 2**64 - 1), st.lists(st.integers(0, 2**63), max_size=20))
def test_tail_pairs_match_their_twin_bit_for_bit(key, counters):
    c = np.array(counters, dtype=np.uint64)
    out = np.empty((c.size, 2))
    _tail_pairs(np.uint64(key), c, out)
    z0, z1 = counter_rng.normal_pair_tail_numpy(key, c)
    np.testing.assert_array_equal(out[:, 0], z0)
    np.testing.assert_array_equal(out[:, 1], z1)


def test_head_equals_the_pair_outside_the_tail():
    c = np.arange(10_000, dtype=np.uint64)
    out, tails = np.empty((c.size, 2)), np.empty(c.size, np.int64)
    _head_pairs(np.uint64(77), c, out, tails)
    z0, z1 = counter_rng.normal_pair_numpy(77, c)
    assert not tails.any()  # probability 2**-53 each
    np.testing.assert_array_equal(out[:, 0], z0)
    np.testing.assert_array_equal(out[:, 1], z1)


def test_tail_radius_continues_the_exponential():
    # In the tail, u = 2**-53 u' with u' uniform: r^2 / 2 - 53 ln 2 = -log u' ~ Exp(1), and the
    # angle stays uniform. Before, every such pair had r = sqrt(2 * 53 ln 2) = 8.57 exactly.
    c = np.arange(50_000, dtype=np.uint64)
    out = np.empty((c.size, 2))
    _tail_pairs(np.uint64(2024), c, out)
    excess = 0.5 * (out**2).sum(axis=1) - 53 * math.log(2)
    assert stats.kstest(excess, "expon").pvalue > 1e-4
    angle = np.arctan2(out[:, 1], out[:, 0]) / (2 * np.pi) % 1.0
    assert stats.kstest(angle, "uniform").pvalue > 1e-4
    assert np.sqrt((out**2).sum(axis=1)).max() > 9.5  # beyond the old bound of 8.57


def test_tail_reaches_the_documented_radius_when_every_level_is_zero(monkeypatch):
    # Force all-zero words on the tail levels (probability 2**(-53 * 19)): the radius is the
    # reach the privacy check relies on.
    real = counter_rng.philox4x32_10_numpy

    def zero_tail(counters, key):
        words = real(counters, key)
        tail = np.asarray(counters)[..., 3] == counter_rng._TAIL_TAG
        words[tail] = 0
        return words

    monkeypatch.setattr(counter_rng, "philox4x32_10_numpy", zero_tail)
    z0, z1 = counter_rng.normal_pair_tail_numpy(5, np.arange(3, dtype=np.uint64))
    np.testing.assert_allclose(np.hypot(z0, z1), limits.MAX_ABS_NORMAL, rtol=1e-14)
    assert limits.MAX_ABS_NORMAL == pytest.approx(38.334, abs=1e-3)


def test_infinite_loss_bound_of_the_old_and_new_samplers():
    # The old sampler (radius 8.57) at z = 0.2 and z = 0.1; the new one at the floor.
    assert limits.infinite_loss_bound(0.2, dimension=2, radius=8.57) > 1e-5
    assert limits.infinite_loss_bound(0.1, dimension=2, radius=8.57) == 1.0
    assert limits.infinite_loss_bound(limits.MIN_NOISE_MULTIPLIER) < 1e-26
    assert limits.infinite_loss_bound(0.0) == 1.0
    # Monotone in the noise multiplier and in the dimension.
    zs = [0.04, 0.05, 0.1, 0.5]
    bounds = [limits.infinite_loss_bound(z) for z in zs]
    assert bounds == sorted(bounds, reverse=True)
    assert limits.infinite_loss_bound(0.04, 10) < limits.infinite_loss_bound(0.04, 10**9)


def test_tail_pairs_added_by_the_wrapper_are_the_twins():
    # Tail pairs (probability 2**-53) cannot be met by chance: add chosen counters as if they were.
    from aggkit.kernels.gaussian_noise import _add_tail_pairs, _tail_counters

    key = np.uint64(counter_rng.derive_key(counter_rng.seed_to_key(5), "tail", 0))
    for dtype in (np.float32, np.float64):
        flat = np.linspace(-1, 1, 40).astype(dtype)
        expected = flat.copy()
        counters = np.array([101, 105, 119], np.uint64)  # pairs 1, 5 and 19 of a stream at 100
        _add_tail_pairs(flat, 0.7, key, 100, counters)
        z0, z1 = counter_rng.normal_pair_tail_numpy(int(key), counters)
        for p, a, b in zip([1, 5, 19], z0, z1, strict=True):
            expected[2 * p] = dtype(np.float64(expected[2 * p]) + 0.7 * a)
            expected[2 * p + 1] = dtype(np.float64(expected[2 * p + 1]) + 0.7 * b)
        np.testing.assert_array_equal(flat, expected)
    # No counter of an ordinary range is in the tail, as the head reports.
    counters = np.arange(10_000, dtype=np.uint64)
    assert _tail_counters(key, counters).size == 0


def test_half_pairs_at_either_end_match_the_twin():
    key = counter_rng.derive_key(counter_rng.seed_to_key(6), "halves", 0)
    for offset, size in [(1, 8), (3, 7), (2, 9), (5, 1), (0, 1), (7, 0)]:
        for dtype in (np.float32, np.float64):
            got = gaussian_noise.add_gaussian_noise(np.ones(size, dtype), 0.3, key, offset)
            want = gaussian_noise.add_gaussian_noise_numpy(np.ones(size, dtype), 0.3, key, offset)
            np.testing.assert_array_equal(got, want)
