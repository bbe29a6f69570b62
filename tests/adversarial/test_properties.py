"""Property tests of the overflow contract (issue 20, items 2 and 3), against exact arithmetic.

* An integer sum is the exact sum, or OverflowError exactly when that sum does not fit the
  tensor's dtype; a Python int that does not fit is an InvalidUpdateError.
* A weighted mean of float64 values is the exact rational mean rounded (to a few ulps), whatever
  the magnitudes of values and weights, or OverflowError only when that mean is not
  representable (it always is here: a mean lies between the extreme values).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import aggkit as ak
from aggkit.errors import InvalidUpdateError

INT_DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "uint8": np.uint8}


@given(
    st.sampled_from(sorted(INT_DTYPES)),
    st.lists(st.integers(-(2**40), 2**40), min_size=0, max_size=6),
    st.sampled_from([(), (3,)]),
)
def test_integer_sum_is_exact_or_refused(dtype_name, values, shape):
    dtype = INT_DTYPES[dtype_name]
    info = np.iinfo(dtype)
    process = ak.sum().create(ak.TensorSpec(shape, dtype))
    clients = [np.full(shape, v).tolist() if shape else v for v in values]
    fits = all(info.min <= v <= info.max for v in values)
    total = sum(values)
    try:
        result = process.next((), clients).result
    except InvalidUpdateError as error:
        assert not fits and "does not fit" in str(error)
        return
    except OverflowError as error:
        assert fits and not info.min <= total <= info.max
        assert "does not fit" in str(error)
        return
    assert fits and info.min <= total <= info.max
    assert np.asarray(result).dtype == dtype
    assert np.all(np.asarray(result) == total)


def _magnitudes():
    # Down to 1e-150: products of a weight and a value stay normal floats (a subnormal product
    # loses precision: underflow is not what this test is about); up to 1e307, where sums overflow
    # (a mantissa in [1, 10) with a sign, or 0: a float mantissa drawn from (-10, 10) can itself
    # be 1e-125, which took products below the float64 normals and out of this test's scope).
    exponent = st.integers(-150, 307)
    mantissa = st.one_of(
        st.just(0.0),
        st.floats(1.0, 9.99).flatmap(lambda m: st.sampled_from([m, -m])),
    )
    return st.builds(lambda m, e: float(m) * 10.0**e, mantissa, exponent)


@given(
    st.lists(st.tuples(_magnitudes(), _magnitudes().map(abs)), min_size=1, max_size=6),
    st.sampled_from([(), (20,)]),
)
def test_weighted_mean_is_the_exact_mean(pairs, shape):
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    if not any(weights):
        return
    want = float(
        sum(Fraction(w) * Fraction(v) for v, w in pairs) / sum(Fraction(w) for w in weights)
    )
    process = ak.mean().create(ak.TensorSpec(shape, np.float64))
    clients = [np.full(shape, v) for v in values]
    got = np.asarray(process.next(process.initialize(), clients, weights).result)
    spread = max(abs(v) for v in values)
    # float64 sums of K terms: a few ulps of the largest weighted term, relative to the weights
    tolerance = 8 * len(values) * np.finfo(np.float64).eps * spread + 1e-300
    assert np.all(np.abs(got - want) <= tolerance), (got, want, tolerance)
