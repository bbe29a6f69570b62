"""Stochastic-rounding uniform quantization: levels, the fused quantized sum, and bit packing.

A client quantizes each large tensor of its (coefficient-scaled) value ``v = c * x`` to
``top + 1 = 2**bits`` levels between a range ``[lo, hi]`` that covers it:
``u = (v - lo) * scale`` with ``scale = top / (hi - lo)`` (0 for a constant tensor), and level
``q = floor(u + U)`` (at most ``top``), where ``U`` is uniform on [0, 1): ``q`` is ``floor(u)``
or ``floor(u) + 1``, the latter with probability ``u - floor(u)``, so ``E[q] = u`` up to the
grid of ``U`` (below). The server decodes ``lo + q * step`` with ``step = (hi - lo) / top``, an
unbiased estimate of ``v``. Choosing the range and building payloads is the caller's
(:mod:`aggkit.compression`); this module holds the loops. Arithmetic is float64.

Random numbers
--------------
``U`` comes from the counter-based SplitMix64 stream (``mix_block`` in
:mod:`aggkit.kernels.counter_rng`, cheaper than Philox for this inner loop) on a grid of
``2**-r``: ``r = 16`` bits for quantizers of 8 bits or more, ``r = 32`` below. Rounding up then
happens with probability ``ceil(2**r frac) / 2**r`` instead of ``frac``, a bias below ``2**-r`` of
a step, that is below ``2**-24`` of the client's range ``hi - lo`` in every case
(one float32 unit in the last place of the range). The reference implementation rounds in
float32, which at 8 bits has the same ``2**-16`` resolution. 16-bit uniforms take half the
generator's work: eight elements per 128-bit block instead of four.

A stream chunk is 256 blocks: ``2048`` elements with 16-bit uniforms, ``1024`` with
32-bit ones (:func:`chunk_size`). Element ``r`` of chunk ``c`` of a tensor reads block
``256 c + (r % 256)``; with 32-bit uniforms word ``r // 256`` of it, with 16-bit uniforms the
low (``k`` even) or high (``k`` odd) half of word ``k // 2``, ``k = r // 256``. (So a chunk's
numbers fill a ``[4 or 8, 256]`` buffer row by row, a layout that lets both the generator loop
and the rounding loop vectorize.) The stream key of client ``j``'s tensor ``t`` is
``fold_in(fold_in(round_key, j), t)`` (``derive_key(round_key, j, t)`` in Python). Every level is
a pure function of (round key, client, tensor, index, value, range), so the bits do not depend
on the thread count, on how clients are split into blocks, or on whether a client is encoded
alone (:func:`stochastic_levels`) or inside the fused sum (:func:`quantized_row_sum`).

The fused sum
-------------
Simulation does not need the packed integers: :func:`quantized_row_sum` computes each active
row's levels and adds the decoded values straight into a float64 accumulator, applying each
row's coefficient on the fly. Threads (:func:`aggkit.kernels._jit.run_tasks`: a serial kernel
compiles in half a ``prange`` kernel's time or less) run tasks of ``TASK`` columns of one tensor; a
task goes chunk by chunk, four rows at a time (four memory streams in flight, the accumulator
loaded once per four rows). For every column the additions happen in row order, exactly as in
:func:`quantized_row_sum_numpy`, so the two agree bit for bit. Tensors not marked for
quantization get ``acc += c * x`` in float64, like :mod:`aggkit.kernels.weighted_sum`.

Bit packing
-----------
:func:`pack_bits` concatenates the ``bits``-bit levels into one little-endian bit stream (value
``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, low bit first) and cuts the stream into
28-bit pieces, one per int32 word (bits 28-31 are zero, so every word serialises as a 4-byte
varint): ``ceil(n * bits / 28)`` words for ``n`` values. This is the layout of the reference
implementation's ``pack_into_int(value, bits, 28)``. :func:`unpack_bits` inverts it.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from aggkit import _checks
from aggkit.kernels._jit import kernel, run_tasks
from aggkit.kernels._minmax import min2
from aggkit.kernels.counter_rng import fold_in_array, fold_in_numpy, mix_block, mix_block_numpy
from aggkit.kernels.limits import WORD_BITS

__all__ = [
    "BLOCKS",
    "SHORT_UNIFORM_BITS",
    "TASK",
    "WORD_BITS",
    "chunk_size",
    "pack_bits",
    "pack_bits_numpy",
    "packed_words",
    "quantized_row_sum",
    "quantized_row_sum_numpy",
    "stochastic_levels",
    "stochastic_levels_numpy",
    "stream_tasks",
    "uniform_bits",
    "unpack_bits",
    "unpack_bits_numpy",
]

#: Random blocks (128 bits each) per random-stream chunk.
BLOCKS = 256
#: Quantizers with at least this many bits round with 16-bit uniforms, others with 32-bit ones.
SHORT_UNIFORM_BITS = 8
#: Columns per parallel task of the fused sum (a multiple of every chunk size).
TASK = 8192
_M16 = np.uint64(0xFFFF)
_S16 = np.uint64(16)
_WORD_MASK = np.uint64((1 << WORD_BITS) - 1)
_WORD_BITS_U = np.uint64(WORD_BITS)
_ZERO = np.uint64(0)
#: Where row ``k`` of a chunk's random numbers starts in its flat buffer (``k * BLOCKS``).
_ROW1, _ROW2, _ROW3, _ROW4, _ROW5, _ROW6, _ROW7 = (np.uint64(k * BLOCKS) for k in range(1, 8))


# --------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------


@kernel(inline=True)
def _level(v, lo, scale, word, inv, top):  # pragma: no cover - compiled
    """The stochastic level of ``v >= lo`` in ``[0, top]`` for the uniform ``word * inv``."""
    return min2(np.floor((v - lo) * scale + np.float64(word) * inv), top)


def _chunk_words_helper(short: bool):
    """The helper that writes blocks ``256 * chunk + b`` (``b < count``) of stream ``key`` into
    ``words``: ``_chunk_words16`` (``short``) or ``_chunk_words32``.

    ``words`` is a flat ``uint32[4 * 256]`` (word ``k`` of block ``b`` at ``k * 256 + b``) or,
    when ``short``, ``uint32[8 * 256]`` (the low then the high 16 bits of word ``k`` at
    ``2k * 256 + b`` and ``(2k + 1) * 256 + b``; kept as uint32, which the rounding loop converts
    in one instruction); ``words[r]`` is then the random number of element ``r`` of the chunk.
    Flat, at unsigned offsets: no reshape in the callers and no row views here, each a piece of
    code for numba to compile. ``short`` is a constant of the closure, so numba types and lowers
    only its branch (with a literal argument it would lower both, each with its own inlined
    ``mix_block``).
    """

    def _chunk_words(key, chunk, count, words):  # pragma: no cover - compiled
        first = chunk * BLOCKS
        if short:
            for b in range(count):
                w0, w1, w2, w3 = mix_block(key, first + b)
                j = np.uint64(b)
                words[j] = w0 & _M16
                words[j + _ROW1] = w0 >> _S16
                words[j + _ROW2] = w1 & _M16
                words[j + _ROW3] = w1 >> _S16
                words[j + _ROW4] = w2 & _M16
                words[j + _ROW5] = w2 >> _S16
                words[j + _ROW6] = w3 & _M16
                words[j + _ROW7] = w3 >> _S16
        else:
            for b in range(count):
                w0, w1, w2, w3 = mix_block(key, first + b)
                j = np.uint64(b)
                words[j] = w0
                words[j + _ROW1] = w1
                words[j + _ROW2] = w2
                words[j + _ROW3] = w3

    _chunk_words.__qualname__ = f"_chunk_words{16 if short else 32}"
    return kernel(_chunk_words, helper=True)


_chunk_words16 = _chunk_words_helper(short=True)
_chunk_words32 = _chunk_words_helper(short=False)


@kernel(helper=True)
def _accumulate_levels(x, words, coef, lo, scale, step, inv, top, out):  # pragma: no cover
    for j in range(x.shape[0]):
        q = _level(coef * x[j], lo, scale, words[j], inv, top)
        out[j] += lo + q * step


@kernel(helper=True)
def _accumulate_levels4(x0, x1, x2, x3, w0, w1, w2, w3, p, inv, top, out):  # pragma: no cover
    """Four rows at a time (four memory streams; ``out`` read and written once).

    ``w0..w3`` are the rows' random words; ``p[k]`` holds row ``k``'s coefficient, range start,
    scale and step. Rows are added in order, so the bits equal four calls of
    :func:`_accumulate_levels`.
    """
    c0, l0, s0, d0 = p[0, 0], p[0, 1], p[0, 2], p[0, 3]
    c1, l1, s1, d1 = p[1, 0], p[1, 1], p[1, 2], p[1, 3]
    c2, l2, s2, d2 = p[2, 0], p[2, 1], p[2, 2], p[2, 3]
    c3, l3, s3, d3 = p[3, 0], p[3, 1], p[3, 2], p[3, 3]
    for j in range(x0.shape[0]):
        a = out[j]
        a += l0 + _level(c0 * x0[j], l0, s0, w0[j], inv, top) * d0
        a += l1 + _level(c1 * x1[j], l1, s1, w1[j], inv, top) * d1
        a += l2 + _level(c2 * x2[j], l2, s2, w2[j], inv, top) * d2
        a += l3 + _level(c3 * x3[j], l3, s3, w3[j], inv, top) * d3
        out[j] = a


@kernel(helper=True)
def _store_levels(x, words, coef, lo, scale, inv, top, out):  # pragma: no cover - compiled
    for j in range(x.shape[0]):
        out[j] = np.uint32(_level(coef * x[j], lo, scale, words[j], inv, top))


@kernel(helper=True)
def _accumulate_exact(x, coef, out):  # pragma: no cover - compiled
    for j in range(x.shape[0]):
        out[j] += coef * x[j]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@functools.cache
def _row_sum_kernel(short: bool, remainder: bool, exact: bool):
    """The fused-sum kernel for one case, compiled only when a round first needs it.

    ``short`` (16-bit uniforms: eight numbers per block), ``remainder`` (the active rows are not
    a multiple of four: the last ones go one at a time) and ``exact`` (some tensor is not
    quantized) are constants of the closure, so numba prunes the branches a case does not take
    before it types them: a round compiles one uniform width, and the one-row and exact paths
    only when it has such rows or tensors (every path in one kernel took 1.6 s of CPU time to
    compile, half of ``compression_aggregator()``'s first round with an empty cache). numba's
    disk cache keys closures on their cells' values, so the cases are cached side by side (as in
    :func:`aggkit.kernels.row_stats._partials_kernel`).
    """
    per_block = 8 if short else 4

    def _quantized_row_sum(
        first_task,
        stop_task,
        matrix,
        rows,
        task_tensor,
        task_start,
        offsets,
        quantize,
        params,
        keys,
        top,
        inv,
        acc,
        flat,
    ):  # pragma: no cover - compiled
        num_rows = rows.shape[0]
        chunk_size = BLOCKS * per_block
        # The scratch, uint32[4, chunk_size]: one random-number buffer per row of a group of
        # four, this thread's (run_tasks' scratch). The rows' keys and parameters come from the
        # caller too, so the kernel allocates nothing: each np.empty is one more compilation.
        for task in range(first_task, stop_task):
            t = task_tensor[task]
            first = task_start[task]
            task_stop = min2(first + TASK, offsets[t + 1])
            if exact:
                if not quantize[t]:
                    out = acc[first:task_stop]
                    for ii in range(num_rows):
                        _accumulate_exact(matrix[rows[ii], first:task_stop], params[t, ii, 0], out)
                    continue
            # Rows four at a time, then (``remainder``) the last ones one at a time: for every
            # column the rows are added in order.
            ii = 0
            while ii < num_rows:
                group = 4
                if remainder:
                    if ii + 4 > num_rows:
                        group = 1
                # Row by row over the whole task: long contiguous runs of each row for the
                # prefetcher.
                for start in range(first, task_stop, chunk_size):
                    stop = min2(start + chunk_size, task_stop)
                    m = stop - start
                    chunk = (start - offsets[t]) // chunk_size
                    count = min2(m, BLOCKS)
                    out = acc[start:stop]
                    for k in range(group):
                        if short:
                            _chunk_words16(keys[t, ii + k], chunk, count, flat[k])
                        else:
                            _chunk_words32(keys[t, ii + k], chunk, count, flat[k])
                    if group == 4:
                        _accumulate_levels4(
                            matrix[rows[ii], start:stop],
                            matrix[rows[ii + 1], start:stop],
                            matrix[rows[ii + 2], start:stop],
                            matrix[rows[ii + 3], start:stop],
                            flat[0, :m],
                            flat[1, :m],
                            flat[2, :m],
                            flat[3, :m],
                            params[t, ii : ii + 4],
                            inv,
                            top,
                            out,
                        )
                    elif remainder:
                        x = matrix[rows[ii], start:stop]
                        p = params[t, ii]
                        _accumulate_levels(x, flat[0, :m], p[0], p[1], p[2], p[3], inv, top, out)
                ii += group

    _quantized_row_sum.__qualname__ = (
        f"_quantized_row_sum_u{16 if short else 32}{'_rem' * remainder}{'_exact' * exact}"
    )
    return kernel(_quantized_row_sum)


@kernel(parallel=True)
def _stochastic_levels(x, coef, lo, scale, top, per_block, inv, key, out):  # pragma: no cover
    n = x.shape[0]
    chunk_size = BLOCKS * per_block
    for chunk in prange((n + chunk_size - 1) // chunk_size):
        start = chunk * chunk_size
        stop = min2(start + chunk_size, n)
        m = stop - start
        words = np.empty(chunk_size, dtype=np.uint32)
        if per_block == 8:
            _chunk_words16(key, chunk, min2(m, BLOCKS), words)
        else:
            _chunk_words32(key, chunk, min2(m, BLOCKS), words)
        _store_levels(x[start:stop], words[:m], coef, lo, scale, inv, top, out[start:stop])


# Packing works on groups of values that fill whole words: g values of b bits are g * b / 28
# words when g = 28 / gcd(b, 28). Pieces of groups are independent, so they run in parallel.
_GROUPS_PER_PIECE = 2048


@kernel(parallel=True)
def _pack_bits(values, bits, group, out):  # pragma: no cover - compiled
    n = values.shape[0]
    num_words = out.shape[0]
    per_group = group * bits // WORD_BITS
    num_groups = (n + group - 1) // group
    b = np.uint64(bits)
    for piece in prange((num_groups + _GROUPS_PER_PIECE - 1) // _GROUPS_PER_PIECE):
        first = piece * _GROUPS_PER_PIECE * group
        last = min2(first + _GROUPS_PER_PIECE * group, n)
        w = piece * _GROUPS_PER_PIECE * per_group
        buffer = np.uint64(0)
        filled = np.uint64(0)
        for i in range(first, last):
            buffer |= np.uint64(values[i]) << filled
            filled += b
            if filled >= _WORD_BITS_U:
                out[w] = np.int32(buffer & _WORD_MASK)
                w += 1
                buffer >>= _WORD_BITS_U
                filled -= _WORD_BITS_U
        if filled > _ZERO and w < num_words:
            out[w] = np.int32(buffer)


@kernel(parallel=True)
def _unpack_bits(words, bits, group, out):  # pragma: no cover - compiled
    n = out.shape[0]
    per_group = group * bits // WORD_BITS
    num_groups = (n + group - 1) // group
    b = np.uint64(bits)
    mask = np.uint64((1 << bits) - 1)
    for piece in prange((num_groups + _GROUPS_PER_PIECE - 1) // _GROUPS_PER_PIECE):
        first = piece * _GROUPS_PER_PIECE * group
        last = min2(first + _GROUPS_PER_PIECE * group, n)
        w = piece * _GROUPS_PER_PIECE * per_group
        buffer = np.uint64(0)
        filled = np.uint64(0)
        for i in range(first, last):
            if filled < b:
                buffer |= (np.uint64(np.uint32(words[w])) & _WORD_MASK) << filled
                w += 1
                filled += _WORD_BITS_U
            out[i] = np.uint32(buffer & mask)
            buffer >>= b
            filled -= b


# --------------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------------


def stream_tasks(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parallel tasks of :func:`quantized_row_sum` for tensor boundaries ``offsets``.

    Returns ``(task_tensor, task_start)``: task ``k`` covers columns ``task_start[k]`` to
    ``min(task_start[k] + TASK, offsets[task_tensor[k] + 1])`` of tensor ``task_tensor[k]``;
    every task starts a multiple of ``TASK`` after its tensor's start. Depends only on the
    layout, so a process computes it once.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    tensors = []
    starts = []
    for t in range(len(offsets) - 1):
        begin, end = int(offsets[t]), int(offsets[t + 1])
        if end > begin:
            s = np.arange(begin, end, TASK, dtype=np.int64)
            starts.append(s)
            tensors.append(np.full(s.size, t, dtype=np.int64))
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(tensors), np.concatenate(starts)


def _check_top(bits: int) -> float:
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    return float((1 << bits) - 1)


def uniform_bits(bits: int) -> int:
    """Resolution of the rounding uniforms of a ``bits``-bit quantizer: 16 or 32 bits."""
    return 16 if bits >= SHORT_UNIFORM_BITS else 32


def chunk_size(bits: int) -> int:
    """Elements per random-stream chunk of a ``bits``-bit quantizer (256 random blocks)."""
    return BLOCKS * 128 // uniform_bits(bits)


def _stream_shape(bits: int) -> tuple[int, float]:
    """Random numbers per 128-bit block, and the grid step of the uniforms."""
    r = uniform_bits(bits)
    return 128 // r, 2.0**-r


def _row_params(coef, lo, scale, step, rows) -> np.ndarray:
    """``float64[T, R, 4]``: active row ``rows[r]``'s coefficient, range start, scale and step
    for tensor ``t`` at ``[t, r]`` (so a group of four rows reads one contiguous ``[4, 4]``)."""
    columns = (np.broadcast_to(coef[rows, None], lo[rows].shape), lo[rows], scale[rows], step[rows])
    return np.ascontiguousarray(np.stack(columns, axis=-1).transpose(1, 0, 2))


def _row_keys(round_key: int, first_client: int, rows: np.ndarray, num_tensors: int) -> np.ndarray:
    """``uint64[T, R]``: the stream key ``fold_in(fold_in(round_key, first_client + rows[r]), t)``
    of active row ``r``'s tensor ``t`` (module docstring), in one vectorized pass."""
    clients = fold_in_array(np.uint64(round_key), np.uint64(first_client) + rows.astype(np.uint64))
    return fold_in_array(clients[None, :], np.arange(num_tensors, dtype=np.uint64)[:, None])


def quantized_row_sum(
    matrix: np.ndarray,
    coef: np.ndarray,
    offsets: np.ndarray,
    quantize: np.ndarray,
    lo: np.ndarray,
    scale: np.ndarray,
    step: np.ndarray,
    bits: int,
    round_key: int,
    first_client: int,
    acc: np.ndarray,
    *,
    tasks: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Add every active row's decoded quantized value into ``acc`` (encode, decode and sum fused).

    For each row ``i`` with ``coef[i] != 0`` and each tensor ``t``: if ``quantize[t]``, adds
    ``lo[i, t] + q * step[i, t]`` where ``q`` is the stochastic level of ``coef[i] * x`` (see the
    module docstring); otherwise adds ``coef[i] * x`` exactly (in float64). Rows with coefficient
    0 are skipped, even if they hold NaN.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` C-contiguous float32 or float64 client rows.
    coef : numpy.ndarray
        ``float64[K]`` non-negative coefficients.
    offsets : numpy.ndarray
        ``int64[T + 1]`` tensor boundaries.
    quantize : numpy.ndarray
        ``bool[T]``: which tensors are quantized.
    lo, scale, step : numpy.ndarray
        ``float64[K, T]`` per row and tensor: range start, ``top / (hi - lo)`` (0 for a constant
        tensor) and ``(hi - lo) / top``, where ``top = 2**bits - 1``. The range must contain
        ``coef[i] * x`` for the tensor.
    bits : int
        In [1, 16].
    round_key : int
        The round's stream key (client ``first_client + i`` gets sub-stream ``first_client + i``).
    first_client : int
        Global index of row 0 (so results do not depend on how clients are split into blocks).
    acc : numpy.ndarray
        ``float64[n]`` accumulator, updated in place.
    tasks : tuple of numpy.ndarray, optional
        :func:`stream_tasks` of ``offsets`` (computed if not given).

    Returns
    -------
    numpy.ndarray
        ``acc``.

    Examples
    --------
    >>> x = np.array([[0.0, 0.25, 1.0]], np.float32)
    >>> lo, hi = np.zeros((1, 1)), np.ones((1, 1))
    >>> acc = quantized_row_sum(x, np.ones(1), np.array([0, 3]), np.array([True]), lo, hi,
    ...                         hi, 1, 7, 0, np.zeros(3))
    >>> bool(acc[0] == 0.0 and acc[1] in (0.0, 1.0) and acc[2] == 1.0)
    True
    """
    top = _check_top(bits)
    _checks.array(matrix, "matrix", dtype=(np.float32, np.float64), ndim=2)
    k, n = matrix.shape
    _checks.array(coef, "coef", dtype=np.float64, shape=(k,))
    offsets = _checks.offsets(offsets, n)
    t = offsets.size - 1
    _checks.array(quantize, "quantize", dtype=np.bool_, shape=(t,))
    for name, value in (("lo", lo), ("scale", scale), ("step", step)):
        _checks.array(value, name, dtype=np.float64, shape=(k, t))
    _checks.array(acc, "acc", dtype=np.float64, shape=(n,), writeable=True)
    if tasks is None:
        tasks = stream_tasks(offsets)
    else:  # each task must start inside its tensor
        owner, start = (np.asarray(a, dtype=np.int64) for a in tasks)
        if owner.shape != start.shape or (
            owner.size
            and (
                owner.min() < 0
                or owner.max() >= t
                or (start < offsets[np.clip(owner, 0, t)]).any()
                or (start >= offsets[np.clip(owner + 1, 0, t)]).any()
            )
        ):
            raise ValueError("tasks must be stream_tasks(offsets)")
        tasks = (owner, start)
    rows = np.flatnonzero(coef).astype(np.int64)
    per_block, inv = _stream_shape(bits)
    if rows.size and tasks[0].size:
        partial_rows = rows.size % 4 != 0
        run_tasks(
            _row_sum_kernel(per_block == 8, partial_rows, not bool(np.all(quantize))),
            tasks[0].size,
            matrix,
            rows,
            tasks[0],
            tasks[1],
            np.asarray(offsets, dtype=np.int64),
            np.asarray(quantize, dtype=np.bool_),
            _row_params(coef, lo, scale, step, rows),
            _row_keys(round_key, first_client, rows, t),
            top,
            inv,
            acc,
            scratch=((4, BLOCKS * per_block), np.uint32),
        )
    return acc


def stochastic_levels(
    x: np.ndarray,
    coef: float,
    lo: float,
    scale: float,
    bits: int,
    key: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The levels ``q`` (``uint32[n]``) of one tensor of one client: what it bit-packs and sends.

    ``key`` is the tensor's stream key (``derive_key(round_key, client, tensor)``); the levels
    are the ones :func:`quantized_row_sum` decodes for that client and tensor.

    Examples
    --------
    >>> q = stochastic_levels(np.array([0.0, 1.0, 2.5, 3.0]), 1.0, 0.0, 1.0, 2, key=3)  # 2 bits
    >>> bool(q[0] == 0 and q[1] == 1 and q[2] in (2, 3) and q[3] == 3)
    True
    """
    top = _check_top(bits)
    x = np.ascontiguousarray(x).reshape(-1)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if out is None:
        out = np.empty(x.size, dtype=np.uint32)
    _checks.array(out, "out", dtype=np.uint32, shape=(x.size,), writeable=True)
    per_block, inv = _stream_shape(bits)
    if x.size:
        _stochastic_levels(
            x, float(coef), float(lo), float(scale), top, per_block, inv, np.uint64(key), out
        )
    return out


def packed_words(count: int, bits: int) -> int:
    """The int32 words that hold ``count`` values of ``bits`` bits: ``ceil(count * bits / 28)``."""
    return -(-int(count) * int(bits) // WORD_BITS)


def _group(bits: int) -> int:
    return WORD_BITS // int(np.gcd(bits, WORD_BITS))


def pack_bits(values: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Pack integers in ``[0, 2**bits)`` into int32 words of 28 payload bits (module docstring).

    Examples
    --------
    >>> pack_bits(np.array([1, 2, 3], np.uint32), 8)  # 1 + 2 * 2**8 + 3 * 2**16
    array([197121], dtype=int32)
    """
    _check_top(bits)
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise TypeError(f"values must be integers, got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"values must be in [0, 2**{bits}), got [{values.min()}, {values.max()}]")
    values = np.ascontiguousarray(values, dtype=np.uint32).reshape(-1)
    size = packed_words(values.size, bits)
    if out is None:
        out = np.empty(size, dtype=np.int32)
    elif out.shape != (size,) or out.dtype != np.int32:
        raise ValueError(f"out must be int32[{size}], got {out.dtype}{list(out.shape)}")
    if values.size:
        _pack_bits(values, int(bits), _group(bits), out)
    return out


def unpack_bits(
    words: np.ndarray, bits: int, count: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values (``uint32``) from packed words.

    Examples
    --------
    >>> unpack_bits(np.array([197121], np.int32), 8, 3)
    array([1, 2, 3], dtype=uint32)
    """
    _check_top(bits)
    words = np.ascontiguousarray(words, dtype=np.int32).reshape(-1)
    if words.size != packed_words(count, bits):
        raise ValueError(
            f"{count} values of {bits} bits take {packed_words(count, bits)} words, "
            f"got {words.size}"
        )
    if out is None:
        out = np.empty(count, dtype=np.uint32)
    _checks.array(out, "out", dtype=np.uint32, shape=(count,), writeable=True)
    if count:
        _unpack_bits(words, int(bits), _group(bits), out)
    return out


# --------------------------------------------------------------------------------------------
# NumPy twins (bit-exact)
# --------------------------------------------------------------------------------------------


def _words_numpy(key: int, count: int, bits: int) -> np.ndarray:
    """The random numbers of elements ``0 .. count - 1`` of stream ``key`` (``uint64``)."""
    size = chunk_size(bits)
    i = np.arange(count, dtype=np.int64)
    blocks = (i // size) * BLOCKS + (i % BLOCKS)
    slot = (i % size) // BLOCKS  # the row of the chunk's word buffer
    num_blocks = -(-count // size) * BLOCKS  # every block a chunk may read
    w = mix_block_numpy(key, np.arange(num_blocks, dtype=np.uint64))
    if uniform_bits(bits) == 32:
        return w[blocks, slot]
    halves = w[blocks, slot >> 1] >> (np.uint64(16) * (slot & 1).astype(np.uint64))
    return halves & _M16


def _levels_numpy(v: np.ndarray, lo: float, scale: float, words: np.ndarray, bits: int):
    inv = 2.0 ** -uniform_bits(bits)
    top = float((1 << bits) - 1)
    return np.minimum(np.floor((v - lo) * scale + words.astype(np.float64) * inv), top)


def stochastic_levels_numpy(
    x: np.ndarray, coef: float, lo: float, scale: float, bits: int, key: int
) -> np.ndarray:
    """Twin of :func:`stochastic_levels`."""
    _check_top(bits)
    v = float(coef) * np.asarray(x).reshape(-1).astype(np.float64)
    return _levels_numpy(v, lo, scale, _words_numpy(key, v.size, bits), bits).astype(np.uint32)


def quantized_row_sum_numpy(
    matrix: np.ndarray,
    coef: np.ndarray,
    offsets: np.ndarray,
    quantize: np.ndarray,
    lo: np.ndarray,
    scale: np.ndarray,
    step: np.ndarray,
    bits: int,
    round_key: int,
    first_client: int,
    acc: np.ndarray,
) -> np.ndarray:
    """Twin of :func:`quantized_row_sum` (same bits: rows added one at a time, in row order)."""
    _check_top(bits)
    for i in np.flatnonzero(coef):
        for t in range(len(offsets) - 1):
            seg = slice(int(offsets[t]), int(offsets[t + 1]))
            v = coef[i] * matrix[i, seg].astype(np.float64)
            if not v.size:
                continue
            if quantize[t]:
                key = fold_in_numpy(fold_in_numpy(round_key, first_client + int(i)), t)
                words = _words_numpy(key, v.size, bits)
                q = _levels_numpy(v, lo[i, t], scale[i, t], words, bits)
                acc[seg] += lo[i, t] + q * step[i, t]
            else:
                acc[seg] += v
    return acc


def pack_bits_numpy(values: np.ndarray, bits: int) -> np.ndarray:
    """Twin of :func:`pack_bits`: through an explicit array of stream bits."""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    stream = ((values[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).reshape(-1)
    size = packed_words(values.size, bits)
    stream = np.concatenate([stream, np.zeros(size * WORD_BITS - stream.size, np.uint64)])
    powers = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64)
    return (stream.reshape(size, WORD_BITS) * powers).sum(axis=1).astype(np.int32)


def unpack_bits_numpy(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Twin of :func:`unpack_bits`."""
    words = np.asarray(words, dtype=np.int64).reshape(-1).astype(np.uint64)
    stream = ((words[:, None] >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    return (stream << np.arange(bits, dtype=np.uint64)).sum(axis=1).astype(np.uint32)
