"""Summation channels: the three ways a sum of client values can reach the server.

TensorFlow Federated distinguishes how values move from clients to the server, and so does aggkit
(``docs/design.md``, "Channels and backends"). Every sum in aggkit goes through one of three
channels:

* **plain** (``federated_sum``): the server sees the values it adds;
* **secure with a bit width** ``b`` (``federated_secure_sum_bitwidth``): each client sends a vector
  of integers in ``[0, 2**b - 1]``; the server learns only their exact sum (which may need more
  than ``b`` bits);
* **secure modular** with modulus ``m`` (``federated_secure_modular_sum``): each client sends
  integers in ``[0, m)``; the server learns only their sum mod ``m``.

Recording. Every sum is recorded as a :class:`ChannelUse` in the logs opened with
:func:`recording`, so a test can assert that a process used secure channels only
(:func:`aggkit.testing.assert_only_secure`)::

    with channels.recording() as log:
        process.next(state, values)
    assert all(use.secure for use in log)

Backends. The secure channels compute through a :class:`SumBackend`, chosen per context with
:func:`using_backend`. The default :class:`InProcessBackend` lets aggregators add their encoded
client vectors straight into an accumulator while they encode them (one pass over the client
matrix, nothing materialized); it computes the same numbers a real protocol would, without the
protection. A backend with ``fused = False`` receives instead every client's encoded vector, and
its one method is the whole interface of a secure aggregation protocol: "sum these K integer
vectors modulo m". The pairwise-masking protocol of :mod:`aggkit.secure.simulation` plugs in as::

    class MaskingBackend(channels.SumBackend):
        fused = False
        def modular_sum(self, inputs, modulus):
            return run_secure_sum(inputs, modulus=modulus)

    with channels.using_backend(MaskingBackend()):
        out = process.next(state, values)

A ``b``-bit sum over ``K`` clients is run modulo ``2**(b + ceil(log2 K))``, which its exact sum
never reaches. This module imports NumPy only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from aggkit import _buffers, _checks
from aggkit.kernels.limits import INT64_MAX, MAX_BITWIDTH, MAX_MODULUS

__all__ = [
    "PLAIN",
    "SECURE_BITWIDTH",
    "SECURE_MODULAR",
    "ChannelUse",
    "InProcessBackend",
    "SecureChannelSum",
    "SumBackend",
    "current_backend",
    "plain_sum",
    "record_plain",
    "recording",
    "secure_sum_bitwidth",
    "secure_sum_modular",
    "using_backend",
]

PLAIN = "plain"
SECURE_BITWIDTH = "secure_bitwidth"
SECURE_MODULAR = "secure_modular"

# MAX_BITWIDTH (bit widths of the secure channel: values up to ``2**62 - 1`` keep int64 sums of 2
# clients exact) and MAX_MODULUS (moduli of the secure modular channel: ``acc + value`` must fit
# int64) are the kernels' limits, imported above and exported under these names.


@dataclass(frozen=True)
class ChannelUse:
    """One sum through a channel, as recorded by :func:`recording`.

    Attributes
    ----------
    kind : str
        ``"plain"``, ``"secure_bitwidth"`` or ``"secure_modular"``.
    length : int
        Values per client.
    clients : int
        Clients summed.
    bitwidth : int or None
        The bit width of a ``secure_bitwidth`` sum.
    modulus : int or None
        The modulus of a ``secure_modular`` sum.
    owner : str
        Who summed (for messages), e.g. ``"secure_sum value"``.
    """

    kind: str
    length: int
    clients: int
    bitwidth: int | None = None
    modulus: int | None = None
    owner: str = ""

    @property
    def secure(self) -> bool:
        """True for the two secure channels."""
        return self.kind != PLAIN


_LOGS: ContextVar[tuple[list[ChannelUse], ...]] = ContextVar("aggkit_channel_logs", default=())


@contextmanager
def recording() -> Iterator[list[ChannelUse]]:
    """Record every channel use inside the ``with`` block into the list it yields.

    Recordings nest: a use is appended to every open log.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.sum().create(ak.TensorSpec((2,), np.float32))
    >>> with recording() as log:
    ...     _ = process.next((), [np.ones(2, np.float32)] * 3)
    >>> [(use.kind, use.clients, use.length) for use in log]
    [('plain', 3, 2)]
    """
    log: list[ChannelUse] = []
    token = _LOGS.set((*_LOGS.get(), log))
    try:
        yield log
    finally:
        _LOGS.reset(token)


def _record(use: ChannelUse) -> None:
    for log in _LOGS.get():
        log.append(use)


def record_plain(length: int, clients: int, owner: str = "") -> None:
    """Record a plain sum of ``clients`` vectors of ``length`` values (done by the caller)."""
    _record(ChannelUse(PLAIN, int(length), int(clients), owner=owner))


# -- backends ------------------------------------------------------------------------------------


class SumBackend(ABC):
    """Computes the secure channels' sums.

    Attributes
    ----------
    fused : bool
        True when aggregators may add encoded client vectors into an accumulator themselves, as
        they encode them (an in-process simulation: nothing is protected, the numbers are the
        same). False when every client's encoded vector must go through :meth:`modular_sum` (a
        real protocol).
    """

    fused: bool = False

    @abstractmethod
    def modular_sum(self, inputs: np.ndarray, modulus: int) -> np.ndarray:
        """``sum_i inputs[i] mod modulus`` of a ``[K, m]`` integer matrix with entries in
        ``[0, modulus)`` (``K >= 1``); any integer array of length ``m``."""


class InProcessBackend(SumBackend):
    """The default backend: exact sums in this process (fused into the aggregators' passes).

    Examples
    --------
    >>> InProcessBackend().modular_sum(np.array([[20, 1], [5, 21]]), 22)
    array([3, 0])
    """

    fused = True

    def modular_sum(self, inputs: np.ndarray, modulus: int) -> np.ndarray:
        total = np.zeros(inputs.shape[1], dtype=object)
        for row in np.asarray(inputs):
            total = (total + row.astype(object)) % modulus
        return total.astype(np.int64) if modulus <= MAX_MODULUS else total


_DEFAULT_BACKEND = InProcessBackend()
_BACKEND: ContextVar[SumBackend | None] = ContextVar("aggkit_sum_backend", default=None)


def current_backend() -> SumBackend:
    """The backend the secure channels use in this context (:class:`InProcessBackend` unless
    :func:`using_backend` chose another)."""
    backend = _BACKEND.get()
    return _DEFAULT_BACKEND if backend is None else backend


@contextmanager
def using_backend(backend: SumBackend) -> Iterator[SumBackend]:
    """Compute the secure channels' sums with ``backend`` inside the ``with`` block."""
    if not isinstance(backend, SumBackend):
        raise TypeError(f"backend must be a SumBackend, got {backend!r}")
    token = _BACKEND.set(backend)
    try:
        yield backend
    finally:
        _BACKEND.reset(token)


# -- secure sums ---------------------------------------------------------------------------------


class SecureChannelSum:
    """One sum on a secure channel over a round's clients, fed block by block.

    Give exactly one of ``bitwidth`` and ``modulus``. Feed it either encoded client vectors with
    :meth:`add`, or, when :attr:`fused` is true, add them into :attr:`accumulator` yourself and
    report how many with :meth:`add_accumulated`; :meth:`finish` returns the sum and records
    the use.

    Parameters
    ----------
    length : int
        Values per client.
    bitwidth : int, optional
        Inputs are integers in ``[0, 2**bitwidth - 1]``; the result is their exact sum.
    modulus : int, optional
        Inputs are integers in ``[0, modulus)``; the result is their sum mod ``modulus``.
    owner : str
        Names the sum in recordings and messages.

    Attributes
    ----------
    fused : bool
        Whether the caller may accumulate into :attr:`accumulator` (the backend's ``fused``).
    accumulator : numpy.ndarray or None
        ``int64[length]``, when fused: the exact sum so far (bit width) or the sum mod ``modulus``
        so far, in ``[0, modulus)``.

    Examples
    --------
    >>> s = SecureChannelSum(2, bitwidth=3, owner="example")
    >>> s.add(np.array([[7, 1], [2, 0]]))
    >>> s.add(np.array([[5, 5]]))
    >>> s.finish()
    array([14,  6])
    """

    def __init__(
        self,
        length: int,
        *,
        bitwidth: int | None = None,
        modulus: int | None = None,
        owner: str = "",
    ):
        if (bitwidth is None) == (modulus is None):
            raise TypeError("give exactly one of bitwidth and modulus")
        self.length = int(length)
        if bitwidth is not None:
            bitwidth = _checks.integer(bitwidth, "bitwidth", low=1, high=MAX_BITWIDTH)
        if modulus is not None:
            modulus = _checks.integer(modulus, "modulus", low=1, high=MAX_MODULUS)
        self.bitwidth = bitwidth
        self.modulus = modulus
        self.owner = owner
        self.backend = current_backend()
        self.fused = bool(self.backend.fused)
        self.accumulator = _buffers.zeros(self.length, np.int64) if self.fused else None
        self.clients = 0
        self._blocks: list[np.ndarray] = []
        self._finished = False

    @property
    def max_input(self) -> int:
        """The largest value a client may send."""
        return (1 << self.bitwidth) - 1 if self.bitwidth is not None else self.modulus - 1

    def _count(self, clients: int) -> None:
        if self._finished:
            raise RuntimeError(f"{self.owner or 'this sum'} is already finished")
        total = self.clients + int(clients)
        if self.bitwidth is not None and total * self.max_input > INT64_MAX:
            raise ValueError(
                f"{self.owner or 'a secure sum'}: {total} clients of {self.bitwidth}-bit values "
                "could overflow an exact int64 sum"
            )
        self.clients = total

    def add_accumulated(self, clients: int) -> None:
        """Account for ``clients`` vectors the caller added into :attr:`accumulator`.

        Call it *before* accumulating, so a sum that could overflow is refused first.
        """
        if not self.fused:
            raise RuntimeError("this backend takes every client's vector: use add()")
        self._count(clients)

    def add(self, vectors: np.ndarray) -> None:
        """Add a ``[k, length]`` block of client vectors (integers in the channel's range)."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.length:
            raise ValueError(
                f"expected a [k, {self.length}] block of client vectors, got {vectors.shape}"
            )
        if vectors.dtype.kind not in "iub":
            raise TypeError(f"secure channels carry integers, got {vectors.dtype}")
        if vectors.size and (vectors.min() < 0 or vectors.max() > self.max_input):
            raise ValueError(
                f"{self.owner or 'a secure sum'}: inputs must be in [0, {self.max_input}]"
            )
        self._count(len(vectors))
        if not len(vectors):
            return
        vectors = vectors.astype(np.int64, copy=False)
        if not self.fused:
            self._blocks.append(vectors.copy())
        elif self.modulus is None:
            self.accumulator += vectors.sum(axis=0, dtype=np.int64)
        else:
            # Partial sums of `chunk` rows below m each stay below 2**63.
            chunk = max(1, INT64_MAX // self.modulus - 1)
            for start in range(0, len(vectors), chunk):
                part = vectors[start : start + chunk].sum(axis=0, dtype=np.int64)
                self.accumulator[:] = (self.accumulator + part % self.modulus) % self.modulus

    def finish(self) -> np.ndarray:
        """The sum (``int64[length]``), computed by the backend; records the use."""
        if self._finished:
            raise RuntimeError(f"{self.owner or 'this sum'} is already finished")
        self._finished = True
        if self.fused:
            total = self.accumulator
        elif self.clients == 0:
            total = np.zeros(self.length, dtype=np.int64)
        else:
            inputs = np.concatenate(self._blocks)
            self._blocks = []
            modulus = self.modulus
            if modulus is None:  # a modulus the exact sum never reaches
                modulus = 1 << (self.bitwidth + math.ceil(math.log2(self.clients)))
            total = np.asarray(self.backend.modular_sum(inputs, modulus))
            if total.shape != (self.length,):
                raise RuntimeError(
                    f"the backend returned shape {total.shape}, not ({self.length},)"
                )
            total = total.astype(np.int64)
        _record(
            ChannelUse(
                SECURE_BITWIDTH if self.modulus is None else SECURE_MODULAR,
                self.length,
                self.clients,
                bitwidth=self.bitwidth,
                modulus=self.modulus,
                owner=self.owner,
            )
        )
        return total


def secure_sum_bitwidth(vectors: np.ndarray, bitwidth: int, *, owner: str = "") -> np.ndarray:
    """The exact sum of ``[K, m]`` client vectors of integers in ``[0, 2**bitwidth - 1]``.

    Goes through the secure bit-width channel (recorded; computed by the current backend).

    Examples
    --------
    >>> secure_sum_bitwidth(np.array([[1, 0], [1, 1], [0, 1]]), 1)
    array([2, 2])
    """
    vectors = np.asarray(vectors)
    channel = SecureChannelSum(vectors.shape[1], bitwidth=bitwidth, owner=owner)
    channel.add(vectors)
    return channel.finish()


def secure_sum_modular(vectors: np.ndarray, modulus: int, *, owner: str = "") -> np.ndarray:
    """``sum_i vectors[i] mod modulus`` of ``[K, m]`` client vectors with entries in
    ``[0, modulus)``, through the secure modular channel.

    Examples
    --------
    >>> secure_sum_modular(np.array([[1, 2], [3, 4]]), 5)
    array([4, 1])
    """
    vectors = np.asarray(vectors)
    channel = SecureChannelSum(vectors.shape[1], modulus=modulus, owner=owner)
    channel.add(vectors)
    return channel.finish()


def plain_sum(vectors: np.ndarray, *, owner: str = "") -> np.ndarray:
    """The plain column sum of ``[K, m]`` client vectors (float64, or int64 for integers);
    recorded as a use of the plain channel.

    Examples
    --------
    >>> plain_sum(np.array([[0.5, 1.0], [0.25, 2.0]]))
    array([0.75, 3.  ])
    """
    vectors = np.asarray(vectors)
    record_plain(vectors.shape[1], vectors.shape[0], owner)
    dtype = np.int64 if vectors.dtype.kind in "iub" else np.float64
    return vectors.sum(axis=0, dtype=dtype)
