"""The cryptographic primitives of the secure aggregation protocol (``cryptography`` package).

- Key agreement: X25519 (:func:`generate_keypair`, :func:`agree`). Private keys travel as their
  32 raw bytes because the protocol Shamir-shares them.
- Key derivation: HKDF-SHA256 (:func:`derive_key`), salted with the round's session id and bound
  to a purpose and to the unordered pair of client ids, so every derived key is used for exactly
  one job in exactly one round.
- Authenticated encryption of the Shamir shares: AES-256-GCM (:func:`seal`, :func:`unseal`), with
  the (sender, receiver) pair as nonce and the session id and both ids as associated data. Each
  pair key encrypts exactly two messages (one per direction), so nonces never repeat.
- Commitments: SHA-256 of a self-mask seed (:func:`commit`), checked after reconstruction.
- Mask generator: the AES-256-CTR keystream of a 256-bit seed (:class:`MaskGenerator`),
  expanded into integers that are exactly uniform on ``[0, R)`` (modulo the PRG assumption): for
  ``R = 2**b`` the low ``b`` bits of each 32- or 64-bit word, otherwise rejection sampling
  (``aggkit/kernels/masking.py``). AES-CTR rather than ChaCha20 because CPUs with AES
  instructions generate its keystream faster (``docs/benchmarks-history.md``, "Masking").
- Seeded randomness for reproducible simulations: :class:`DeterministicRandom` (a ChaCha20
  keystream). Real deployments use ``os.urandom`` (the default everywhere).

Only this module (and the protocol modules that import it) imports ``cryptography``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aggkit import kernels
from aggkit.secure.errors import AuthenticationError
from aggkit.secure.messages import word_dtype  # re-exported: the dtype of a round's vectors

__all__ = [
    "CHUNK_BYTES",
    "KEY_SIZE",
    "LABEL",
    "SEAL_OVERHEAD",
    "DeterministicRandom",
    "MaskGenerator",
    "agree",
    "commit",
    "derive_key",
    "generate_keypair",
    "load_private_key",
    "mask_values",
    "public_key_of",
    "seal",
    "share_digest",
    "unseal",
    "word_dtype",
]

#: Domain-separation label of this protocol version, mixed into every derivation.
LABEL = b"aggkit-secagg-v1"
#: Size of private keys, public keys, seeds and derived keys, in bytes.
KEY_SIZE = 32
#: Bytes :func:`seal` adds to a plaintext (the GCM tag).
SEAL_OVERHEAD = 16

#: Bytes of keystream generated per call when masking: large enough to amortize the per-call
#: overhead, small enough that the keystream buffer and its slice of the accumulator stay in L2
#: (``docs/benchmarks-history.md``, "Masking").
CHUNK_BYTES = 1 << 17
#: Keystreams open at once in :meth:`MaskGenerator.apply_many`.
_STREAMS_AT_ONCE = 256


def generate_keypair(randbytes) -> tuple[bytes, bytes]:
    """A fresh X25519 key pair ``(private, public)`` as raw 32-byte strings.

    Parameters
    ----------
    randbytes : callable
        ``randbytes(n) -> bytes``, e.g. ``os.urandom``.

    Examples
    --------
    >>> import os
    >>> private, public = generate_keypair(os.urandom)
    >>> public == public_key_of(private)
    True
    """
    private = bytes(randbytes(KEY_SIZE))
    return private, public_key_of(private)


def load_private_key(private: bytes) -> X25519PrivateKey:
    """The X25519 key object for raw private-key bytes."""
    return X25519PrivateKey.from_private_bytes(private)


def public_key_of(private: bytes) -> bytes:
    """The X25519 public key of a raw 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """X25519 shared secret; :class:`AuthenticationError` for an invalid (low-order) public key.

    ``private`` may be a loaded key (:func:`load_private_key`): loading costs as much as an
    exchange, so a party that agrees with many peers loads its key once.
    """
    if not isinstance(private, X25519PrivateKey):
        private = load_private_key(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as error:
        raise AuthenticationError(f"key agreement failed: {error}") from None


def derive_key(shared: bytes, session_id: bytes, purpose: bytes, a: int, b: int) -> bytes:
    """HKDF-SHA256 key for ``purpose`` between clients ``a`` and ``b`` (symmetric in a, b)."""
    low, high = min(a, b), max(a, b)
    info = LABEL + b"|" + purpose + struct.pack(">II", low, high)
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=session_id, info=info).derive(shared)


def _nonce_and_aad(session_id: bytes, sender: int, receiver: int) -> tuple[bytes, bytes]:
    ids = struct.pack(">II", sender, receiver)
    return b"\0\0\0\0" + ids, LABEL + session_id + ids


def seal(key: bytes, session_id: bytes, sender: int, receiver: int, plaintext: bytes) -> bytes:
    """AES-256-GCM encryption of ``plaintext`` from ``sender`` to ``receiver`` in this session."""
    nonce, aad = _nonce_and_aad(session_id, sender, receiver)
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, session_id: bytes, sender: int, receiver: int, ciphertext: bytes) -> bytes:
    """Decrypt a :func:`seal` ciphertext; :class:`AuthenticationError` if it was forged."""
    nonce, aad = _nonce_and_aad(session_id, sender, receiver)
    try:
        return AESGCM(key).decrypt(nonce, bytes(ciphertext), aad)
    except InvalidTag:
        raise AuthenticationError(
            f"ciphertext from client {sender} to client {receiver} failed authentication"
        ) from None


def commit(session_id: bytes, owner: int, secret: bytes) -> bytes:
    """SHA-256 commitment to ``owner``'s secret in this session."""
    return hashlib.sha256(
        LABEL + b"|commit" + session_id + struct.pack(">I", owner) + secret
    ).digest()


def share_digest(session_id: bytes, owner: int, holder: int, kind: bytes, share: bytes) -> bytes:
    """SHA-256 commitment to the share of ``owner``'s secret (``kind``) held by ``holder``.

    The owner publishes it at ``share_keys``; the server checks each revealed share against it, so
    a bad share is pinned on the holder that returned it. It reveals no more than the seed
    commitment (:func:`commit`): given fewer than ``threshold`` shares, a share is a bijective
    function of the 256-bit secret.
    """
    return hashlib.sha256(
        LABEL + b"|share|" + kind + session_id + struct.pack(">II", owner, holder) + share
    ).digest()


class MaskGenerator:
    """Adds or subtracts the mask ``PRG(seed)``, uniform on ``[0, modulus)``, into accumulators.

    Holds the keystream buffers, so one generator serves many masks of one round without
    allocating.

    Parameters
    ----------
    modulus : int
        ``R``, with ``2 <= R <= 2**64``. Accumulators are ``word_dtype(R)`` vectors.

    Examples
    --------
    >>> gen = MaskGenerator(2**16)
    >>> acc = np.zeros(4, np.uint32)
    >>> _ = gen.apply(acc, bytes(32))
    >>> _ = gen.apply(acc, bytes(32), subtract=True)
    >>> acc
    array([0, 0, 0, 0], dtype=uint32)
    """

    def __init__(self, modulus: int):
        self.dtype = word_dtype(modulus)
        self.modulus = int(modulus)
        self.power_of_two = self.modulus & (self.modulus - 1) == 0
        self._words = CHUNK_BYTES // self.dtype.itemsize
        self._zeros = bytes(CHUNK_BYTES)
        self._out = bytearray(CHUNK_BYTES + 16)  # update_into wants block_size - 1 spare bytes
        self._view = np.frombuffer(self._out, self.dtype, count=self._words)
        self._kernels = kernels.masking

    def apply(self, acc: np.ndarray, seed: bytes, subtract: bool = False) -> np.ndarray:
        """``acc = (acc +/- PRG(seed)) mod modulus``, in place; ``acc`` holds values < modulus."""
        return self.apply_many(acc, [(seed, subtract)])

    def apply_many(self, acc: np.ndarray, masks: Iterable[tuple[bytes, bool]]) -> np.ndarray:
        """Add (``False``) or subtract (``True``) the mask of every ``(seed, subtract)``, in place.

        Same result as calling :meth:`apply` for each, in any order. For power-of-two moduli
        the work is chunk-major: each 128 KiB slice of ``acc`` takes the keystream of every mask
        while it is in cache, a little faster than applying the masks one by one.
        """
        if acc.dtype != self.dtype or acc.ndim != 1:
            raise TypeError(f"acc must be a 1-D {self.dtype} array, got {acc.ndim}-D {acc.dtype}")
        masks = list(masks)
        for seed, _ in masks:
            if len(seed) != KEY_SIZE:
                raise ValueError(f"seed must be {KEY_SIZE} bytes, got {len(seed)}")
        n = acc.shape[0]
        if n == 0 or not masks:
            return acc
        if not self.power_of_two:
            for seed, subtract in masks:
                stream = _keystream(seed)
                pos = 0
                while pos < n:
                    stream.update_into(self._zeros, self._out)
                    pos = self._kernels.add_words_rejection(
                        acc, pos, self._view, self.modulus, subtract
                    )
            return acc
        kernel = self._kernels._add_words_pow2
        mask = np.uint64(self.modulus - 1)
        full = self.modulus == 1 << (8 * self.dtype.itemsize)
        zeros = memoryview(self._zeros)
        size = self.dtype.itemsize
        # Open streams in batches: a cipher context is small, but thousands at once are not needed.
        for first in range(0, len(masks), _STREAMS_AT_ONCE):
            streams = [
                (_keystream(seed), bool(sub)) for seed, sub in masks[first:][:_STREAMS_AT_ONCE]
            ]
            for start in range(0, n, self._words):
                count = min(self._words, n - start)
                block = acc[start : start + count]
                data = zeros[: count * size]
                for stream, subtract in streams:
                    stream.update_into(data, self._out)
                    kernel(block, self._view, mask, subtract, full)
        return acc


def _keystream(seed: bytes):
    """The AES-256-CTR keystream of ``seed`` (counter block 0), as an encryptor of zeros."""
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(16))).encryptor()


def mask_values(seed: bytes, modulus: int, length: int) -> np.ndarray:
    """The mask ``PRG(seed)`` itself: ``length`` integers uniform on ``[0, modulus)``.

    Examples
    --------
    >>> bool(mask_values(bytes(32), 10, 5).max() < 10)
    True
    """
    acc = np.zeros(length, word_dtype(modulus))
    return MaskGenerator(modulus).apply(acc, seed)


class DeterministicRandom:
    """A seeded ``randbytes(n)``: the ChaCha20 keystream keyed by SHA-256 of the seed and labels.

    For reproducible simulations and tests only; real clients and servers use ``os.urandom``.

    Parameters
    ----------
    seed : int or bytes
        The seed.
    *labels : int or str or bytes
        Separate independent streams from one seed (e.g. ``"client", 7``).

    Examples
    --------
    >>> DeterministicRandom(0, "client", 1)(4) == DeterministicRandom(0, "client", 1)(4)
    True
    """

    def __init__(self, seed: int | bytes, *labels: int | str | bytes):
        digest = hashlib.sha256(LABEL + b"|drbg")
        for part in (seed, *labels):
            if isinstance(part, bool) or not isinstance(part, int | str | bytes | np.integer):
                raise TypeError(f"seed and labels must be int, str or bytes, got {part!r}")
            if isinstance(part, str):
                raw = b"s" + part.encode()
            elif isinstance(part, bytes):
                raw = b"b" + part
            else:
                raw = b"i" + str(int(part)).encode()
            digest.update(struct.pack(">I", len(raw)) + raw)
        key = digest.digest()
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._stream.update(bytes(n))
