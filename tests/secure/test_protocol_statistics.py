"""A masked vector looks uniform and independent of its input (chi-square, fixed seeds).

Each test runs with a fixed seed, so it is deterministic; ``ALPHA`` is the chance that a correct
implementation would have failed for a seed picked at random (each test makes 1-2 comparisons).
The power checks show that the same tests reject clearly non-uniform or dependent data.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("cryptography")

from aggkit.secure.crypto import MaskGenerator, mask_values
from aggkit.secure.messages import MaskedInputResponse
from tests.secure.protocol_helpers import drive_round

ALPHA = 1e-3


def masked_vector_of_client_0(x: np.ndarray, modulus: int, seed: int) -> np.ndarray:
    seen = {}

    def spy(stage, u, msg):
        if isinstance(msg, MaskedInputResponse) and u == 0:
            seen["y"] = msg.masked.astype(np.uint64)
        return msg

    drive_round(x, modulus=modulus, threshold=2, on_response=spy, seed=seed)
    return seen["y"]


def uniformity_pvalue(values: np.ndarray, bins: int, modulus: int) -> float:
    # Bin by the top bits (power-of-two moduli) or by value (small moduli): uniform either way.
    index = values if modulus == bins else values // np.uint64(modulus // bins)
    counts = np.bincount(index.astype(np.int64), minlength=bins)
    return stats.chisquare(counts).pvalue


@pytest.mark.parametrize(("modulus", "bins"), [(2**8, 256), (2**32, 256), (22, 22), (2**64, 64)])
def test_masked_vector_is_uniform_for_a_constant_input(modulus, bins):
    m = 20_000
    x = np.zeros((3, m), np.uint64)
    x[0] = modulus - 1  # the most structured input: one constant value
    y = masked_vector_of_client_0(x, modulus, seed=11)
    assert uniformity_pvalue(y, bins, modulus) > ALPHA
    # Power: the same test rejects the input itself, and a vector that never hits one bin.
    assert uniformity_pvalue(x[0], bins, modulus) < ALPHA
    bad = y[y // np.uint64(max(modulus // bins, 1)) % np.uint64(bins) != 0]
    assert uniformity_pvalue(bad, bins, modulus) < ALPHA


def test_masked_vector_is_independent_of_the_input():
    modulus, m = 16, 40_000
    rng = np.random.default_rng(5)
    x = rng.integers(0, modulus, size=(3, m), dtype=np.uint64)
    y = masked_vector_of_client_0(x, modulus, seed=12)
    table = np.zeros((modulus, modulus), np.int64)
    np.add.at(table, (x[0].astype(np.int64), y.astype(np.int64)), 1)
    assert stats.chi2_contingency(table).pvalue > ALPHA
    # Power: a weak mask (only the low bit random) leaves y dependent on x.
    weak = (x[0] + rng.integers(0, 2, size=m, dtype=np.uint64)) % modulus
    table[:] = 0
    np.add.at(table, (x[0].astype(np.int64), weak.astype(np.int64)), 1)
    assert stats.chi2_contingency(table).pvalue < ALPHA


@pytest.mark.parametrize("modulus", [2**4, 2**32, 3, 22, 1000, 2**31 + 1, 2**64 - 59, 2**40])
def test_mask_generator_is_uniform(modulus):
    values = mask_values(bytes(range(32)), modulus, 30_000)
    assert values.max() < modulus
    bins = min(modulus, 32)
    # Equal-probability bins: floor(v * bins / modulus), exact in Python ints.
    index = np.array([int(v) * bins // modulus for v in values])
    counts = np.bincount(index, minlength=bins)
    expected = (
        np.array([(-(-(b + 1) * modulus // bins)) - (-(-b * modulus // bins)) for b in range(bins)])
        / modulus
        * values.size
    )
    assert stats.chisquare(counts, expected).pvalue > ALPHA


def test_masks_from_different_seeds_are_uncorrelated_and_reproducible():
    a = mask_values(b"a" * 32, 2**16, 10_000).astype(np.float64)
    b = mask_values(b"b" * 32, 2**16, 10_000).astype(np.float64)
    # |r| of independent uniform vectors: sd 1/sqrt(n) = 0.01; 4.5 sd is p ~ 7e-6.
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.045
    np.testing.assert_array_equal(mask_values(b"a" * 32, 2**16, 10_000), a.astype(np.uint32))


def test_mask_prefix_does_not_depend_on_length_or_chunking():
    long = mask_values(b"s" * 32, 22, 100_000)
    short = mask_values(b"s" * 32, 22, 777)
    np.testing.assert_array_equal(long[:777], short)
    acc = np.zeros(5, np.uint32)
    MaskGenerator(22).apply(acc, b"s" * 32)
    np.testing.assert_array_equal(acc, long[:5])
