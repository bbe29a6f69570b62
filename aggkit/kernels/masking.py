"""Modular addition and subtraction of keystream mask words into an accumulator vector.

The secure aggregation protocol (``aggkit/secure/protocol.py``) hides each client's vector under
pseudo-random masks that are uniform integers modulo ``R``: a client adds its masks, the server
adds the masked vectors and subtracts the masks it recovers. These kernels are that arithmetic,
on ``uint32`` accumulators when ``R <= 2**32`` and ``uint64`` ones otherwise.

Three cases:

- ``R = 2**b`` (:func:`add_words_pow2`): the raw keystream words are added and the result is
  reduced with the bit mask ``R - 1``. ``R`` divides the word range ``2**32`` (or ``2**64``), so a
  uniform word reduced mod ``R`` is exactly uniform on ``[0, R)``; no word is wasted.
- other ``R``, words from a keystream (:func:`add_words_rejection`): a word ``w`` is used only if
  ``w < limit`` with ``limit = W - W % R`` (``W`` the word range), then ``w % R`` is exactly uniform
  on ``[0, R)``. Rejected words are skipped, so the caller streams keystream until the accumulator
  is full; the kernel returns how far it got.
- values already in ``[0, R)`` (:func:`add_mod`): the server's sum of masked vectors.

All arithmetic is done in ``uint64`` (numba promotes ``uint32`` operands), with explicit overflow
handling for ``R > 2**63`` where ``a + v`` can wrap. Kernels work in place on the caller's
accumulator and allocate nothing; every kernel has a ``*_numpy`` twin with the same result.
"""

from __future__ import annotations

import numpy as np

from aggkit import _checks
from aggkit.kernels._jit import kernel

__all__ = [
    "add_mod",
    "add_mod_numpy",
    "add_words_pow2",
    "add_words_pow2_numpy",
    "add_words_rejection",
    "add_words_rejection_numpy",
    "rejection_limit",
]


def rejection_limit(modulus: int, word_bits: int) -> int:
    """The first word rejection sampling discards: ``W - W % modulus``, ``W = 2**word_bits``.

    Words below it, reduced mod ``modulus``, are exactly uniform on ``[0, modulus)``.

    Examples
    --------
    >>> rejection_limit(3, 32)
    4294967295
    >>> rejection_limit(2**31 + 1, 32)
    2147483649
    """
    span = 1 << word_bits
    return span - span % modulus


@kernel
def _add_words_pow2(acc, words, mask, subtract, full):  # pragma: no cover - compiled
    n = acc.shape[0]
    w = words[:n]
    # full: the modulus is the word range (2**32 on uint32, 2**64 on uint64), so the store's
    # wrap-around is the reduction, and the loop saves the masking instruction.
    if full:
        if subtract:
            for i in range(n):
                acc[i] = acc[i] - w[i]
        else:
            for i in range(n):
                acc[i] = acc[i] + w[i]
    elif subtract:
        for i in range(n):
            acc[i] = (np.uint64(acc[i]) - np.uint64(w[i])) & mask
    else:
        for i in range(n):
            acc[i] = (np.uint64(acc[i]) + np.uint64(w[i])) & mask


def add_words_pow2(
    acc: np.ndarray, words: np.ndarray, modulus: int, subtract: bool = False
) -> np.ndarray:
    """``acc = (acc +/- words) mod modulus`` for a power-of-two ``modulus``, in place.

    Parameters
    ----------
    acc : numpy.ndarray
        ``uint32[n]`` or ``uint64[n]`` accumulator, values in ``[0, modulus)``; updated in place.
    words : numpy.ndarray
        Words of the same dtype, at least ``n`` of them (the first ``n`` are used); any values
        (raw keystream words are fine: they are reduced with the result).
    modulus : int
        ``2**b`` with ``1 <= b <= 32`` for ``uint32``, ``<= 64`` for ``uint64``.
    subtract : bool
        Subtract the words instead of adding them.

    Returns
    -------
    numpy.ndarray
        ``acc``.

    Examples
    --------
    >>> acc = np.array([1, 15], np.uint32)
    >>> add_words_pow2(acc, np.array([0xFFFFFFFF, 3], np.uint32), 16)
    array([0, 2], dtype=uint32)
    """
    _check_pair(acc, words, modulus)
    if modulus & (modulus - 1):
        raise ValueError(f"modulus must be a power of two, got {modulus}")
    _add_words_pow2(acc, words, np.uint64(modulus - 1), bool(subtract), _full(acc, modulus))
    return acc


def add_words_pow2_numpy(
    acc: np.ndarray, words: np.ndarray, modulus: int, subtract: bool = False
) -> np.ndarray:
    """NumPy twin of :func:`add_words_pow2`."""
    w = words[: acc.shape[0]].astype(np.uint64)
    a = acc.astype(np.uint64)
    r = (a - w) if subtract else (a + w)
    acc[...] = r & np.uint64(modulus - 1)
    return acc


@kernel
def _add_mod(acc, values, modulus, subtract):  # pragma: no cover - compiled
    n = acc.shape[0]
    v = values[:n]
    if subtract:
        for i in range(n):
            a = np.uint64(acc[i])
            x = np.uint64(v[i])
            r = a - x
            if a < x:
                r += modulus
            acc[i] = r
    else:
        for i in range(n):
            a = np.uint64(acc[i])
            s = a + np.uint64(v[i])
            # s < a: the uint64 sum wrapped (only possible when modulus > 2**63).
            if s < a or s >= modulus:
                s -= modulus
            acc[i] = s


def add_mod(
    acc: np.ndarray, values: np.ndarray, modulus: int, subtract: bool = False
) -> np.ndarray:
    """``acc = (acc +/- values) mod modulus`` for values already in ``[0, modulus)``, in place.

    Parameters
    ----------
    acc : numpy.ndarray
        ``uint32[n]`` or ``uint64[n]``, values in ``[0, modulus)``; updated in place.
    values : numpy.ndarray
        Same dtype, at least ``n`` values in ``[0, modulus)`` (not checked: the result is
        unspecified otherwise).
    modulus : int
        ``2 <= modulus <= 2**32`` for ``uint32``, ``<= 2**64`` for ``uint64``.
    subtract : bool
        Subtract instead of add.

    Returns
    -------
    numpy.ndarray
        ``acc``.

    Examples
    --------
    >>> acc = np.array([5, 20], np.uint32)
    >>> add_mod(acc, np.array([17, 21], np.uint32), 22)
    array([ 0, 19], dtype=uint32)
    >>> add_mod(acc, np.array([1, 21], np.uint32), 22, subtract=True)
    array([21, 20], dtype=uint32)
    """
    _check_pair(acc, values, modulus, "values")
    if modulus & (modulus - 1) == 0:
        # A power of two (2**64 included, which a uint64 cannot hold): mask, no branches.
        _add_words_pow2(acc, values, np.uint64(modulus - 1), bool(subtract), _full(acc, modulus))
    else:
        _add_mod(acc, values, np.uint64(modulus), bool(subtract))
    return acc


def add_mod_numpy(
    acc: np.ndarray, values: np.ndarray, modulus: int, subtract: bool = False
) -> np.ndarray:
    """NumPy twin of :func:`add_mod` (exact, through Python-int object arrays)."""
    a = acc.astype(object)
    v = values[: acc.shape[0]].astype(object)
    r = (a - v) % modulus if subtract else (a + v) % modulus
    acc[...] = r.astype(acc.dtype)
    return acc


@kernel
def _add_words_rejection(acc, start, words, modulus, limit, subtract):  # pragma: no cover
    n = acc.shape[0]
    pos = start
    for j in range(words.shape[0]):
        if pos >= n:
            break
        w = np.uint64(words[j])
        if w >= limit:
            continue
        x = w % modulus
        a = np.uint64(acc[pos])
        if subtract:
            r = a - x
            if a < x:
                r += modulus
        else:
            r = a + x
            if r < a or r >= modulus:
                r -= modulus
        acc[pos] = r
        pos += 1
    return pos


def add_words_rejection(
    acc: np.ndarray,
    start: int,
    words: np.ndarray,
    modulus: int,
    subtract: bool = False,
) -> int:
    """Add (or subtract) uniform values mod ``modulus`` drawn from ``words`` by rejection.

    Words are taken in order; a word ``w >= limit`` (see :func:`rejection_limit`) is skipped,
    otherwise ``w % modulus`` goes into ``acc[pos]`` and ``pos`` advances. Stops when ``acc`` is
    full or ``words`` runs out.

    Parameters
    ----------
    acc : numpy.ndarray
        ``uint32[n]`` or ``uint64[n]``, values in ``[0, modulus)``; updated in place.
    start : int
        First position of ``acc`` to fill.
    words : numpy.ndarray
        Keystream words, same dtype as ``acc``.
    modulus : int
        Any ``modulus >= 2`` that fits the dtype (not a power of two, which needs no rejection).
    subtract : bool
        Subtract instead of add.

    Returns
    -------
    int
        The next position to fill (``n`` when ``acc`` is complete).

    Examples
    --------
    >>> acc = np.zeros(2, np.uint32)
    >>> add_words_rejection(acc, 0, np.array([4, 0xFFFFFFFF, 7], np.uint32), 3)
    2
    >>> acc
    array([1, 1], dtype=uint32)
    """
    _check_acc(acc, modulus)
    _checks.array(words, "words", dtype=acc.dtype, ndim=1)
    if not 0 <= start <= acc.shape[0]:
        raise ValueError(f"start must be in [0, {acc.shape[0]}], got {start}")
    if modulus & (modulus - 1) == 0:
        raise ValueError("a power-of-two modulus needs no rejection: use add_words_pow2")
    limit = rejection_limit(modulus, acc.dtype.itemsize * 8)
    return int(
        _add_words_rejection(
            acc, np.int64(start), words, np.uint64(modulus), np.uint64(limit), bool(subtract)
        )
    )


def add_words_rejection_numpy(
    acc: np.ndarray,
    start: int,
    words: np.ndarray,
    modulus: int,
    subtract: bool = False,
) -> int:
    """NumPy twin of :func:`add_words_rejection`."""
    limit = rejection_limit(modulus, acc.dtype.itemsize * 8)
    accepted = words[words < np.uint64(limit)]
    take = accepted[: acc.shape[0] - start].astype(object) % modulus
    add_mod_numpy(acc[start : start + take.shape[0]], take.astype(acc.dtype), modulus, subtract)
    return start + take.shape[0]


def _full(acc: np.ndarray, modulus: int) -> bool:
    """Is ``modulus`` the whole word range of ``acc``'s dtype?"""
    return modulus == 1 << (8 * acc.dtype.itemsize)


def _check_acc(acc: np.ndarray, modulus: int) -> None:
    _checks.array(acc, "acc", dtype=(np.uint32, np.uint64), ndim=1, writeable=True)
    bits = acc.dtype.itemsize * 8
    if not 2 <= modulus <= 1 << bits:
        raise ValueError(f"modulus must be in [2, 2**{bits}] for {acc.dtype}, got {modulus}")


def _check_pair(acc: np.ndarray, words: np.ndarray, modulus: int, name: str = "words") -> None:
    _check_acc(acc, modulus)
    _checks.array(words, name, dtype=acc.dtype, ndim=1)
    if words.shape[0] < acc.shape[0]:  # the kernels read one per accumulator entry
        raise ValueError(f"{name} has {words.shape[0]} values, acc needs {acc.shape[0]}")
