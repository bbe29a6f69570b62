"""The discretize kernels against their NumPy twins: same accumulators and counts, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aggkit.kernels import discretize
from aggkit.kernels.discretize import (
    MAX_CODE,
    decode_sum,
    decode_sum_numpy,
    discretize_sum,
    discretize_sum_int,
    discretize_sum_int_numpy,
    discretize_sum_numpy,
    encode_float_numpy,
    encode_int_numpy,
    modular_sum,
    modular_sum_numpy,
)
from aggkit.secure.secure_sum import MIN_FLOAT_SPAN, FloatCode
from tests.strategies import client_matrices, coefficients

# Ranges that contain 0 (the fast form), ranges far from 0 (the literal form), empty ranges.
RANGES = st.one_of(
    st.tuples(st.floats(-1e6, 0), st.floats(0, 1e6)),
    st.tuples(st.floats(-1e3, 1e3), st.floats(0, 1e-3)).map(lambda t: (t[0], t[0] + t[1])),
    st.tuples(st.floats(1e5, 1e7), st.floats(1e-6, 10.0)).map(lambda t: (t[0], t[0] + t[1])),
    st.floats(-10, 10).map(lambda v: (v, v)),
)


def _code(lo: float, hi: float, dtype) -> FloatCode:
    return FloatCode.of(lo, hi, dtype)


def _both(matrix, coef, code, block=discretize.BLOCK, start=0):
    args = (code.lo, code.hi, code.scale, code.shift)
    ours = np.full(matrix.shape[1], start, np.int64)
    twin = np.full(matrix.shape[1], start, np.int64)
    flags = discretize_sum(matrix, coef, *args, ours, block=block, numpy_columns=0)
    twin_flags = discretize_sum_numpy(matrix, coef, *args, twin)
    return ours, twin, flags, twin_flags


@given(
    st.data(),
    client_matrices(allow_nonfinite=False, magnitude=1e7),
    RANGES,
    st.integers(1, 64),
)
def test_float_matches_twin_bit_for_bit(data, matrix, bounds, block):
    coef = data.draw(coefficients(matrix.shape[0]))
    code = _code(*bounds, matrix.dtype)
    ours, twin, flags, twin_flags = _both(
        matrix, coef, code, block, start=data.draw(st.integers(-(2**62), 2**62))
    )
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(flags, twin_flags)


@given(
    st.data(),
    client_matrices(allow_nonfinite=False, magnitude=1e7, max_rows=7),
    RANGES,
    st.integers(1, 32),
    st.integers(1, 64),
)
def test_narrow_codes_match_twin_and_stay_below_their_largest_code(
    data, matrix, bounds, bits, block
):
    coef = data.draw(coefficients(matrix.shape[0]))
    code = FloatCode.of(*bounds, matrix.dtype, bits)
    assert code.max_code == 2**bits - 1 and code.bits == bits
    args = (code.lo, code.hi, code.scale, code.shift)
    ours = np.zeros(matrix.shape[1], np.int64)
    twin = np.zeros(matrix.shape[1], np.int64)
    flags = discretize_sum(
        matrix, coef, *args, ours, block=block, numpy_columns=0, max_code=code.max_code
    )
    twin_flags = discretize_sum_numpy(matrix, coef, *args, twin, max_code=code.max_code)
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(flags, twin_flags)
    rows = discretize.discretize_rows_numpy(matrix, coef, *args, max_code=code.max_code)
    assert rows.min(initial=0) >= 0 and rows.max(initial=0) <= code.max_code
    np.testing.assert_array_equal(rows.sum(axis=0, dtype=np.int64), twin)


def test_a_value_at_the_upper_bound_is_clamped_to_the_narrow_largest_code():
    # lo * scale = -0.5 and hi * scale = 2**b - 1.5 round to -0 and 2**b - 2: one code short; with
    # lo * scale = 0.5, hi * scale = 2**b - 0.5 they round to 0 and 2**b (even): one code over,
    # which the clamp brings back to 2**b - 1, in the kernel's fast form and in the twin.
    bits = 22
    scale = 1.0
    lo, hi = 0.5, 2.0**bits - 0.5
    x = np.array([[hi, lo, hi, hi, hi]] * 5, np.float64)
    for columns in (0, 10):
        out = np.zeros(5, np.int64)
        discretize_sum(
            x, np.ones(5), lo, hi, scale, 0, out, numpy_columns=columns, max_code=2**bits - 1
        )
        assert out.tolist() == [5 * (2**bits - 1), 0, *[5 * (2**bits - 1)] * 3]
    assert encode_float_numpy(np.array([hi]), lo, hi, scale, 0, 2**bits - 1)[0] == 2**bits - 1
    with pytest.raises(ValueError, match="max_code"):
        discretize_sum(x, np.ones(5), lo, hi, scale, 0, np.zeros(5, np.int64), max_code=2**32)


@given(client_matrices(allow_nonfinite=False, max_rows=7), RANGES)
def test_float_codes_are_in_range_and_count_every_client(matrix, bounds):
    lo, hi = (float(matrix.dtype.type(b)) for b in bounds)
    if 0 < hi - lo < MIN_FLOAT_SPAN:  # e.g. [0, 1e-308]: the code's scale would overflow
        with pytest.raises(ValueError, match="too close"):
            _code(*bounds, matrix.dtype)
        return
    code = _code(*bounds, matrix.dtype)
    coef = np.ones(matrix.shape[0])
    out = np.zeros(matrix.shape[1], np.int64)
    discretize_sum(matrix, coef, code.lo, code.hi, code.scale, code.shift, out)
    assert (out >= 0).all() and (out <= MAX_CODE * matrix.shape[0]).all()


def test_infinities_are_clipped_and_reported_as_non_finite_like_nan():
    matrix = np.array(
        [[np.inf, 0.5, -np.inf], [1.0, 2.0, 3.0], [0.0, np.nan, 0.0]], dtype=np.float32
    )
    code = _code(-1.0, 1.0, np.float32)
    for coef in (np.ones(3), np.array([1.0, 0.5, 2.0])):
        ours, twin, flags, twin_flags = _both(matrix, coef, code)
        np.testing.assert_array_equal(flags, twin_flags)
        assert flags[0].tolist() == [1, 1, 2]  # clipped, and both reported (issue 20, item 5)
        assert flags[2].tolist() == [0, 0, 1]
    # The accumulators agree anyway; Inf became the bounds (callers refuse the row).
    ours, twin, flags, _ = _both(matrix[:2], np.ones(2), code)
    np.testing.assert_array_equal(ours, twin)
    assert ours[0] == MAX_CODE + MAX_CODE and ours[2] == 0 + MAX_CODE


def test_zero_coefficient_rows_hold_zeros_even_over_nan():
    matrix = np.array([[np.nan, np.inf, 5.0], [0.25, -0.25, 0.0]], np.float64)
    code = _code(0.5, 2.0, np.float64)  # 0 is below the range: a zero row is clipped up
    ours, twin, flags, twin_flags = _both(matrix, np.array([0.0, 1.0]), code)
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(flags, twin_flags)
    assert flags[0].tolist() == [0, 3, 0]
    # Both rows sit at the lower bound: code 0 each.
    assert ours.tolist() == [0, 0, 0]


# Each case compiles its own kernel (aggkit.kernels.discretize._float_kernel): the fast and the
# literal form of the code, with and without rows left over after the groups of four.
@pytest.mark.parametrize("rows", [9, 10])  # 8 active rows (two groups of four), 9 (one left)
@pytest.mark.parametrize("bounds", [(-2.0, 2.0), (1e6, 1e6 + 0.5)])
def test_float_matches_twin_in_every_kernel_case(rows, bounds):
    rng = np.random.default_rng(rows)
    matrix = rng.standard_normal((rows, 3 * discretize.BLOCK + 5)).astype(np.float32) * 3
    matrix[:, :7] += 1e6  # some values inside the far range too
    coef = rng.random(rows)
    coef[4] = 0.0
    ours, twin, flags, twin_flags = _both(matrix, coef, _code(*bounds, np.float32))
    np.testing.assert_array_equal(ours, twin)
    np.testing.assert_array_equal(flags, twin_flags)
    assert flags[:, :2].sum() > 0  # something was clipped


def test_more_rows_than_one_call_takes(monkeypatch):
    monkeypatch.setattr(discretize, "_ROWS_PER_CALL", 3)
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((11, 300)).astype(np.float32) * 3
    coef = rng.random(11)
    coef[4] = 0.0
    for bounds in ((-2.0, 2.0), (1e6, 1e6 + 0.5)):
        ours, twin, flags, twin_flags = _both(matrix, coef, _code(*bounds, np.float32), block=7)
        np.testing.assert_array_equal(ours, twin)
        np.testing.assert_array_equal(flags, twin_flags)
    matrix[1, 17] = np.nan  # in the first call of several: still reported
    _, _, flags, twin_flags = _both(matrix, coef, _code(-2.0, 2.0, np.float32), block=7)
    np.testing.assert_array_equal(flags, twin_flags)
    assert flags[1, 2] == 1


def test_encode_matches_the_literal_formula_on_exact_values():
    # The client shift, float: [-2, -1, 1, 2] in [-1, 1] -> [0, 0, MAX, MAX].
    code = _code(-1.0, 1.0, np.float32)
    assert code.encode(np.array([-2.0, -1.0, 1.0, 2.0])).tolist() == [0, 0, MAX_CODE, MAX_CODE]
    # The code of v is rint(v * s) - rint(lo * s), rounding half to even.
    v = np.array([0.0, 0.3, -0.7, 1e-9])
    expected = [int(np.rint(x * code.scale)) - int(np.rint(-1.0 * code.scale)) for x in v]
    assert encode_float_numpy(v, -1.0, 1.0, code.scale, code.shift).tolist() == expected


@given(
    st.data(),
    st.integers(0, 7),
    st.integers(0, 60),
    st.integers(1, 16),
    st.sampled_from([(0, 255), (-255, 256), (4, 20), (0, 0), (-(2**31), 2**31 - 1)]),
)
def test_int_matches_twin(data, rows, cols, block, bounds):
    rng = np.random.default_rng(rows * 61 + cols)
    lo, hi = bounds
    matrix = rng.integers(-(2**40), 2**40, size=(rows, cols))
    matrix[:, ::3] = rng.integers(lo - 3, hi + 4, size=matrix[:, ::3].shape)
    coef = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=rows, max_size=rows))
    coef = np.asarray(coef, dtype=np.float64)
    divisor = data.draw(st.integers(1, 5))
    ours, twin = np.zeros(cols, np.int64), np.zeros(cols, np.int64)
    flags = discretize_sum_int(matrix, coef, lo, hi, divisor, ours, block=block, numpy_columns=0)
    np.testing.assert_array_equal(
        flags, discretize_sum_int_numpy(matrix, coef, lo, hi, divisor, twin)
    )
    np.testing.assert_array_equal(ours, twin)


def test_int_codes_of_the_reference_examples():
    values = np.array([0, 1, 2, 3, 5, -254, -255, -256, 255, 256, 257])
    assert encode_int_numpy(values, -255, 256).tolist() == [
        255, 256, 257, 258, 260, 1, 0, 0, 510, 511, 511
    ]  # fmt: skip
    # int64 with hi - lo = 2**32 - 1: divisor 2.
    big = np.array([-1, 0, 2**31, 2**32, 2**32 - 1, 2**32 - 2, 2**32 - 3, 2**63 - 1])
    assert encode_int_numpy(big, 0, 2**32 - 1, 2).tolist() == [
        0, 0, 2**30, 2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 2, 2**31 - 1
    ]  # fmt: skip
    # The full int64 range: differences up to 2**64 - 1 are exact in uint64.
    lo, hi = -(2**63), 2**63 - 1
    divisor = (hi - lo) // MAX_CODE + 1
    codes = encode_int_numpy(np.array([lo, 0, hi]), lo, hi, divisor)
    assert codes.tolist() == [0, 2**63 // divisor, (2**64 - 1) // divisor]


def test_int_refuses_what_could_overflow():
    matrix = np.zeros((3, 2), np.int64)
    with pytest.raises(ValueError, match="overflow"):
        discretize_sum_int(matrix, np.ones(3), -(2**62), 2**62, 1, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="coefficients 0 or 1"):
        discretize_sum_int(matrix, np.full(3, 2.0), 0, 1, 1, np.zeros(2, np.int64))


@given(
    st.data(),
    st.integers(0, 7),
    st.integers(0, 40),
    st.one_of(st.integers(1, 50), st.integers(1, 2**62)),
    st.integers(1, 16),
)
def test_modular_matches_python_integers(data, rows, cols, modulus, block):
    rng = np.random.default_rng(rows + 7 * cols)
    matrix = rng.integers(-(2**63), 2**63 - 1, size=(rows, cols), endpoint=True)
    coef = np.asarray(
        data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=rows, max_size=rows))
    )
    start = rng.integers(0, modulus, size=cols)
    ours = modular_sum(matrix, coef, modulus, start.copy(), block=block)
    twin = modular_sum_numpy(matrix, coef, modulus, start.copy())
    expected = [
        (int(start[j]) + sum(int(matrix[i, j]) for i in range(rows) if coef[i])) % modulus
        for j in range(cols)
    ]
    assert ours.tolist() == twin.tolist() == expected


def test_empty_inputs():
    code = _code(-1.0, 1.0, np.float32)
    args = (code.lo, code.hi, code.scale, code.shift)
    assert discretize_sum(
        np.zeros((0, 4), np.float32), np.zeros(0), *args, np.zeros(4, np.int64)
    ).shape == (0, 3)
    flags = discretize_sum(np.zeros((2, 0), np.float32), np.ones(2), *args, np.zeros(0, np.int64))
    assert flags.tolist() == [[0, 0, 0], [0, 0, 0]]
    assert modular_sum(np.zeros((0, 3), np.int64), np.zeros(0), 5, np.zeros(3, np.int64)).sum() == 0


def test_bad_arguments():
    with pytest.raises(TypeError):
        discretize_sum(
            np.zeros((1, 2), np.int64), np.ones(1), 0.0, 1.0, 1.0, 0, np.zeros(2, np.int64)
        )
    with pytest.raises(TypeError, match="out must be int64"):  # a wrong dtype is a TypeError
        discretize_sum(np.zeros((1, 2), np.float32), np.ones(1), 0.0, 1.0, 1.0, 0, np.zeros(2))
    with pytest.raises(ValueError, match="modulus"):
        modular_sum(np.zeros((1, 2), np.int64), np.ones(1), 2**62 + 1, np.zeros(2, np.int64))


SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from aggkit.kernels import discretize as d
    from aggkit.secure.secure_sum import MIN_FLOAT_SPAN, FloatCode

    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    x = (rng.standard_normal((13, 20_011)) * 2).astype(np.float32)
    coef = rng.random(13)
    coef[3] = 0.0
    for lo, hi in ((-1.0, 1.0), (1e6, 1e6 + 1.0)):
        c = FloatCode.of(lo, hi, np.float32)
        out = np.zeros(20_011, np.int64)
        flags = d.discretize_sum(x, coef, c.lo, c.hi, c.scale, c.shift, out, block=512)
        digest.update(out.tobytes() + flags.tobytes())
    ints = rng.integers(-1000, 1000, size=(9, 5_003))
    out = np.zeros(5_003, np.int64)
    digest.update(d.discretize_sum_int(ints, np.ones(9), -300, 300, 1, out, block=256).tobytes())
    digest.update(out.tobytes())
    total = d.modular_sum(ints, np.ones(9), 97, np.zeros(5_003, np.int64), block=256)
    digest.update(total.tobytes())
    print(digest.hexdigest())
    """
)


def test_bits_do_not_depend_on_thread_count():
    def run(threads: int) -> str:
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    one, two = run(1), run(2)
    assert len(one) == 64 and one == two


@given(client_matrices(allow_nonfinite=False, max_rows=5, max_cols=50))
def test_values_at_a_bound_are_not_counted(matrix):
    assume(matrix.size)
    lo, hi = float(matrix.min()), float(matrix.max())
    code = _code(lo, hi, matrix.dtype)
    flags = discretize_sum(
        matrix, np.ones(len(matrix)), code.lo, code.hi, code.scale, code.shift,
        np.zeros(matrix.shape[1], np.int64),
    )  # fmt: skip
    assert not flags.any()


def test_few_columns_take_the_numpy_twin_with_the_same_bits():
    """Weights and counts (a column or a few) skip the kernel, so nothing compiles for them."""
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        matrix = rng.normal(0, 2, (9, 5)).astype(dtype)
        coef = rng.random(9)
        coef[2] = 0.0
        code = _code(-1.0, 1.0, dtype)
        args = (code.lo, code.hi, code.scale, code.shift)
        kernel_out, numpy_out = np.full(5, 7, np.int64), np.full(5, 7, np.int64)
        kernel_flags = discretize_sum(matrix, coef, *args, kernel_out, numpy_columns=0)
        numpy_flags = discretize_sum(matrix, coef, *args, numpy_out)
        np.testing.assert_array_equal(numpy_out, kernel_out)
        np.testing.assert_array_equal(numpy_flags, kernel_flags)
    ints = rng.integers(-500, 500, size=(6, 3))
    kernel_out, numpy_out = np.zeros(3, np.int64), np.zeros(3, np.int64)
    ones = np.ones(6)
    kernel_flags = discretize_sum_int(ints, ones, -300, 300, 2, kernel_out, numpy_columns=0)
    numpy_flags = discretize_sum_int(ints, ones, -300, 300, 2, numpy_out)
    np.testing.assert_array_equal(numpy_out, kernel_out)
    np.testing.assert_array_equal(numpy_flags, kernel_flags)


@given(
    st.integers(0, 70_000),
    st.integers(-(2**40), 2**40),
    st.floats(1e-12, 1e3),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1.0, 3.0, 0.1, 1e-300, 0.0, -7.5]),
    st.sampled_from([None, np.float32, np.float64]),
)
def test_decode_sum_matches_twin(n, offset, step, seed, denominator, dtype):
    # Past SMALL_COLUMNS (kernel) and below it (the twin itself), over several parallel pieces;
    # with a mean's division and rounding to float32 or float64 in the same pass.
    total = np.random.default_rng(seed).integers(0, 2**40, n)

    def run(decode):
        out = None if dtype is None else np.empty(n, dtype)
        return decode(total, offset, step, denominator=denominator, out=out)

    ours, twin = run(decode_sum), run(decode_sum_numpy)
    assert ours[0].dtype == twin[0].dtype == (dtype or np.float64)
    np.testing.assert_array_equal(ours[0], twin[0])
    assert ours[1:] == twin[1:]
    if n:
        assert ours[1:] == (total.min(), total.max())
    decoded = (total + offset).astype(np.float64) * step
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        expected = np.divide(decoded, denominator).astype(dtype or np.float64)
    np.testing.assert_array_equal(twin[0], expected)


@pytest.mark.parametrize("n", [3, 70_000], ids=["NumPy", "kernel"])
def test_checked_decoding_refuses_a_total_out_of_range(n):
    code = FloatCode.of(-1.0, 1.0, np.float64)
    total = np.full(n, MAX_CODE * 2, dtype=np.int64)  # two clients' largest codes: in range
    np.testing.assert_allclose(code.decode(total, 2, checked=True), 2.0)
    for bad in (-1, MAX_CODE * 2 + 1):
        total[n // 2] = bad
        low, high = min(bad, MAX_CODE * 2), max(bad, MAX_CODE * 2)
        with pytest.raises(ValueError, match=rf"got values in \[{low}, {high}\]"):
            code.decode(total, 2, checked=True)
        code.decode(total, 2)  # unchecked: no error
        total[n // 2] = MAX_CODE * 2
