"""``min2(a, b)`` and ``max2(a, b)``: Python's ``min`` and ``max`` of two numbers, for kernels;
``select(c, a, b)``: ``a if c else b`` without a branch.

numba compiles the builtins ``min`` and ``max`` through an overload, one small function per pair of
argument types: 0.02-0.05 s of CPU time each with an empty cache, and a preset's first round met
five or six of them (``docs/benchmarks-history.md``, "Cold start"). These two are intrinsics: they
emit the very instructions of numba's ``min``/``max`` (both arguments cast to their unified type,
then ``b if b < a else a`` for ``min`` and ``b if b > a else a`` for ``max`` as one ``select``)
in the calling kernel, with nothing of their own to compile. So they give the builtins' results
bit for bit, NaN included (``min2(nan, 1.0)`` is nan, ``min2(1.0, nan)`` is 1.0, as in Python),
and loops over them vectorize as before. Their twins are the builtins themselves.

``select(c, a, b)`` is ``a if c else b`` (both already computed, cast to their unified type) as one
``select`` instruction. Inside a loop LLVM turns a short ``if`` into that instruction anyway, so
the machine code is the same; what changes is numba's own work: every ``if`` is a block of numba's
IR, and a device function inlined at the IR level is copied block by block (each copy carrying
the function's whole variable scope), then typed and lowered. Branch-free helpers
(``counter_rng._log_unit``, ``counter_rng._cos_sin_turns``) cost a fraction of that
(``docs/benchmarks-history.md``, "Cold start", fourth pass). Its twin is the conditional
expression.

Example
-------
>>> import numba
>>> @numba.njit  # aggkit's own kernels use @kernel
... def clamp(x, lo, hi):
...     return min2(max2(x, lo), hi)
>>> clamp(5, 0, 3), clamp(-1.5, 0.0, 3.0)
(3, 0.0)
>>> @numba.njit
... def halve_large(x):
...     return select(x > 1.0, x * 0.5, x)
>>> halve_large(4.0), halve_large(0.5)
(2.0, 0.5)
"""

from __future__ import annotations

import operator

from numba.core import types, typing
from numba.extending import intrinsic

__all__ = ["max2", "min2", "select"]


def _select(compare, builtin):
    """An intrinsic ``f(a, b)``: ``b if compare(b, a) else a`` in the unified type of a and b."""

    def typer(typingctx, a, b):
        if not all(isinstance(t, (types.Number, types.Boolean)) for t in (a, b)):
            return None
        unified = typingctx.unify_types(types.unliteral(a), types.unliteral(b))
        if unified is None:
            return None

        def codegen(context, builder, signature, args):
            x = context.cast(builder, args[0], signature.args[0], unified)
            y = context.cast(builder, args[1], signature.args[1], unified)
            test = context.get_function(compare, typing.signature(types.boolean, unified, unified))
            return builder.select(test(builder, (y, x)), y, x)

        return unified(a, b), codegen

    typer.__name__ = builtin.__name__ + "2"
    return intrinsic(typer)


min2 = _select(operator.lt, min)
max2 = _select(operator.gt, max)


@intrinsic
def select(typingctx, c, a, b):
    """``a if c else b`` for a boolean ``c`` and numbers ``a``, ``b`` (cast to their unified type),
    as one ``select`` instruction: both are computed, no block is made."""
    if not isinstance(c, types.Boolean) or not all(
        isinstance(t, (types.Number, types.Boolean)) for t in (a, b)
    ):
        return None
    unified = typingctx.unify_types(types.unliteral(a), types.unliteral(b))
    if unified is None:
        return None

    def codegen(context, builder, signature, args):
        test = context.is_true(builder, signature.args[0], args[0])
        x = context.cast(builder, args[1], signature.args[1], unified)
        y = context.cast(builder, args[2], signature.args[2], unified)
        return builder.select(test, x, y)

    return unified(c, a, b), codegen
