"""The primitives: key agreement, derivation, authenticated encryption, seeded randomness."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("cryptography")

from aggkit.secure import crypto
from aggkit.secure.errors import AuthenticationError


def test_key_agreement_is_symmetric_and_keys_are_domain_separated():
    a_sk, a_pk = crypto.generate_keypair(os.urandom)
    b_sk, b_pk = crypto.generate_keypair(os.urandom)
    shared = crypto.agree(a_sk, b_pk)
    assert shared == crypto.agree(b_sk, a_pk)
    session = bytes(16)
    k1 = crypto.derive_key(shared, session, b"mask", 1, 2)
    assert k1 == crypto.derive_key(shared, session, b"mask", 2, 1)
    assert k1 != crypto.derive_key(shared, session, b"channel", 1, 2)
    assert k1 != crypto.derive_key(shared, b"\1" * 16, b"mask", 1, 2)
    assert k1 != crypto.derive_key(shared, session, b"mask", 1, 3)


def test_low_order_public_key_is_rejected():
    sk, _ = crypto.generate_keypair(os.urandom)
    with pytest.raises(AuthenticationError):
        crypto.agree(sk, bytes(32))


def test_seal_binds_session_and_direction():
    key, session = os.urandom(32), os.urandom(16)
    ct = crypto.seal(key, session, 3, 4, b"shares")
    assert len(ct) == len(b"shares") + crypto.SEAL_OVERHEAD
    assert crypto.unseal(key, session, 3, 4, ct) == b"shares"
    for args in [
        (key, session, 4, 3, ct),
        (key, os.urandom(16), 3, 4, ct),
        (os.urandom(32), session, 3, 4, ct),
        (key, session, 3, 4, ct[:-1] + bytes([ct[-1] ^ 1])),  # a changed tag byte
    ]:
        with pytest.raises(AuthenticationError):
            crypto.unseal(*args)


def test_deterministic_random_streams():
    a = crypto.DeterministicRandom(1, "client", 2)
    b = crypto.DeterministicRandom(1, "client", 2)
    assert a(10) + a(5) == b(15)
    assert crypto.DeterministicRandom(1, "client", 3)(16) != crypto.DeterministicRandom(
        1, "client", 2
    )(16)
    assert crypto.DeterministicRandom(1, "2")(16) != crypto.DeterministicRandom(1, 2)(16)
    with pytest.raises(TypeError):
        crypto.DeterministicRandom(1.5)


def test_word_dtype_and_mask_generator_checks():
    assert crypto.word_dtype(2**32) == np.uint32
    assert crypto.word_dtype(2**32 + 1) == np.uint64
    with pytest.raises(ValueError):
        crypto.word_dtype(1)
    with pytest.raises(TypeError):
        crypto.word_dtype(8.0)
    gen = crypto.MaskGenerator(2**16)
    with pytest.raises(TypeError):
        gen.apply(np.zeros(4, np.uint64), bytes(32))
    with pytest.raises(ValueError):
        gen.apply(np.zeros(4, np.uint32), bytes(16))
    assert gen.apply(np.zeros(0, np.uint32), bytes(32)).size == 0


def test_masks_span_several_keystream_chunks_consistently():
    # Longer than one 64 KiB chunk: apply then subtract must cancel exactly, for both paths.
    for modulus in (2**32, 2**64, 1000, 2**40 + 3):
        gen = crypto.MaskGenerator(modulus)
        acc = (np.arange(40_000, dtype=np.uint64) % np.uint64(min(modulus, 2**63))).astype(
            gen.dtype
        )
        before = acc.copy()
        gen.apply(acc, b"q" * 32)
        assert not np.array_equal(acc, before)
        gen.apply(acc, b"q" * 32, subtract=True)
        np.testing.assert_array_equal(acc, before)


def test_apply_many_equals_one_mask_at_a_time():
    rng = np.random.default_rng(8)
    for modulus in (2**32, 2**16, 2**64, 999):
        masks = [(rng.bytes(32), bool(rng.integers(2))) for _ in range(300)]  # > one batch
        gen = crypto.MaskGenerator(modulus)
        one_by_one = np.zeros(70_000 if modulus == 2**32 else 3_000, gen.dtype)
        together = one_by_one.copy()
        for seed, subtract in masks:
            gen.apply(one_by_one, seed, subtract)
        gen.apply_many(together, masks)
        np.testing.assert_array_equal(together, one_by_one)
