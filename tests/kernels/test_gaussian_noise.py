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

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from aggkit.kernels import counter_rng, gaussian_noise
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
