"""Shamir t-of-n sharing over GF(2**31 - 1): round trips, thresholds, integrity, secrecy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

pytest.importorskip("cryptography")

from aggkit.secure import shamir
from aggkit.secure.crypto import DeterministicRandom
from aggkit.secure.errors import InsufficientSharesError, ShareIntegrityError


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic below 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_a_chunk():
    assert is_prime(shamir.PRIME)
    assert 1 << shamir.CHUNK_BITS < shamir.PRIME
    assert shamir.share_size(32) == 36


@given(
    st.binary(min_size=1, max_size=70),
    st.integers(1, 9),
    st.data(),
)
def test_any_threshold_subset_recovers_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, shamir.PRIME - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, xs, t, DeterministicRandom(len(secret), n, t))
    subset = data.draw(st.lists(st.sampled_from(range(n)), min_size=t, max_size=n, unique=True))
    assert shamir.combine({xs[i]: shares[i] for i in subset}, t, len(secret)) == secret


def test_all_subsets_small_case_and_split_many():
    seed, key = bytes(range(32)), bytes(range(32, 64))
    xs = [3, 5, 8, 13, 21]
    both = shamir.split_many([seed, key], xs, 3)
    for subset in itertools.combinations(range(5), 3):
        assert shamir.combine({xs[i]: both[i][0] for i in subset}, 3) == seed
        assert shamir.combine({xs[i]: both[i][1] for i in subset}, 3) == key


def test_too_few_shares_fail():
    shares = shamir.split(b"s" * 32, [1, 2, 3, 4], 3)
    with pytest.raises(InsufficientSharesError):
        shamir.combine({1: shares[0], 2: shares[1]}, 3)


def test_fewer_shares_than_threshold_interpolate_to_garbage():
    secret = b"s" * 32
    shares = shamir.split(secret, [1, 2, 3, 4], 3)
    # Pretending the threshold is 2 gives a wrong value (or an invalid one), never the secret.
    try:
        assert shamir.combine({1: shares[0], 2: shares[1]}, 2) != secret
    except ShareIntegrityError:
        pass


def test_threshold_one_shares_are_the_secret_chunks():
    shares = shamir.split(b"k" * 32, [1, 2, 3], 1)
    assert shares[0] == shares[1] == shares[2]


def test_tampered_extra_share_is_detected():
    xs = [1, 2, 3, 4, 5]
    shares = shamir.split(b"z" * 32, xs, 3)
    for victim in range(5):
        bad = dict(zip(xs, shares, strict=True))
        raw = bytearray(bad[xs[victim]])
        raw[7] ^= 0x10
        bad[xs[victim]] = bytes(raw)
        with pytest.raises(ShareIntegrityError):
            shamir.combine(bad, 3)


def test_malformed_shares_are_rejected():
    shares = shamir.split(b"z" * 32, [1, 2], 2)
    with pytest.raises(ShareIntegrityError, match="bytes"):
        shamir.combine({1: shares[0], 2: shares[1][:-1]}, 2)
    with pytest.raises(ShareIntegrityError, match="field"):
        shamir.combine({1: shares[0], 2: b"\xff" * 36}, 2)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: shamir.split(b"s", [1, 1], 1), ValueError),
        (lambda: shamir.split(b"s", [0, 1], 1), ValueError),
        (lambda: shamir.split(b"s", [1, shamir.PRIME], 1), ValueError),
        (lambda: shamir.split(b"s", [1, 2], 3), ValueError),
        (lambda: shamir.split(b"s", [1, 2], 0), ValueError),
        (lambda: shamir.split(b"", [1, 2], 1), TypeError),
        (lambda: shamir.split("s", [1, 2], 1), TypeError),
        (lambda: shamir.split(b"s", [1.0, 2], 1), TypeError),
    ],
)
def test_bad_arguments(call, error):
    with pytest.raises(error):
        call()


def test_one_share_below_threshold_is_uniform_whatever_the_secret():
    # t = 2: a single share is secret + c * x with c uniform, so it is uniform for any secret.
    # 4,000 sharings of two very different secrets; the top 4 bits of a share's first chunk.
    def first_chunks(secret, seed):
        rand = DeterministicRandom(seed)
        vals = [shamir.split(secret, [1, 2], 2, rand)[0][:4] for _ in range(4000)]
        return np.array([int.from_bytes(v, "big") >> 27 for v in vals])

    for secret in (bytes(32), b"\xff" * 32):
        counts = np.bincount(first_chunks(secret, secret[0]), minlength=16)
        # Top bin [15 * 2**27, PRIME) is one value short of the others: negligible.
        assert stats.chisquare(counts).pvalue > 1e-3


def test_large_sharing_matches_python_int_polynomials():
    # The float64-limb evaluation must be exact: compare with Python ints at 300 holders.
    rand = DeterministicRandom(9)
    xs = list(range(1, 301))
    secret = bytes(range(100, 132))
    shares = shamir.split(secret, xs, 200, rand)
    assert shamir.combine({x: shares[x - 1] for x in xs[100:]}, 200) == secret
    assert shamir.combine(dict(zip(xs, shares, strict=True)), 200) == secret  # all consistent
