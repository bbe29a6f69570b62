"""Discrete Gaussian and Skellam noise: bit-exact twins, exact pmfs (chi-square), variances,
thread-count independence.

Statistical tests use fixed keys and tolerances a correct sampler passes for any key with high
probability: chi-square p-values above 1e-4, variances within 3% over 10^6 draws (the standard
error of a variance estimate is then about 0.15%).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from aggkit.kernels import discrete_noise
from aggkit.kernels.discrete_noise import (
    add_discrete_gaussian,
    add_discrete_gaussian_numpy,
    add_skellam,
    add_skellam_numpy,
)


def _discrete_gaussian_pmf(values, sigma):
    support = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41).astype(np.float64)
    norm = np.exp(-(support**2) / (2 * sigma**2)).sum()
    return np.exp(-(np.asarray(values, np.float64) ** 2) / (2 * sigma**2)) / norm


def _skellam_pmf(values, mean):
    return special.ive(np.abs(np.asarray(values, np.float64)), 2 * mean)


def _chi_square_p(samples, pmf):
    """p-value of ``samples`` against ``pmf`` (of integer values); bins of >= 20 expected."""
    values, counts = np.unique(samples, return_counts=True)
    lo, hi = values.min(), values.max()
    support = np.arange(lo, hi + 1)
    expected = pmf(support) * samples.size
    observed = np.zeros(support.size)
    observed[values - lo] = counts
    # Merge the tails into the outermost bins with at least 20 expected.
    keep = np.flatnonzero(expected >= 20)
    first, last = keep[0], keep[-1]
    obs = observed[first : last + 1].copy()
    exp = expected[first : last + 1].copy()
    obs[0] += observed[:first].sum()
    obs[-1] += observed[last + 1 :].sum()
    exp[0] += samples.size * (pmf(np.arange(lo - 200, lo)).sum()) + expected[:first].sum()
    exp[-1] += samples.size * (pmf(np.arange(hi + 1, hi + 200)).sum()) + expected[last + 1 :].sum()
    exp *= obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 40),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**40),
    st.floats(0.0, 300.0),
)
def test_discrete_gaussian_matches_twin_bit_for_bit(size, key, offset, sigma):
    ours = add_discrete_gaussian(np.arange(size, dtype=np.int64), sigma, key, offset)
    twin = add_discrete_gaussian_numpy(np.arange(size, dtype=np.int64), sigma, key, offset)
    np.testing.assert_array_equal(ours, twin)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**40),
    st.sampled_from([0.0, 0.2, 3.0, 9.99, 10.0, 57.5, 1e4, 3e6]),
)
def test_skellam_matches_twin_bit_for_bit(size, key, offset, mean):
    ours = add_skellam(np.full(size, -5, np.int64), mean, key, offset)
    twin = add_skellam_numpy(np.full(size, -5, np.int64), mean, key, offset)
    np.testing.assert_array_equal(ours, twin)


@pytest.mark.parametrize("sigma", [0.6, 2.5, 17.0])
def test_discrete_gaussian_pmf_is_exact(sigma):
    samples = add_discrete_gaussian(np.zeros(300_000, np.int64), sigma, key=101)
    assert _chi_square_p(samples, lambda v: _discrete_gaussian_pmf(v, sigma)) > 1e-4
    # Symmetric, and no holes in the middle of the support.
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(samples.size)


@pytest.mark.parametrize("mean", [0.4, 3.0, 30.0, 2000.0])
def test_skellam_pmf_is_exact(mean):
    samples = add_skellam(np.zeros(300_000, np.int64), mean, key=202)
    assert _chi_square_p(samples, lambda v: _skellam_pmf(v, mean)) > 1e-4


def test_a_wrong_pmf_is_detected():
    # The chi-square test has power: a rounded continuous Gaussian is not a discrete Gaussian
    # at sigma = 0.6, and a Skellam is not a rounded Gaussian of the same variance at mean 0.4.
    rounded = np.rint(np.random.default_rng(0).normal(0, 0.6, 300_000)).astype(np.int64)
    assert _chi_square_p(rounded, lambda v: _discrete_gaussian_pmf(v, 0.6)) < 1e-6
    samples = add_skellam(np.zeros(300_000, np.int64), 0.4, key=202)
    assert _chi_square_p(samples, lambda v: _discrete_gaussian_pmf(v, math.sqrt(0.8))) < 1e-6


@pytest.mark.parametrize("sigma", [1.0, 12.0, 250.0])
def test_discrete_gaussian_standard_deviation(sigma):
    samples = add_discrete_gaussian(np.zeros(1 << 20, np.int64), sigma, key=7)
    support = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    exact_var = float((support**2 * _discrete_gaussian_pmf(support, sigma)).sum())
    assert samples.std() == pytest.approx(math.sqrt(exact_var), rel=0.03)
    assert exact_var == pytest.approx(sigma**2, rel=1e-6)  # N_Z's variance is sigma^2 here


@pytest.mark.parametrize("mean", [2.0, 400.0, 5e5])
def test_skellam_standard_deviation(mean):
    samples = add_skellam(np.zeros(1 << 20, np.int64), mean, key=8)
    assert samples.std() == pytest.approx(math.sqrt(2 * mean), rel=0.03)


def test_noise_is_piecewise_and_key_dependent():
    whole = add_discrete_gaussian(np.zeros(10_000, np.int64), 4.0, 3)
    parts = [
        add_discrete_gaussian(np.zeros(b - a, np.int64), 4.0, 3, a)
        for a, b in ((0, 17), (17, 5000), (5000, 10_000))
    ]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    other = add_discrete_gaussian(np.zeros(10_000, np.int64), 4.0, 4)
    assert np.mean(whole == other) < 0.2
    sk = add_skellam(np.zeros(5000, np.int64), 9.0, 3)
    sk_parts = [add_skellam(np.zeros(100, np.int64), 9.0, 3, a) for a in range(0, 5000, 100)]
    np.testing.assert_array_equal(sk, np.concatenate(sk_parts))


SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from aggkit.kernels import discrete_noise
    d = hashlib.sha256()
    d.update(discrete_noise.add_discrete_gaussian(np.zeros(50_001, np.int64), 7.5, 9, 3).tobytes())
    d.update(discrete_noise.add_skellam(np.zeros(50_001, np.int64), 123.0, 9, 3).tobytes())
    print(d.hexdigest())
    """
)


def test_bits_do_not_depend_on_thread_count():
    digests = []
    for threads in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        digests.append(done.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: add_discrete_gaussian(np.zeros(3, np.int32), 1.0, 1), TypeError),
        (lambda: add_discrete_gaussian(np.zeros(3), 1.0, 1), TypeError),
        (lambda: add_discrete_gaussian(np.zeros(3, np.int64), -1.0, 1), ValueError),
        (lambda: add_discrete_gaussian(np.zeros(3, np.int64), np.nan, 1), ValueError),
        (lambda: add_skellam(np.zeros(3, np.int64), np.inf, 1), ValueError),
        (lambda: add_skellam(np.zeros(3, np.int64), 1.0, 1, 2**62), ValueError),
        (lambda: add_skellam(np.zeros((4, 4), np.int64)[:, 1], 1.0, 1), ValueError),
        (lambda: add_skellam(np.zeros(3, np.int64), 1.0, -1), ValueError),
    ],
)
def test_bad_arguments(call, error):
    with pytest.raises(error):
        call()


def test_failures_are_reported_not_hidden():
    failures = np.array([0, 2, 0])
    with pytest.raises(discrete_noise.DiscreteNoiseError, match="2 Poisson values"):
        discrete_noise._check_failures(failures, "Poisson")
