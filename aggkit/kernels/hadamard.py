"""Randomized Walsh-Hadamard rotation: random signs and the fast Walsh-Hadamard transform (FWHT).

A tensor of ``n`` elements is zero-padded to ``d``, the next power of two, and rotated by
``x -> H D x / sqrt(d)``, where ``D`` is a diagonal of random signs and ``H`` the ``d x d``
Hadamard matrix (``H H = d I``); the rotation is orthonormal, so it keeps the L2 norm, and its
inverse is ``y -> D H y / sqrt(d)``. With several repeats, the rotations are applied in order and
inverted in reverse order. Tensors with ``d <= 1`` are left alone.

* :func:`fill_signs` writes the signs of one (tensor, repeat) as int8: sign ``j`` is
  ``rademacher(key, j)`` from :mod:`aggkit.kernels.counter_rng`. Every client of a round uses the
  same signs, so they are drawn once per round, not once per client.
* :func:`rotate_rows` rotates the active rows of a client matrix into a padded matrix (one task
  per row and tensor, on aggkit's task threads like the weighted sum: a numba ``prange`` kernel's
  spinning OpenMP workers held both cores while the round's next, task-thread kernel waited,
  3-5x slower rounds at 2 threads), in the output's dtype: ``out = x * (sign / sqrt(d))`` rounded
  to the output dtype, then the FWHT in that dtype.
* :func:`unrotate` inverts the rotation of one float64 vector (the server's sum), on one thread
  (a fraction of a millisecond; no OpenMP workers left spinning between rounds).

The FWHT is the butterfly network ``(a, b) -> (a + b, a - b)`` over strides 1, 2, 4, ... . Every
butterfly of a stage reads the previous stage's outputs, so the order in which a stage's
butterflies run does not change a bit, and the kernels equal the NumPy twins, which run one stage
at a time over the whole vector, bit for bit, whatever the thread count. The kernels order the
work for the cache and the vector unit:

* A *tile* of ``L * L`` values (``L`` lanes of a 64-byte vector: 256 float32 or 64 float64) goes
  through its first ``2 log2(L)`` stages in registers: strides below ``L`` inside each vector (a
  lane swap and one multiply-add by a vector of +-1), the others between vectors. These are numba
  intrinsics that emit LLVM vector instructions; written as loops, LLVM left the small strides
  scalar, and the stages with strides 1, 2 and 4 cost as much as the other sixteen of a 2**19
  vector.
* Every difference ``a - b`` is computed as ``fma(b, -1, a)``: the product is exact, so the one
  rounding gives the subtraction's bits (signed zeros included), but it runs on the multiply-add
  pipes while the sums run on the adders, on cores that have both kinds of pipe
  (``docs/benchmarks-history.md``, "Hadamard rotation, second look", has the figures).
* An L1 *block* (:data:`BLOCK_BYTES`) is loaded from the client row (signs applied, padding
  added) and taken through every stage below its size: its tiles, then 16-point vector
  butterflies.
* An L2 *segment* (:data:`SEGMENT_BYTES`) runs the stages from the block size up to its own size
  in 8-point passes; only the larger strides make passes over the whole vector (one for the
  2**19 values of the MNIST CNN's largest layer), 8-point too: 16 vectors a few KiB apart fall
  into one L1 set.

The measurements behind these choices are in ``docs/benchmarks-history.md`` ("Hadamard
rotation").
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from aggkit import _checks
from aggkit.kernels._jit import kernel, run_tasks
from aggkit.kernels.counter_rng import _as_key, rademacher, rademacher_numpy

__all__ = [
    "fill_signs",
    "fill_signs_numpy",
    "fwht",
    "fwht_numpy",
    "padded_size",
    "rotate_rows",
    "rotate_rows_numpy",
    "unrotate",
    "unrotate_numpy",
]

#: Bytes of the vectors the butterflies work on: one AVX-512 register (LLVM splits the vector
#: operations into narrower ones on a CPU without AVX-512; every lane's arithmetic, and so every
#: bit, stays the same).
VECTOR_BYTES = 64
#: Bytes of an L1 block: a block's values are loaded (signs applied) and taken through every stage
#: with a smaller stride while they are in L1.
BLOCK_BYTES = 1 << 14
#: Bytes of an L2 segment: the stages with strides from the block size up to the segment size run
#: segment by segment, while the segment is in L2; only the larger strides make passes over the
#: whole vector.
SEGMENT_BYTES = 1 << 18
#: Elements per L1 block of a float32 vector.
BLOCK = BLOCK_BYTES // 4
_SIGN_PIECE = 1 << 16


def padded_size(n: int) -> int:
    """The next power of two ``>= n`` (``n`` itself for 0 and 1)."""
    n = int(n)
    return n if n <= 1 else 1 << (n - 1).bit_length()


# --------------------------------------------------------------------------------------------
# FWHT building blocks
# --------------------------------------------------------------------------------------------
#
# Vector butterflies are numba intrinsics that emit LLVM vector instructions directly: LLVM's
# vectorizer turns the butterflies with strides smaller than a vector into scalar code, which
# made the stages with strides 1, 2 and 4 cost as much as the other sixteen of a 2**19 vector.
# Each lane of a vector add or subtract is the IEEE operation the NumPy twin does on that element
# (``a + b`` is ``b + a`` bit for bit), so the bits are the twin's.


def _vector_type(array_type):
    """``(LLVM element type factory, lanes)`` for a C-contiguous float32/float64 array type."""
    if not isinstance(array_type, types.Array) or array_type.layout != "C":
        raise TypeError(f"vector butterflies need a C-contiguous array, got {array_type}")
    if array_type.dtype not in (types.float32, types.float64):
        raise TypeError(f"vector butterflies need float32 or float64, got {array_type.dtype}")
    return VECTOR_BYTES * 8 // array_type.dtype.bitwidth


def _vector_pointers(context, builder, array_type, array, start, stride, count):
    """Pointers to ``count`` vectors at ``array[start + k * stride]`` and the vector type."""
    lanes = _vector_type(array_type)
    data = context.make_array(array_type)(context, builder, array).data
    vector = ir.VectorType(context.get_data_type(array_type.dtype), lanes)
    first = builder.gep(data, [start])
    pointers = []
    for k in range(count):
        offset = builder.mul(stride, ir.Constant(stride.type, k))
        pointers.append(builder.bitcast(builder.gep(first, [offset]), vector.as_pointer()))
    return pointers, vector


def _fma(builder, a, b, c):
    """``llvm.fma(a, b, c)`` on vectors: ``a * b + c`` rounded once."""
    module = builder.module
    name = f"llvm.fma.v{a.type.count}{'f32' if a.type.element == ir.FloatType() else 'f64'}"
    function = module.globals.get(name)
    if function is None:
        function = ir.Function(module, ir.FunctionType(a.type, [a.type] * 3), name=name)
    return builder.call(function, [a, b, c])


def _opaque(context, builder, value):
    """``value``, hidden from LLVM's optimizer (an empty inline assembly block in a vector
    register), so that ``fma(b, -1, a)`` stays an FMA instead of being folded back to ``a - b``.

    Only where the target has 512-bit registers (AVX-512); elsewhere the operand would not fit
    one, and ``value`` is returned as it is (LLVM may then fold the FMA back into an add or a
    subtract, which gives the same bits)."""
    features = getattr(context.codegen(), "_tm_features", "") or ""
    if "+avx512f" not in features.split(","):
        return value
    asm = ir.InlineAsm(ir.FunctionType(value.type, [value.type]), "", "=v,0")
    return builder.call(asm, [value])


def _minus_one(context, builder, vector):
    return _opaque(context, builder, ir.Constant(vector, [-1.0] * vector.count))


def _butterflies(builder, values, count, minus_one=None):
    """Stages with (vector) strides 1, 2, ... < ``count`` between the vectors ``values``.

    With ``minus_one`` (a vector of -1.0), the differences are ``fma(b, -1, a)``: the same bits as
    ``a - b`` (the product is exact and the sum is rounded once), but on the multiply-add pipes,
    so that the adds and the differences run on different execution units."""
    h = 1
    while h < count:
        out = list(values)
        for k in range(count):
            if not k & h:
                out[k] = builder.fadd(values[k], values[k + h])
                if minus_one is None:
                    out[k + h] = builder.fsub(values[k], values[k + h])
                else:
                    out[k + h] = _fma(builder, values[k + h], minus_one, values[k])
        values = out
        h *= 2
    return values


@intrinsic
def _tile(typingctx, x, start):  # pragma: no cover - compiled
    """Every stage of the FWHT of ``x[start : start + L * L]`` (``L`` lanes per vector), in
    registers: the stages with strides below ``L`` inside each vector (a lane swap and one
    ``fma(v, +-1, swapped)`` per vector), the others between vectors."""
    _vector_type(x)
    itemsize = x.dtype.bitwidth // 8

    def codegen(context, builder, signature, args):
        lanes = _vector_type(signature.args[0])
        step = ir.Constant(args[1].type, lanes)
        pointers, vector = _vector_pointers(
            context, builder, signature.args[0], args[0], args[1], step, lanes
        )
        values = [builder.load(p, align=itemsize) for p in pointers]
        lane_index = ir.VectorType(ir.IntType(32), lanes)
        h = 1
        while h < lanes:
            swap = ir.Constant(lane_index, [j ^ h for j in range(lanes)])
            # fma(v, s, partner), a the lower lane of a pair and b the upper: a lane without bit h
            # holds a and gets a * 1 + b = a + b, a lane with bit h holds b and gets b * -1 + a =
            # a - b, each rounded once: the twin's bits, in one shuffle and one FMA instead of two
            # adds and two shuffles.
            flip = _opaque(
                context,
                builder,
                ir.Constant(vector, [-1.0 if j & h else 1.0 for j in range(lanes)]),
            )
            out = []
            for v in values:
                partner = builder.shuffle_vector(v, ir.Constant(vector, ir.Undefined), swap)
                out.append(_fma(builder, v, flip, partner))
            values = out
            h *= 2
        values = _butterflies(builder, values, lanes, _minus_one(context, builder, vector))
        for v, p in zip(values, pointers, strict=True):
            builder.store(v, p, align=itemsize)
        return context.get_dummy_value()

    return types.void(x, types.intp), codegen


def _radix(points):
    """An intrinsic ``(x, start, h)``: the ``log2(points)`` stages with strides ``h, 2h, ...``
    over the ``points`` vectors at ``x[start + k * h]`` (``h`` a multiple of the lanes)."""

    def radix(typingctx, x, start, h):  # pragma: no cover - compiled
        _vector_type(x)
        itemsize = x.dtype.bitwidth // 8

        def codegen(context, builder, signature, args):
            pointers, _ = _vector_pointers(
                context, builder, signature.args[0], args[0], args[1], args[2], points
            )
            values = [builder.load(p, align=itemsize) for p in pointers]
            minus_one = _minus_one(context, builder, values[0].type)
            for v, p in zip(
                _butterflies(builder, values, points, minus_one), pointers, strict=True
            ):
                builder.store(v, p, align=itemsize)
            return context.get_dummy_value()

        return types.void(x, types.intp, types.intp), codegen

    radix.__name__ = radix.__qualname__ = f"_radix{points}"
    return intrinsic(radix)


_radix2, _radix4, _radix8, _radix16 = (_radix(p) for p in (2, 4, 8, 16))


@kernel(inline=True)
def _radix2_pass(a, b):  # pragma: no cover - compiled
    """One butterfly stage between two halves (scalar)."""
    for j in range(a.shape[0]):
        s = a[j]
        d = b[j]
        a[j] = s + d
        b[j] = s - d


@kernel(inline=True)
def _radix4_pass(a, b, c, e):  # pragma: no cover - compiled
    """Two stages (strides h and 2h) over four quarters ``a, b, c, e`` of length h (scalar)."""
    for j in range(a.shape[0]):
        x0 = a[j]
        x1 = b[j]
        x2 = c[j]
        x3 = e[j]
        s01 = x0 + x1
        d01 = x0 - x1
        s23 = x2 + x3
        d23 = x2 - x3
        a[j] = s01 + s23
        b[j] = d01 + d23
        c[j] = s01 - s23
        e[j] = d01 - d23


@kernel
def _stages(v, h, limit):  # pragma: no cover - compiled
    """The stages with strides ``h, 2h, ... < limit``, scalar (vectors shorter than a tile)."""
    n = v.shape[0]
    while h < limit:
        if 4 * h <= limit:
            for i in range(0, n, 4 * h):
                _radix4_pass(
                    v[i : i + h],
                    v[i + h : i + 2 * h],
                    v[i + 2 * h : i + 3 * h],
                    v[i + 3 * h : i + 4 * h],
                )
            h *= 4
        else:
            for i in range(0, n, 2 * h):
                _radix2_pass(v[i : i + h], v[i + h : i + 2 * h])
            h *= 2


@kernel(inline=True)
def _radix_pass(x, lo, hi, h, points):  # pragma: no cover - compiled
    """``points``-point vector butterflies (strides ``h`` ... ``h * points / 2``) starting at
    every vector of ``x[lo:hi]`` (a piece of one group's first ``h`` values)."""
    lanes = VECTOR_BYTES // x.itemsize
    if points == 16:
        for j in range(lo, hi, lanes):
            _radix16(x, j, h)
    elif points == 8:
        for j in range(lo, hi, lanes):
            _radix8(x, j, h)
    elif points == 4:
        for j in range(lo, hi, lanes):
            _radix4(x, j, h)
    else:
        for j in range(lo, hi, lanes):
            _radix2(x, j, h)


@kernel(inline=True)
def _points(h, limit, most):  # pragma: no cover - compiled
    """Points of the next radix pass from stride ``h`` (at most ``most``, up to ``limit``)."""
    points = 2
    while points < most and points * 2 * h <= limit:
        points *= 2
    return points


@kernel
def _vstages(x, h, limit, most):  # pragma: no cover - compiled
    """The stages with strides ``h, 2h, ... < limit`` over ``x`` (``x.size`` a multiple of
    ``limit``, ``h`` a multiple of the lanes), in passes of up to ``most``-point butterflies.

    Sixteen vectors at a stride of a few KiB fall into one L1 set, more than a 12-way L1 holds,
    so passes outside an L1 block use at most 8 points. Callers pass ``most`` as ``np.intp(...)``:
    a bare constant is typed as a literal, and numba compiled one copy per value (16 and 8)."""
    n = x.shape[0]
    while h < limit:
        points = _points(h, limit, most)
        for i in range(0, n, points * h):
            _radix_pass(x, i, i + h, h, points)
        h *= points


@kernel(inline=True)
def _block_stages(block):  # pragma: no cover - compiled
    """Every stage of the FWHT of ``block`` (a power-of-two multiple of a tile, in L1)."""
    lanes = VECTOR_BYTES // block.itemsize
    tile = lanes * lanes
    for t in range(0, block.shape[0], tile):
        _tile(block, t)
    _vstages(block, tile, block.shape[0], np.intp(16))


@kernel
def _fwht_serial(x):  # pragma: no cover - compiled
    """Unnormalized FWHT of ``x`` in place (``x.size`` a power of two), on one thread."""
    n = x.shape[0]
    lanes = VECTOR_BYTES // x.itemsize
    if n < lanes * lanes:
        _stages(x, 1, n)
        return
    block = min(n, BLOCK_BYTES // x.itemsize)
    segment = min(n, SEGMENT_BYTES // x.itemsize)
    for s in range(0, n, segment):
        piece = x[s : s + segment]
        for b in range(0, segment, block):
            _block_stages(piece[b : b + block])
        _vstages(piece, block, segment, np.intp(8))
    _vstages(x, segment, n, np.intp(8))


@kernel(parallel=True)
def _fwht_parallel(x):  # pragma: no cover - compiled
    """Unnormalized FWHT of ``x`` in place: segments, then pieces of the large-stride passes,
    spread over threads."""
    n = x.shape[0]
    lanes = VECTOR_BYTES // x.itemsize
    if n < lanes * lanes:
        _stages(x, 1, n)
        return
    block = min(n, BLOCK_BYTES // x.itemsize)
    segment = min(n, SEGMENT_BYTES // x.itemsize)
    for s in prange(n // segment):
        piece = x[s * segment : (s + 1) * segment]
        for b in range(0, segment, block):
            _block_stages(piece[b : b + block])
        _vstages(piece, block, segment, np.intp(8))
    h = segment
    while h < n:
        points = _points(h, n, 8)
        # n // (points * h) groups, each cut into pieces of `block` of its first h values.
        per_group = h // block
        for p in prange((n // (points * h)) * per_group):
            lo = (p // per_group) * points * h + (p % per_group) * block
            _radix_pass(x, lo, lo + block, h, points)
        h *= points


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@kernel
def _fill_signs(first, stop, key, out):  # pragma: no cover - compiled
    n = out.shape[0]
    for piece in range(first, stop):
        start = piece * _SIGN_PIECE
        part = out[start : min(n, start + _SIGN_PIECE)]
        for j in range(part.shape[0]):
            part[j] = np.int8(rademacher(key, start + j))


@intrinsic
def _rounded(typingctx, value, like):  # pragma: no cover - compiled
    """``value`` converted to the dtype of the array ``like`` (an int64 client value becomes the
    float32 the twin's ``y[:n] = src`` stores, before the float64 sign multiply)."""

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], signature.args[1].dtype)

    return like.dtype(value, like), codegen


@kernel(inline=True)
def _load_signed(block, src, signs, inv):  # pragma: no cover - compiled
    """``block = src`` (zeros past its end) rounded to the block's dtype, times ``signs * inv``
    in float64 and rounded again (padding becomes ``0 * -inv = -0.0`` where the sign is
    negative, as in the twin)."""
    m = min(block.shape[0], src.shape[0])
    # ``x * (sign * inv)`` as ``+-(x * inv)``: the same bits (rounding is symmetric), and a
    # select instead of an int8-to-float64 conversion and a second multiply.
    for j in range(m):
        v = _rounded(src[j], block) * inv
        block[j] = -v if signs[j] < 0 else v
    for j in range(m, block.shape[0]):
        block[j] = -0.0 if signs[j] < 0 else 0.0


@kernel(inline=True)
def _times_signs(block, signs, inv):  # pragma: no cover - compiled
    for j in range(block.shape[0]):
        block[j] = block[j] * (signs[j] * inv)


@kernel
def _rotate_once(src, dst, signs, inv, first):  # pragma: no cover - compiled
    """``dst = FWHT(x * signs * inv)`` with ``x = src`` zero-padded (``first``) or ``dst``: each
    L1 block is loaded and signed just before its stages run, and each L2 segment goes through its
    stages while it is in L2."""
    d = dst.shape[0]
    lanes = VECTOR_BYTES // dst.itemsize
    if d < lanes * lanes:
        if first:
            _load_signed(dst, src, signs, inv)
        else:
            _times_signs(dst, signs, inv)
        _stages(dst, 1, d)
        return
    block = min(d, BLOCK_BYTES // dst.itemsize)
    segment = min(d, SEGMENT_BYTES // dst.itemsize)
    for s in range(0, d, segment):
        for b in range(s, s + segment, block):
            if first:
                _load_signed(dst[b : b + block], src[b : b + block], signs[b : b + block], inv)
            else:
                _times_signs(dst[b : b + block], signs[b : b + block], inv)
            _block_stages(dst[b : b + block])
        _vstages(dst[s : s + segment], block, segment, np.intp(8))
    _vstages(dst, segment, d, np.intp(8))


@kernel
def _rotate_rows(
    first, stop, matrix, rows, offsets, padded, signs, sign_offsets, out
):  # pragma: no cover
    """Tasks ``first .. stop - 1`` (one per active row and tensor), run by ``run_tasks``."""
    num_tensors = offsets.shape[0] - 1
    repeats = sign_offsets.shape[1]
    for task in range(first, stop):
        i = rows[task // num_tensors]
        t = task % num_tensors
        src = matrix[i, offsets[t] : offsets[t + 1]]
        dst = out[i, padded[t] : padded[t + 1]]
        d = dst.shape[0]
        if d == 1:
            dst[0] = src[0]
        elif d > 1:
            inv = 1.0 / np.sqrt(np.float64(d))
            for r in range(repeats):
                start = sign_offsets[t, r]
                _rotate_once(src, dst, signs[start : start + d], inv, r == 0)


@kernel
def _unrotate_tensor(y, signs, inv):  # pragma: no cover - compiled
    _fwht_serial(y)
    for j in range(y.shape[0]):
        y[j] = y[j] * (signs[j] * inv)


# --------------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------------


def fwht(x: np.ndarray) -> np.ndarray:
    """The unnormalized fast Walsh-Hadamard transform of ``x`` (power-of-two length), in place.

    Examples
    --------
    >>> fwht(np.array([1.0, 0.0, 0.0, 0.0]))
    array([1., 1., 1., 1.])
    >>> fwht(np.array([1.0, 2.0, 3.0, 4.0]))
    array([10., -2., -4.,  0.])
    """
    if x.ndim != 1 or (x.size & (x.size - 1)):
        raise ValueError(f"fwht needs a 1-D array of power-of-two length, got shape {x.shape}")
    _checks.array(x, "x", dtype=(np.float32, np.float64), ndim=1, writeable=True)
    _fwht_parallel(x)
    return x


def fill_signs(out: np.ndarray, key: int) -> np.ndarray:
    """Fill ``int8`` ``out`` with random signs: ``out[j] = rademacher(key, j)``."""
    _checks.array(out, "out", dtype=np.int8, ndim=1, writeable=True)
    run_tasks(_fill_signs, -(-out.size // _SIGN_PIECE), _as_key(key), out)
    return out


def _check_rotation(
    offsets: np.ndarray,
    padded: np.ndarray,
    signs: np.ndarray,
    sign_offsets: np.ndarray,
    columns: int,
    padded_columns: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The tensor boundaries of a rotation, checked against the arrays they index."""
    offsets = _checks.offsets(offsets, columns)
    padded = _checks.offsets(padded, padded_columns, "padded")
    if padded.shape != offsets.shape:
        raise ValueError(f"padded must have {offsets.size} entries, got {padded.size}")
    sizes, padded_sizes = np.diff(offsets), np.diff(padded)
    if ((padded_sizes < sizes) | (padded_sizes & (padded_sizes - 1) != 0)).any():
        raise ValueError("padded sizes must be powers of two no smaller than the tensors' sizes")
    _checks.array(signs, "signs", dtype=np.int8, ndim=1)
    _checks.array(sign_offsets, "sign_offsets", dtype=np.int64, shape=(offsets.size - 1, None))
    ends = sign_offsets + padded_sizes[:, None]
    if sign_offsets.size and ((sign_offsets < 0).any() or ends.max() > signs.size):
        raise ValueError(
            f"signs must hold every tensor's signs ({int(ends.max())}), got {signs.size}"
        )
    return offsets, padded


def rotate_rows(
    matrix: np.ndarray,
    coef: np.ndarray,
    offsets: np.ndarray,
    padded: np.ndarray,
    signs: np.ndarray,
    sign_offsets: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Rotate every row with ``coef != 0`` into ``out``; other rows of ``out`` become zeros.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``[K, n]`` client rows (any real dtype).
    coef : numpy.ndarray
        ``[K]``; rows with coefficient 0 are not read (they may hold NaN).
    offsets, padded : numpy.ndarray
        ``int64[T + 1]`` tensor boundaries in ``matrix`` and in ``out`` (padded sizes are
        :func:`padded_size` of the sizes).
    signs : numpy.ndarray
        ``int8`` signs of all tensors and repeats; those of tensor ``t``, repeat ``r`` start at
        ``sign_offsets[t, r]`` (``int64[T, R]``) and are ``padded`` long.
    out : numpy.ndarray
        ``[K, N]`` float32 or float64, C-contiguous.

    Examples
    --------
    >>> x = np.array([[3.0, 4.0]])
    >>> y = rotate_rows(x, np.ones(1), np.array([0, 2]), np.array([0, 2]),
    ...                 np.array([1, 1], np.int8), np.zeros((1, 1), np.int64), np.empty((1, 2)))
    >>> np.round(y * np.sqrt(2), 12)  # (3 + 4, 3 - 4)
    array([[ 7., -1.]])
    """
    _checks.array(matrix, "matrix", dtype=(np.float32, np.float64, np.int64), ndim=2)
    _checks.array(coef, "coef", dtype=np.float64, shape=(matrix.shape[0],))
    _checks.array(out, "out", dtype=(np.float32, np.float64), ndim=2, writeable=True)
    if out.shape[0] != matrix.shape[0]:
        raise ValueError(f"out must have a row per client ({matrix.shape[0]}), got {out.shape}")
    offsets, padded = _check_rotation(
        offsets, padded, signs, sign_offsets, matrix.shape[1], out.shape[1]
    )
    active = coef != 0
    out[~active] = 0
    rows = np.flatnonzero(active).astype(np.int64)
    if rows.size and len(offsets) > 1:
        tasks = rows.size * (len(offsets) - 1)
        run_tasks(_rotate_rows, tasks, matrix, rows, offsets, padded, signs, sign_offsets, out)
    return out


def unrotate(
    vector: np.ndarray,
    offsets: np.ndarray,
    padded: np.ndarray,
    signs: np.ndarray,
    sign_offsets: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Invert :func:`rotate_rows` on one float64 vector (the server's sum), tensor by tensor.

    ``vector`` (``float64[N]``, padded layout) is overwritten; tensor ``t`` lands in
    ``out[offsets[t]:offsets[t + 1]]``.
    """
    _checks.array(vector, "vector", dtype=np.float64, ndim=1, writeable=True)
    _checks.array(out, "out", dtype=(np.float32, np.float64), ndim=1, writeable=True)
    offsets, padded = _check_rotation(offsets, padded, signs, sign_offsets, out.size, vector.size)
    for t in range(len(offsets) - 1):
        y = vector[padded[t] : padded[t + 1]]
        d = y.size
        if d > 1:
            inv = 1.0 / np.sqrt(np.float64(d))
            for r in reversed(range(sign_offsets.shape[1])):
                s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                _unrotate_tensor(y, s, inv)
        out[offsets[t] : offsets[t + 1]] = y[: offsets[t + 1] - offsets[t]]
    return out


# --------------------------------------------------------------------------------------------
# NumPy twins (bit-exact)
# --------------------------------------------------------------------------------------------


def fwht_numpy(x: np.ndarray) -> np.ndarray:
    """Twin of :func:`fwht`: one stage at a time over the whole vector (returns a new array)."""
    y = np.array(x)
    n = y.size
    h = 1
    while h < n:
        v = y.reshape(-1, 2, h)
        a = v[:, 0, :].copy()
        b = v[:, 1, :].copy()
        v[:, 0, :] = a + b
        v[:, 1, :] = a - b
        h *= 2
    return y


def fill_signs_numpy(size: int, key: int) -> np.ndarray:
    """Twin of :func:`fill_signs`."""
    return rademacher_numpy(key, np.arange(size, dtype=np.uint64)).astype(np.int8)


def rotate_rows_numpy(matrix, coef, offsets, padded, signs, sign_offsets, out) -> np.ndarray:
    """Twin of :func:`rotate_rows`."""
    out[...] = 0
    for i in np.flatnonzero(coef != 0):
        for t in range(len(offsets) - 1):
            src = matrix[i, offsets[t] : offsets[t + 1]]
            d = int(padded[t + 1] - padded[t])
            y = np.zeros(d, dtype=out.dtype)
            y[: src.size] = src
            if d > 1:
                inv = 1.0 / np.sqrt(np.float64(d))
                for r in range(sign_offsets.shape[1]):
                    s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                    y = (y.astype(np.float64) * (s * inv)).astype(out.dtype)
                    y = fwht_numpy(y)
            out[i, padded[t] : padded[t + 1]] = y
    return out


def unrotate_numpy(vector, offsets, padded, signs, sign_offsets, out) -> np.ndarray:
    """Twin of :func:`unrotate` (does not modify ``vector``)."""
    for t in range(len(offsets) - 1):
        y = np.array(vector[padded[t] : padded[t + 1]], dtype=np.float64)
        d = y.size
        if d > 1:
            inv = 1.0 / np.sqrt(np.float64(d))
            for r in reversed(range(sign_offsets.shape[1])):
                s = signs[sign_offsets[t, r] : sign_offsets[t, r] + d]
                y = fwht_numpy(y) * (s * inv)
        out[offsets[t] : offsets[t + 1]] = y[: offsets[t + 1] - offsets[t]]
    return out
