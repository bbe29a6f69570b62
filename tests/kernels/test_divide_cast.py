"""The mean's last pass against its NumPy twin: the same bits, NaN, Inf and zeros included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggkit.kernels.divide_cast import divide_cast, divide_cast_numpy

totals = hnp.arrays(
    np.float64,
    st.integers(0, 300),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
denominators = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1e-300, 3.0])
)


@given(totals, denominators, st.sampled_from([np.float32, np.float64]), st.integers(1, 70))
def test_matches_twin_bit_for_bit(total, denominator, dtype, block):
    ours = divide_cast(total, denominator, np.empty(total.size, dtype), block=block)
    twin = divide_cast_numpy(total, denominator, np.empty(total.size, dtype))
    np.testing.assert_array_equal(ours.view(f"u{ours.itemsize}"), twin.view(f"u{twin.itemsize}"))


def test_in_place_and_overflow_to_float32():
    total = np.array([1.0, -2.0, 1e300, np.nan])
    out = divide_cast(total.copy(), 2.0, np.empty(4, np.float32))
    assert out.tolist()[:2] == [0.5, -1.0] and out[2] == np.inf and np.isnan(out[3])
    same = total.copy()
    assert divide_cast(same, 4.0, same) is same
    np.testing.assert_array_equal(same, total / 4.0)


def test_rejects_wrong_buffers():
    with pytest.raises(TypeError, match="total must be float64"):
        divide_cast(np.zeros(3, np.float32), 1.0, np.empty(3, np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(3,\)"):
        divide_cast(np.zeros(3), 1.0, np.empty(4, np.float32))
    with pytest.raises(TypeError, match="out must be float32 or float64"):
        divide_cast(np.zeros(3), 1.0, np.empty(3, np.int32))
