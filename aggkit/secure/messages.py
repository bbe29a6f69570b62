"""The messages of the secure aggregation protocol, as plain data that round-trips through bytes.

Any transport (the in-process loop of ``simulation.py``, Flower, gRPC, a message queue) carries
``message.to_bytes()`` and rebuilds the message with :func:`decode`. There are five stages, each
one server request to every client still in the round and one response per client (the
honest-but-curious mode skips ``consistency_check``: :func:`aggkit.secure.protocol.round_stages`):

=====================  ================================  =================================
stage                  server -> client                  client -> server
=====================  ================================  =================================
``advertise_keys``     :class:`AdvertiseKeysRequest`     :class:`AdvertiseKeysResponse`
``share_keys``         :class:`ShareKeysRequest`         :class:`ShareKeysResponse`
``masked_input``       :class:`MaskedInputRequest`       :class:`MaskedInputResponse`
``consistency_check``  :class:`ConsistencyCheckRequest`  :class:`ConsistencyCheckResponse`
``unmask``             :class:`UnmaskRequest`            :class:`UnmaskResponse`
=====================  ================================  =================================

Every response, and the forwarded :class:`PeerKeys`, carries a ``signature`` field: a 64-byte
Ed25519 signature in the authenticated mode (``aggkit.secure.identity``), empty in the
honest-but-curious mode. A response's signature covers :meth:`Message.signed_bytes`, its wire
form with the signature left empty, so it binds every field, the session and the sender.

Wire format (version 3): ``b"AKSA"``, a version byte, a kind byte, then the fields in declaration
order, big-endian: ids and counts as ``uint32``, sizes as ``uint64``, fixed-size keys raw,
variable byte strings (signatures included) prefixed by their ``uint32`` length. A masked input
is written as its signature, its modulus ``R`` (as ``R - 1``, ``uint64``), a word-size byte
``w``, a ``uint64`` byte length and the words, last: each word little-endian in exactly
``w = ceil(log2(R) / 8)`` bytes (:func:`word_bytes`: 5 bytes for ``R = 2**37``, 4 for
``R <= 2**32``), so that a word carries no byte it cannot use. Version 2 sent every word in 4 or
8 bytes (37-bit words took 8); version 3 refuses version-2 bytes by their version byte.

Decoding rejects a wrong magic, an unknown version or kind, truncated or trailing bytes and every
field that fails validation, with :class:`~aggkit.secure.errors.MessageFormatError`. For a masked
input that means a word size outside 1..8 or other than ``word_bytes(R)``, a byte length that is
not a multiple of it, and any word ``>= R`` (the high bits of a packed word set): the message
carries its modulus so that decoding is the one place that checks the words' range (the server
then only checks that the modulus is its round's). The same checks run when a message is built
in Python (``ValueError`` / ``TypeError``), so an invalid message cannot be sent, and a word
cannot be packed into fewer bytes than it needs and silently wrap.

This module does not import ``cryptography``.

Examples
--------
>>> msg = UnmaskRequest(session_id=bytes(16), client_id=3, survivors=(1, 3), dropped=(2,))
>>> decode(msg.to_bytes()) == msg
True
>>> words = np.array([0, 5, 2**37 - 1], np.uint64)
>>> msg = MaskedInputResponse(bytes(16), 3, words, modulus=2**37)  # 5 bytes a word on the wire
>>> decode(msg.to_bytes()).masked.tolist() == words.tolist()
True
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from aggkit import _checks
from aggkit.secure.errors import MessageFormatError

__all__ = [
    "MAGIC",
    "MAX_CLIENT_ID",
    "SESSION_ID_SIZE",
    "STAGES",
    "VERSION",
    "AdvertiseKeysRequest",
    "AdvertiseKeysResponse",
    "ConsistencyCheckRequest",
    "ConsistencyCheckResponse",
    "MaskedInputRequest",
    "MaskedInputResponse",
    "Message",
    "PeerKeys",
    "ShareKeysRequest",
    "ShareKeysResponse",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
    "fields",
    "word_bytes",
    "word_dtype",
]

MAGIC = b"AKSA"
VERSION = 3
#: The five stages, in protocol order (the honest-but-curious mode runs all but
#: ``consistency_check``).
STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")
SESSION_ID_SIZE = 16
#: Largest client id: Shamir evaluates shares at ``id + 1``, which must stay below ``2**31 - 1``.
MAX_CLIENT_ID = (1 << 31) - 3
_KEY = 32
_SIGNATURE = 64


# --------------------------------------------------------------------------- words modulo R


def _modulus(modulus: object) -> int:
    if not isinstance(modulus, int | np.integer) or isinstance(modulus, bool):
        raise TypeError(f"modulus must be an int, got {type(modulus).__name__}")
    if not 2 <= modulus <= 1 << 64:
        raise ValueError(f"modulus must be in [2, 2**64], got {modulus}")
    return int(modulus)


def word_dtype(modulus: int) -> np.dtype:
    """``uint32`` for ``modulus <= 2**32``, else ``uint64`` (``modulus <= 2**64``): the dtype of
    the vectors of a round modulo ``modulus``.

    >>> word_dtype(2**32), word_dtype(2**37)
    (dtype('uint32'), dtype('uint64'))
    """
    return np.dtype(np.uint32) if _modulus(modulus) <= 1 << 32 else np.dtype(np.uint64)


def word_bytes(modulus: int) -> int:
    """Bytes per masked word on the wire: the fewest that hold ``modulus - 1``, 1 to 8.

    >>> word_bytes(2**32), word_bytes(2**37), word_bytes(2**37 + 1), word_bytes(2**64)
    (4, 5, 5, 8)
    """
    return max(1, ((_modulus(modulus) - 1).bit_length() + 7) // 8)


def _pack(words: np.ndarray, size: int) -> bytes:
    """The low ``size`` bytes of each word, little-endian, as one byte string (NumPy views)."""
    little = np.ascontiguousarray(words, words.dtype.newbyteorder("<"))
    if size == little.dtype.itemsize:
        return little.tobytes()
    return little.view(np.uint8).reshape(-1, little.dtype.itemsize)[:, :size].tobytes()


def _unpack(data: memoryview, size: int, dtype: np.dtype) -> np.ndarray:
    """Words of ``size`` little-endian bytes into ``dtype`` (a view when no widening is needed)."""
    if size == dtype.itemsize:
        return np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype, copy=False)
    wide = np.zeros((len(data) // size, dtype.itemsize), np.uint8)
    wide[:, :size] = np.frombuffer(data, np.uint8).reshape(-1, size)
    return wide.view(dtype.newbyteorder("<")).reshape(-1).astype(dtype, copy=False)


# --------------------------------------------------------------------------- encoding helpers


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack(">I", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack(">Q", v))

    def raw(self, b: bytes) -> None:
        self.parts.append(bytes(b))

    def blob(self, b: bytes) -> None:
        self.u32(len(b))
        self.raw(b)

    def ids(self, ids: tuple[int, ...]) -> None:
        self.u32(len(ids))
        self.parts.append(struct.pack(f">{len(ids)}I", *ids))

    def pairs(self, pairs: tuple[tuple[int, bytes], ...]) -> None:
        self.u32(len(pairs))
        for i, b in pairs:
            self.u32(i)
            self.blob(b)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise MessageFormatError("message is truncated")
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def raw(self, n: int) -> bytes:
        return bytes(self.take(n))

    def blob(self) -> bytes:
        return self.raw(self.u32())

    def count(self, min_item_bytes: int) -> int:
        n = self.u32()
        if n * min_item_bytes > len(self.view) - self.pos:
            raise MessageFormatError("message is truncated")
        return n

    def ids(self) -> tuple[int, ...]:
        n = self.count(4)
        return struct.unpack(f">{n}I", self.take(4 * n))

    def pairs(self) -> tuple[tuple[int, bytes], ...]:
        n = self.count(8)
        return tuple((self.u32(), self.blob()) for _ in range(n))

    def done(self) -> None:
        if self.pos != len(self.view):
            raise MessageFormatError(
                f"{len(self.view) - self.pos} trailing bytes after the message"
            )


# --------------------------------------------------------------------------- validation helpers


def _check_session(value: object) -> None:
    if not isinstance(value, bytes) or len(value) != SESSION_ID_SIZE:
        raise ValueError(f"session_id must be {SESSION_ID_SIZE} bytes")


def _check_id(value: object, what: str = "client_id") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_CLIENT_ID:
        raise ValueError(f"{what} must be in [0, {MAX_CLIENT_ID}], got {value}")


def _check_key(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != _KEY:
        raise ValueError(f"{what} must be {_KEY} bytes")


def _check_signature(value: object) -> None:
    if not isinstance(value, bytes) or len(value) not in (0, _SIGNATURE):
        raise ValueError(f"signature must be empty or {_SIGNATURE} bytes")


def _check_ids(values: tuple[int, ...], what: str) -> None:
    for v in values:
        _check_id(v, what)
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat")


def _check_pairs(values: tuple[tuple[int, bytes], ...], what: str) -> None:
    for pair in values:
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[1], bytes):
            raise TypeError(f"{what} must be (client id, bytes) pairs")
        _check_id(pair[0], what)
    if len({p[0] for p in values}) != len(values):
        raise ValueError(f"{what}: a client id appears twice")


def _tuple_of_pairs(values) -> tuple[tuple[int, bytes], ...]:
    return tuple((int(i) if isinstance(i, np.integer) else i, bytes(b)) for i, b in values)


def _tuple_of_ids(values) -> tuple[int, ...]:
    return tuple(int(v) if isinstance(v, np.integer) else v for v in values)


# --------------------------------------------------------------------------- messages


class Message:
    """Base class: ``to_bytes()``, ``from_bytes()``, equality by encoded bytes."""

    KIND: ClassVar[int]
    STAGE: ClassVar[str]
    session_id: bytes
    client_id: int

    def to_bytes(self) -> bytes:
        """The wire form of this message."""
        w = _Writer()
        w.raw(MAGIC)
        w.u8(VERSION)
        w.u8(self.KIND)
        w.raw(self.session_id)
        w.u32(self.client_id)
        self._write(w)
        return b"".join(w.parts)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Message:
        """Parse ``data``; it must hold a message of this class."""
        msg = decode(data)
        if not isinstance(msg, cls):
            raise MessageFormatError(f"expected {cls.__name__}, got {type(msg).__name__}")
        return msg

    def _write(self, w: _Writer) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> Message:  # pragma: no cover
        raise NotImplementedError

    def signed_bytes(self) -> bytes:
        """The bytes a signature of this message covers: its wire form, signature left empty."""
        if getattr(self, "signature", b"") == b"":
            return self.to_bytes()
        return dataclasses.replace(self, signature=b"").to_bytes()  # type: ignore[type-var]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class AdvertiseKeysRequest(Message):
    """Server -> client: the round's parameters; asks for the client's two public keys.

    Attributes
    ----------
    session_id : bytes
        16 random bytes naming the round; every key derivation is salted with it.
    client_id : int
        The recipient.
    modulus : int
        ``R``: inputs, masks and the sum live in ``[0, R)``, ``2 <= R <= 2**64``.
    vector_length : int
        ``m``, the length of every input vector.
    threshold : int
        ``t``: shares needed to reconstruct a client's secrets.
    """

    KIND: ClassVar[int] = 1
    STAGE: ClassVar[str] = "advertise_keys"
    session_id: bytes
    client_id: int
    modulus: int
    vector_length: int
    threshold: int

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        for name in ("modulus", "vector_length", "threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 2 <= self.modulus <= 1 << 64:
            raise ValueError(f"modulus must be in [2, 2**64], got {self.modulus}")
        if not 0 <= self.vector_length < 1 << 60:
            raise ValueError(f"vector_length must be in [0, 2**60), got {self.vector_length}")
        if not 1 <= self.threshold <= MAX_CLIENT_ID + 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")

    def _write(self, w: _Writer) -> None:
        w.u64(self.modulus - 1)
        w.u64(self.vector_length)
        w.u32(self.threshold)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> AdvertiseKeysRequest:
        return cls(session_id, client_id, r.u64() + 1, r.u64(), r.u32())


@dataclass(frozen=True, eq=False)
class AdvertiseKeysResponse(Message):
    """Client -> server: the client's X25519 public keys.

    Attributes
    ----------
    encryption_key : bytes
        ``c_u^PK``, for the channel that carries Shamir shares between clients.
    mask_key : bytes
        ``s_u^PK``, for the pairwise masks.
    signature : bytes
        Authenticated mode: the client's signature of its keys *and the round's parameters*
        (see ``aggkit.secure.protocol``), which the server forwards to the neighbours.
    """

    KIND: ClassVar[int] = 2
    STAGE: ClassVar[str] = "advertise_keys"
    session_id: bytes
    client_id: int
    encryption_key: bytes
    mask_key: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        _check_key(self.encryption_key, "encryption_key")
        _check_key(self.mask_key, "mask_key")
        _check_signature(self.signature)

    def _write(self, w: _Writer) -> None:
        w.raw(self.encryption_key)
        w.raw(self.mask_key)
        w.blob(self.signature)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> AdvertiseKeysResponse:
        return cls(session_id, client_id, r.raw(_KEY), r.raw(_KEY), r.blob())


@dataclass(frozen=True)
class PeerKeys:
    """One client's public keys (and, authenticated, its signature) as the server forwards them."""

    client_id: int
    encryption_key: bytes
    mask_key: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_id(self.client_id)
        _check_key(self.encryption_key, "encryption_key")
        _check_key(self.mask_key, "mask_key")
        _check_signature(self.signature)


@dataclass(frozen=True, eq=False)
class ShareKeysRequest(Message):
    """Server -> client: the public keys of the client's neighbours *and its own* (echoed).

    Attributes
    ----------
    peers : tuple of PeerKeys
        Every member of the client's closed neighbourhood that advertised keys, the client
        included, with distinct ids.
    """

    KIND: ClassVar[int] = 3
    STAGE: ClassVar[str] = "share_keys"
    session_id: bytes
    client_id: int
    peers: tuple[PeerKeys, ...]

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        object.__setattr__(self, "peers", tuple(self.peers))
        if any(not isinstance(p, PeerKeys) for p in self.peers):
            raise TypeError("peers must be PeerKeys")
        _check_ids(tuple(p.client_id for p in self.peers), "peers")

    def _write(self, w: _Writer) -> None:
        w.u32(len(self.peers))
        for p in self.peers:
            w.u32(p.client_id)
            w.raw(p.encryption_key)
            w.raw(p.mask_key)
            w.blob(p.signature)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> ShareKeysRequest:
        n = r.count(4 + 2 * _KEY + 4)
        peers = tuple(PeerKeys(r.u32(), r.raw(_KEY), r.raw(_KEY), r.blob()) for _ in range(n))
        return cls(session_id, client_id, peers)


@dataclass(frozen=True, eq=False)
class ShareKeysResponse(Message):
    """Client -> server: encrypted Shamir shares for each neighbour, and a seed commitment.

    Attributes
    ----------
    seed_commitment : bytes
        SHA-256 commitment to the self-mask seed ``b_u``; the server checks the reconstructed
        seed against it.
    ciphertexts : tuple of (int, bytes)
        ``(receiver, AEAD ciphertext of the receiver's shares of b_u and s_u^SK)``.
    share_commitments : tuple of (int, bytes)
        ``(holder, SHA-256 of the holder's seed share + SHA-256 of its key share)``, 64 bytes,
        for every holder (the client included): the server checks each revealed share against
        it and so knows which client sent a bad one.
    signature : bytes
        Authenticated mode: the client's signature of this message.
    """

    KIND: ClassVar[int] = 4
    STAGE: ClassVar[str] = "share_keys"
    session_id: bytes
    client_id: int
    seed_commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]
    share_commitments: tuple[tuple[int, bytes], ...] = ()
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        _check_key(self.seed_commitment, "seed_commitment")
        object.__setattr__(self, "ciphertexts", _tuple_of_pairs(self.ciphertexts))
        _check_pairs(self.ciphertexts, "ciphertexts")
        object.__setattr__(self, "share_commitments", _tuple_of_pairs(self.share_commitments))
        _check_pairs(self.share_commitments, "share_commitments")
        _check_signature(self.signature)

    def _write(self, w: _Writer) -> None:
        w.raw(self.seed_commitment)
        w.pairs(self.ciphertexts)
        w.pairs(self.share_commitments)
        w.blob(self.signature)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> ShareKeysResponse:
        return cls(session_id, client_id, r.raw(_KEY), r.pairs(), r.pairs(), r.blob())


@dataclass(frozen=True, eq=False)
class MaskedInputRequest(Message):
    """Server -> client: the ciphertexts addressed to this client, ``(sender, ciphertext)``.

    The senders are the neighbours still in the round; the client masks with exactly them.
    """

    KIND: ClassVar[int] = 5
    STAGE: ClassVar[str] = "masked_input"
    session_id: bytes
    client_id: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        object.__setattr__(self, "ciphertexts", _tuple_of_pairs(self.ciphertexts))
        _check_pairs(self.ciphertexts, "ciphertexts")

    def _write(self, w: _Writer) -> None:
        w.pairs(self.ciphertexts)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> MaskedInputRequest:
        return cls(session_id, client_id, r.pairs())


@dataclass(frozen=True, eq=False)
class MaskedInputResponse(Message):
    """Client -> server: the masked vector ``y_u``, words in ``[0, modulus)``.

    ``masked`` is ``word_dtype(modulus)``: ``uint32`` for ``modulus <= 2**32``, else ``uint64``;
    ``modulus`` defaults to the dtype's full range (``2**32`` or ``2**64``). On the wire each word
    takes :func:`word_bytes` ``(modulus)`` bytes. Decoding returns a read-only view of the
    received bytes when the words fill their dtype (``word_bytes == itemsize``), else a new array.
    ``signature``: authenticated mode, the client's signature of this message (masked vector and
    modulus included).
    """

    KIND: ClassVar[int] = 6
    STAGE: ClassVar[str] = "masked_input"
    session_id: bytes
    client_id: int
    masked: np.ndarray
    modulus: int | None = None
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        m = self.masked
        if not isinstance(m, np.ndarray) or m.ndim != 1 or m.dtype not in (np.uint32, np.uint64):
            raise TypeError("masked must be a 1-D uint32 or uint64 array")
        full = 1 << (8 * m.dtype.itemsize)
        modulus = full if self.modulus is None else _modulus(self.modulus)
        object.__setattr__(self, "modulus", modulus)
        if m.dtype != word_dtype(modulus):
            raise TypeError(f"masked must be {word_dtype(modulus)} for modulus {modulus}")
        if modulus < full:
            _checks.residues(m, modulus, "masked")
        _check_signature(self.signature)

    def _write(self, w: _Writer) -> None:
        size = word_bytes(self.modulus)
        w.blob(self.signature)
        w.u64(self.modulus - 1)
        w.u8(size)
        w.u64(self.masked.shape[0] * size)
        w.raw(_pack(self.masked, size))

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> MaskedInputResponse:
        signature = r.blob()
        modulus = r.u64() + 1
        size = r.u8()
        if not 1 <= size <= 8:
            raise MessageFormatError(f"masked: word size must be 1 to 8 bytes, got {size}")
        if size != word_bytes(modulus):
            raise MessageFormatError(
                f"masked: word size must be {word_bytes(modulus)} bytes for modulus {modulus}, "
                f"got {size}"
            )
        length = r.u64()
        if length % size:
            raise MessageFormatError(
                f"masked: {length} bytes is not a whole number of {size}-byte words"
            )
        if length > len(r.view) - r.pos:
            raise MessageFormatError("message is truncated")
        words = _unpack(r.take(length), size, word_dtype(modulus))
        return cls(session_id, client_id, words, modulus, signature)


@dataclass(frozen=True, eq=False)
class ConsistencyCheckRequest(Message):
    """Server -> client: the set ``U3`` of clients whose masked input arrived (all of them).

    Authenticated mode: the client signs this set; it reveals shares only if at least
    ``threshold`` of its neighbours signed the *same* set (Bonawitz et al.'s ConsistencyCheck).
    """

    KIND: ClassVar[int] = 9
    STAGE: ClassVar[str] = "consistency_check"
    session_id: bytes
    client_id: int
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        object.__setattr__(self, "survivors", _tuple_of_ids(self.survivors))
        _check_ids(self.survivors, "survivors")

    def _write(self, w: _Writer) -> None:
        w.ids(self.survivors)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> ConsistencyCheckRequest:
        return cls(session_id, client_id, r.ids())


@dataclass(frozen=True, eq=False)
class ConsistencyCheckResponse(Message):
    """Client -> server: the client's signature of the survivor set (empty: honest-but-curious)."""

    KIND: ClassVar[int] = 10
    STAGE: ClassVar[str] = "consistency_check"
    session_id: bytes
    client_id: int
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        _check_signature(self.signature)

    def _write(self, w: _Writer) -> None:
        w.blob(self.signature)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> ConsistencyCheckResponse:
        return cls(session_id, client_id, r.blob())


@dataclass(frozen=True, eq=False)
class UnmaskRequest(Message):
    """Server -> client: whose self-mask seed shares and whose mask-key shares to reveal.

    Attributes
    ----------
    survivors : tuple of int
        Neighbours (and the client itself) whose masked input arrived: reveal shares of ``b_v``.
    dropped : tuple of int
        Neighbours that shared keys but sent no masked input: reveal shares of ``s_v^SK``.
        An honest client refuses a request where the two overlap.
    signatures : tuple of (int, bytes)
        Authenticated mode: the consistency-check signatures of the client's neighbours over
        the survivor set, ``(signer, signature)``.
    """

    KIND: ClassVar[int] = 7
    STAGE: ClassVar[str] = "unmask"
    session_id: bytes
    client_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        object.__setattr__(self, "survivors", _tuple_of_ids(self.survivors))
        object.__setattr__(self, "dropped", _tuple_of_ids(self.dropped))
        _check_ids(self.survivors, "survivors")
        _check_ids(self.dropped, "dropped")
        object.__setattr__(self, "signatures", _tuple_of_pairs(self.signatures))
        _check_pairs(self.signatures, "signatures")

    def _write(self, w: _Writer) -> None:
        w.ids(self.survivors)
        w.ids(self.dropped)
        w.pairs(self.signatures)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> UnmaskRequest:
        return cls(session_id, client_id, r.ids(), r.ids(), r.pairs())


@dataclass(frozen=True, eq=False)
class UnmaskResponse(Message):
    """Client -> server: the requested shares, ``(owner, share)``.

    Attributes
    ----------
    seed_shares : tuple of (int, bytes)
        Shares of the self-mask seeds of the surviving owners.
    key_shares : tuple of (int, bytes)
        Shares of the mask private keys of the dropped owners.
    signature : bytes
        Authenticated mode: the client's signature of this message.
    """

    KIND: ClassVar[int] = 8
    STAGE: ClassVar[str] = "unmask"
    session_id: bytes
    client_id: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_session(self.session_id)
        _check_id(self.client_id)
        object.__setattr__(self, "seed_shares", _tuple_of_pairs(self.seed_shares))
        object.__setattr__(self, "key_shares", _tuple_of_pairs(self.key_shares))
        _check_pairs(self.seed_shares, "seed_shares")
        _check_pairs(self.key_shares, "key_shares")
        _check_signature(self.signature)

    def _write(self, w: _Writer) -> None:
        w.pairs(self.seed_shares)
        w.pairs(self.key_shares)
        w.blob(self.signature)

    @classmethod
    def _read(cls, r: _Reader, session_id: bytes, client_id: int) -> UnmaskResponse:
        return cls(session_id, client_id, r.pairs(), r.pairs(), r.blob())


_KINDS: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        AdvertiseKeysRequest,
        AdvertiseKeysResponse,
        ShareKeysRequest,
        ShareKeysResponse,
        MaskedInputRequest,
        MaskedInputResponse,
        ConsistencyCheckRequest,
        ConsistencyCheckResponse,
        UnmaskRequest,
        UnmaskResponse,
    )
}


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Rebuild a message from :meth:`Message.to_bytes` output.

    Raises
    ------
    MessageFormatError
        Wrong magic, unsupported version, unknown kind, truncated or trailing bytes, or a field
        that fails validation.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    r = _Reader(data)
    if r.raw(len(MAGIC)) != MAGIC:
        raise MessageFormatError("not a secure aggregation message (bad magic)")
    version = r.u8()
    if version != VERSION:
        raise MessageFormatError(f"unsupported message version {version} (expected {VERSION})")
    kind = r.u8()
    cls = _KINDS.get(kind)
    if cls is None:
        raise MessageFormatError(f"unknown message kind {kind}")
    session_id = r.raw(SESSION_ID_SIZE)
    client_id = r.u32()
    try:
        msg = cls._read(r, session_id, client_id)
    except (ValueError, TypeError) as error:
        if isinstance(error, MessageFormatError):
            raise
        raise MessageFormatError(f"invalid {cls.__name__}: {error}") from None
    r.done()
    return msg


def fields(message: Message) -> dict[str, object]:
    """The message's fields as a dict (for logging and tests)."""
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
