"""``min2``/``max2`` give Python's ``min``/``max`` of two numbers, inside kernels, bit for bit;
``select`` the conditional expression."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.kernels._minmax import max2, min2, select


@numba.njit  # not cached: a kernel of a test file
def _both(a, b):  # pragma: no cover - compiled
    return min2(a, b), max2(a, b)


@numba.njit  # not cached: a kernel of a test file
def _pick(c, a, b):  # pragma: no cover - compiled
    return select(c, a, b), select(a < b, a, b)


def _same(ours, twin) -> bool:
    if isinstance(twin, float) and math.isnan(twin):
        return math.isnan(ours)
    # The sign of a zero counts: min(-0.0, 0.0) is -0.0 and min(0.0, -0.0) is 0.0.
    return (
        ours == twin
        and type(ours) is type(twin)
        and math.copysign(1, ours) == math.copysign(1, twin)
    )


FLOATS = st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, -0.0, math.inf, -math.inf]))


@given(FLOATS, FLOATS)
def test_floats_match_the_builtins_nan_and_signed_zeros_included(a, b):
    low, high = _both(a, b)
    assert _same(low, min(a, b)) and _same(high, max(a, b))


@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1))
def test_integers_match_the_builtins(a, b):
    assert _both(a, b) == (min(a, b), max(a, b))


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
def test_int32_stay_int32_like_numbas_builtins(a, b):
    low, high = _both(np.int32(a), np.int32(b))
    assert (low, high) == (min(a, b), max(a, b))
    assert _both.nopython_signatures[-1].return_type.dtype.bitwidth == 32


def test_mixed_types_unify_as_the_builtins_do():
    assert _both(3, 2.5) == (2.5, 3.0)  # int and float: a float, as numba's min/max return
    assert _both(np.uint64(5), np.uint64(2**63 + 1)) == (5, 2**63 + 1)


@given(st.booleans(), FLOATS, FLOATS)
def test_select_is_the_conditional_expression_nan_and_signed_zeros_included(c, a, b):
    picked, lower = _pick(c, a, b)
    assert _same(picked, a if c else b) and _same(lower, a if a < b else b)


def test_select_unifies_its_values_and_takes_only_a_boolean():
    assert _pick(True, 3, 2.5) == (3.0, 2.5)
    assert _pick(False, np.uint64(2**63 + 1), np.uint64(5)) == (5, 5)
    with pytest.raises(numba.TypingError):
        _pick(1, 2.0, 3.0)  # an integer condition is refused, not read as a truth value
