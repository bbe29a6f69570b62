"""ak.secure_sum and the secure quantized sum primitive: the cases of TFF's ``secure_test.py`` and
``primitives_test.py`` with the reference's numbers, properties of the discretization, and channel
use."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import aggkit as ak
from aggkit import channels, process
from aggkit.errors import InvalidUpdateError
from aggkit.process import Contributions
from aggkit.secure.secure_sum import (
    MAX_CODE,
    FloatCode,
    dequantize,
    quantize,
    secure_quantized_sum,
    secure_sum,
)
from aggkit.testing import assert_only_secure, channel_uses

MEASUREMENT_KEYS = [
    "secure_upper_clipped_count",
    "secure_lower_clipped_count",
    "secure_upper_threshold",
    "secure_lower_threshold",
]


class CountingEstimate(ak.EstimationProcess):
    """Reports ``start``, ``start + step``, ... one per round (TFF's test estimation process),
    and keeps what it was fed."""

    def __init__(self, start: float, step: float):
        self.start, self.step = start, step
        self.seen: list[np.ndarray] = []

    def initialize(self):
        return np.float64(self.start)

    def next(self, state, values):
        self.seen.append(np.array(values))
        return np.float64(state + self.step)

    def report(self, state):
        return float(state)


class ProtocolLikeBackend(channels.SumBackend):
    """Takes every client's encoded vector, as a real protocol backend does."""

    fused = False

    def __init__(self):
        self.moduli: list[int] = []

    def modular_sum(self, inputs, modulus):
        self.moduli.append(modulus)
        return np.array([sum(int(v) for v in col) % modulus for col in np.asarray(inputs).T])


def _run(factory, template, values, state=None):
    proc = factory.create(template)
    return proc.next(proc.initialize() if state is None else state, values)


def _spec(dtype, shape=()):
    return ak.TensorSpec(shape, dtype)


def _sum_fn(dtype, lo, hi):
    return lambda data: secure_quantized_sum(np.asarray(data, dtype=dtype), lo, hi)


# -- §8.2 the primitive ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_client_shift_int_range(dtype):
    values = np.array([0, 1, 2, 3, 5, -254, -255, -256, 255, 256, 257], dtype)
    assert quantize(values, -255, 256).tolist() == [255, 256, 257, 258, 260, 1, 0, 0, 510, 511, 511]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("bound", [0, 1])
def test_client_shift_with_equal_bounds_is_zero(dtype, bound):
    values = np.array([-1, 0, 1, 2, 3, 5, -254, -255, -256, 255, 256, 257], dtype)
    b = dtype(bound)
    assert quantize(values, b, b).tolist() == [0] * 12
    if np.dtype(dtype).kind == "f":
        assert quantize(values, dtype(1.1), dtype(1.1)).tolist() == [0] * 12


@pytest.mark.parametrize(
    ("hi", "expected"),
    [
        (2**32 - 1, [0, 0, 2**30, 2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 2, 2**31 - 1]),
        (2**32 - 2, [0, 0, 2**31, 2**32 - 2, 2**32 - 2, 2**32 - 2, 2**32 - 3, 2**32 - 2]),
        (2**32, [0, 0, 2**30, 2**31, 2**31, 2**31 - 1, 2**31 - 2, 2**31]),
    ],
)
def test_client_shift_int64_near_the_32_bit_limit(hi, expected):
    third = 2**32 - 1 if hi != 2**32 else 2**32 + 1
    values = np.array([-1, 0, 2**31, 2**32, third, 2**32 - 2, 2**32 - 3, 2**63 - 1], np.int64)
    assert quantize(values, 0, hi).tolist() == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_client_shift_float_range(dtype):
    values = np.array([-2.0, -1.0, 1.0, 2.0], dtype)
    assert quantize(values, -1.0, 1.0).tolist() == [0, 0, MAX_CODE, MAX_CODE]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_client_shift_with_inverted_bounds_raises(dtype):
    with pytest.raises(ValueError, match="lower_bound"):
        quantize(np.array([-2, -1, 1, 2], dtype), dtype(1), dtype(-1))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_server_shift_out_of_range_raises(dtype):
    lo, hi = dtype(-1), dtype(1)
    for total, n in ((2**32, 1), (-1, 1), (2**33 - 1, 2), (-1, 2)):
        with pytest.raises(ValueError, match="must be in"):
            dequantize(np.array([total]), n, lo, hi, dtype)
    if dtype == np.int32:  # in range for 2 summands, but 2**32 - 2 does not fit int32: no wrap
        with pytest.raises(OverflowError, match="does not fit int32"):
            dequantize(np.array([2**32]), 2, lo, hi, dtype)
    else:
        dequantize(np.array([2**32]), 2, lo, hi, dtype)  # fine with 2 summands


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_int_sums(dtype):
    call = _sum_fn(dtype, 0, 255)
    assert call([0]) == 0
    assert call([0, 1, 255, 22]) == 278
    assert call([[0, 0], [1, 2], [255, 5], [22, 123]]).tolist() == [278, 130]
    assert call([0, 255, 1, 2]) == 258


def test_int_non_zero_lower_bound_and_clipping():
    call = _sum_fn(np.int32, 4, 20)
    for data, expected in [
        ([3], 4), ([4], 4), ([5], 5), ([20], 20), ([21], 20),
        ([4, 4], 8), ([4, 20], 24), ([4] * 10, 40), ([10, 12, 20], 42),
    ]:  # fmt: skip
        assert call(data) == expected
    call = _sum_fn(np.int32, 0, 255)
    for data, expected in [([-1], 0), ([-255], 0), ([-256], 0), ([256], 255), ([12345], 255),
                           ([-10, 256], 255)]:  # fmt: skip
        assert call(data) == expected


def test_int64_range_beyond_2_pow_32_is_accurate_to_one_unit():
    call = _sum_fn(np.int64, -(2**32) + 1, 2**32 - 2)
    results = [int(call([v])) for v in (0, 1, 2)]
    assert all(abs(r - v) <= 1 for r, v in zip(results, (0, 1, 2), strict=True))
    assert len(set(results)) == 2
    assert abs(int(call([-(2**32) + 1, 2**32 - 2]))) <= 2


def test_numeric_border_conditions_int():
    call = _sum_fn(np.int32, 0, 0)
    assert [call([v]) for v in (-1, 0, 1)] == [0, 0, 0]
    call = _sum_fn(np.int32, 1, 1)
    assert [call([v]) for v in (0, 1, 2)] == [1, 1, 1]
    call = _sum_fn(np.int32, -(2**31), 2**31 - 1)
    assert call([0]) == 0
    assert call([-(2**31)]) == -(2**31)
    assert call([2**31 - 1]) == 2**31 - 1
    assert call([1, 2, 3]) == 6
    assert call([-(2**31), 2**31 - 1]) == -1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_sums(dtype):
    call = _sum_fn(dtype, dtype(0.0), dtype(1.0))
    assert call([0.0]) == 0.0
    assert call([1.0]) == 1.0
    np.testing.assert_allclose(call([0.0, 1.0]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(call([0.0, 0.1, 0.7, 1.0]), 1.8, rtol=1e-6)
    data = [(0.0, 0.0), (0.1, 0.55), (0.7, 0.15), (1.0, 0.99)]
    np.testing.assert_allclose(call(data), (1.8, 1.69), rtol=1e-6)


def test_float_out_of_range_and_non_zero_lower_bound():
    call = _sum_fn(np.float32, 0.0, 1.0)
    for data, expected in [([-1.0], 0.0), ([-0.001], 0.0), ([2.9], 1.0), ([1.0001], 1.0),
                           ([-0.5, 1.9], 1.0)]:  # fmt: skip
        np.testing.assert_allclose(call(data), expected, rtol=1e-6, atol=1e-6)
    call = _sum_fn(np.float32, 4.0, 20.0)
    for data, expected in [([3.0], 4.0), ([4.0], 4.0), ([5.0], 5.0), ([20.0], 20.0),
                           ([4.0, 4.0], 8.0), ([4.0, 20.0], 24.0), ([4.0] * 10, 40.0),
                           ([10.0, 12.0, 20.0], 42.0)]:  # fmt: skip
        np.testing.assert_allclose(call(data), expected, rtol=1e-6)
    assert call([21.0]) == 20.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numeric_border_conditions_float(dtype):
    call = _sum_fn(dtype, dtype(0.0), dtype(0.0))
    assert [call([v]) for v in (-1.0, 0.0, 1.0)] == [0.0, 0.0, 0.0]
    call = _sum_fn(dtype, dtype(1.0), dtype(1.0))
    assert [call([v]) for v in (0.0, 1.0, 2.0)] == [1.0, 1.0, 1.0]
    call = _sum_fn(dtype, dtype(1.1), dtype(1.1))
    for v in (0.0, 1.1, 2.0):
        assert call([v]) == pytest.approx(1.1, abs=1e-7)
    call = _sum_fn(dtype, dtype(-1e6), dtype(1e6))
    np.testing.assert_allclose(call([1e6, 1e5, 1e4, 1000, 1]), 1111001.0, rtol=1e-6)
    np.testing.assert_allclose(call([1e6, 1e5, 1e4, 1000, 1, -1e5]), 1011001.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "bounds",
    [
        (-1.0, 1.0),
        (-100.0, 100.0),
        (-1e6, 1e6),
        (-100.0, 200.0),
        (-1e-5, 200.0),
        (-1e-16, 200.0),
    ],
)
def test_zeros_are_represented_exactly(dtype, bounds):
    call = _sum_fn(dtype, dtype(bounds[0]), dtype(bounds[1]))
    assert call([0.0]) == 0.0
    assert call([0.0, 0.0, 0.0]) == 0.0
    assert call([0.552]) == call([0.552, 0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bounds, orders", [((-1.0, 1.0), 9), ((-1e6, 1e6), 3), ((-1.0, 100.0), 7)])
def test_small_values_within_ten_percent(dtype, bounds, orders):
    call = _sum_fn(dtype, dtype(bounds[0]), dtype(bounds[1]))
    for i in range(1, orders + 1):
        value = 10.0**-i
        assert abs(call([value, 0.0]) - value) / value <= 0.1


@pytest.mark.parametrize(
    ("dtype", "bounds", "orders"),
    [
        (np.float32, (-1.0, 1.0), 7), (np.float32, (-1e6, 1e6), 1), (np.float32, (-1.0, 100.0), 5),
        (np.float64, (-1.0, 1.0), 9), (np.float64, (-1e6, 1e6), 3), (np.float64, (-1.0, 100.0), 7),
    ],
)  # fmt: skip
def test_sums_slightly_above_the_upper_bound_within_half(dtype, bounds, orders):
    upper = bounds[1]
    call = _sum_fn(dtype, dtype(bounds[0]), dtype(upper))
    for i in range(1, orders + 1):
        value = 10.0**-i
        assert abs(float(call([value, upper])) - value - upper) / value <= 0.5


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.float16])
def test_unsupported_dtypes_raise(dtype):
    with pytest.raises(TypeError, match="int32, int64, float32 and float64"):
        secure_quantized_sum(np.zeros((2, 1), dtype), dtype(0), dtype(1))


def test_the_primitive_uses_only_secure_channels():
    with channels.recording() as log:
        secure_quantized_sum(np.ones((3, 2), np.float32), -1.0, 1.0)
    assert [(u.kind, u.bitwidth) for u in log] == [
        ("secure_bitwidth", 32),
        ("secure_bitwidth", 1),
    ]


# -- §8.4 the factory -----------------------------------------------------------------------------


STRUCT = {"a": (2,), "b": [(3,), ()]}


def _struct(dtype):
    return {"a": _spec(dtype, (2,)), "b": [_spec(dtype, (3,)), _spec(dtype)]}


@pytest.mark.parametrize(
    ("template", "upper", "lower", "threshold_type"),
    [
        (_spec(np.float32), 1.0, 0.0, float),
        (_spec(np.float32), np.float64(1.0), np.float64(0.0), float),
        (_spec(np.float64), np.float32(1.0), np.float32(0.0), float),
        (_struct(np.float32), 1.0, 0.0, float),
        (_spec(np.int32), 1, 0, int),
        (_spec(np.int64), 1, 0, int),
        (_spec(np.int32), np.int64(1), np.int64(0), int),
        (_spec(np.int64), np.int32(1), np.int32(0), int),
        (_struct(np.int32), 1, 0, int),
    ],
)
def test_type_properties_constant_bounds(template, upper, lower, threshold_type):
    factory = secure_sum(upper, lower)
    assert not factory.is_weighted
    proc = factory.create(template)
    assert not proc.is_weighted
    assert proc.initialize() == ()
    layout = ak.Layout(template)
    values = [layout.unflatten(np.zeros(layout.size))] * 2
    out = assert_only_secure(proc, proc.initialize(), values)
    assert out.state == ()
    assert list(out.measurements) == MEASUREMENT_KEYS
    assert all(type(out.measurements[k]) is int for k in MEASUREMENT_KEYS[:2])
    assert all(type(out.measurements[k]) is threshold_type for k in MEASUREMENT_KEYS[2:])
    for leaf, spec in zip(_leaves(out.result), layout.specs, strict=True):
        assert np.asarray(leaf).dtype == spec.dtype


def _leaves(structure):
    if isinstance(structure, dict):
        return [leaf for v in structure.values() for leaf in _leaves(v)]
    if isinstance(structure, list | tuple):
        return [leaf for v in structure for leaf in _leaves(v)]
    return [structure]


@pytest.mark.parametrize("template", [_spec(np.float32), _spec(np.float64), _struct(np.float32)])
def test_type_properties_single_and_two_processes(template):
    single = secure_sum(CountingEstimate(1.0, 1.0)).create(template)
    assert single.initialize() == np.float64(1.0)
    two = secure_sum(CountingEstimate(1.0, 1.0), CountingEstimate(-1.0, -1.0)).create(template)
    assert two.initialize() == (1.0, -1.0)
    layout = ak.Layout(template)
    values = [layout.unflatten(np.zeros(layout.size))] * 3
    for proc, state in ((single, 2.0), (two, (2.0, -2.0))):
        out = assert_only_secure(proc, proc.initialize(), values)
        assert out.state == state
        assert list(out.measurements) == MEASUREMENT_KEYS


@pytest.mark.parametrize(("upper", "lower"), [(-1, 1), (1, 1), (-1.0, 1.0), (1.0, 1.0)])
def test_upper_bound_not_larger_than_lower_bound_raises(upper, lower):
    with pytest.raises(ValueError, match="upper_bound"):
        secure_sum(upper, lower)


def test_int_ranges_beyond_2_pow_32():
    out = _run(secure_sum(2**33, -(2**33)), _spec(np.int64), [2**33, 2**32, -(2**34), 5])
    assert out.result == 2**33 + 2**32 - 2**33 + 5
    assert out.measurements["secure_lower_clipped_count"] == 1


@pytest.mark.parametrize(
    ("factory", "template"),
    [
        (secure_sum(1, -1), _spec(np.float32)),
        (secure_sum(np.int32(1), np.int32(-1)), _spec(np.float32)),
        (secure_sum(1.0, -1.0), _spec(np.int32)),
        (secure_sum(np.float32(1.0), np.float32(-1.0)), _spec(np.int32)),
        (secure_sum(CountingEstimate(1, 1)), _spec(np.int32)),
        (secure_sum(CountingEstimate(1, 1), CountingEstimate(-1, -1)), _spec(np.int32)),
        (secure_sum(1.0), _spec(np.float16)),
        (secure_sum(1.0), {"a": _spec(np.float32), "b": _spec(np.float64)}),
        (secure_sum(1), [_spec(np.int32), _spec(np.int64)]),
        (secure_sum(1.0), {}),
    ],
)
def test_templates_that_do_not_fit_the_mode_raise(factory, template):
    with pytest.raises(TypeError, match="secure_sum"):
        factory.create(template)


def test_int_constant_bounds():
    out = _run(secure_sum(1, -1), _spec(np.int32), [-2, -1, 0, 1, 2, 3])
    assert out.result == 1 and out.result.dtype == np.int32
    assert out.measurements == dict(zip(MEASUREMENT_KEYS, [2, 1, 1, -1], strict=True))


def test_float_constant_bounds():
    out = _run(secure_sum(1.0, -1.0), _spec(np.float32), [-2.5, -0.5, 0.0, 1.0, 1.5, 2.5])
    np.testing.assert_allclose(out.result, 1.5, rtol=1e-6)
    assert out.measurements == dict(zip(MEASUREMENT_KEYS, [2, 1, 1.0, -1.0], strict=True))


EXPECTED_ROUNDS = [(1.5, 2, 1, 1.0), (2.0, 1, 1, 2.0), (2.5, 1, 0, 3.0)]


@pytest.mark.parametrize("two", [False, True])
def test_float_process_bounds(two):
    upper = CountingEstimate(1.0, 1.0)
    lower = CountingEstimate(-1.0, -1.0)
    proc = secure_sum(upper, lower if two else None).create(_spec(np.float32))
    data = [-2.5, -0.5, 0.0, 1.0, 1.5, 3.5]
    state = proc.initialize()
    for result, above, below, bound in EXPECTED_ROUNDS:
        out = proc.next(state, data)
        np.testing.assert_allclose(out.result, result, rtol=1e-6)
        assert out.measurements == dict(
            zip(MEASUREMENT_KEYS, [above, below, bound, -bound], strict=True)
        )
        state = out.state
    # What the processes saw: each client's max(|min|, |max|), or its max and min, before
    # clipping.
    if two:
        np.testing.assert_array_equal(upper.seen[0], data)
        np.testing.assert_array_equal(lower.seen[0], data)
    else:
        np.testing.assert_array_equal(upper.seen[0], np.abs(data))


def test_two_processes_see_each_clients_max_and_min_over_nonempty_tensors():
    upper, lower = CountingEstimate(10.0, 0.0), CountingEstimate(-10.0, 0.0)
    template = {"w": _spec(np.float32, (3,)), "e": _spec(np.float32, (0,)), "b": _spec(np.float32)}
    proc = secure_sum(upper, lower).create(template)
    clients = [
        {"w": np.array([1.0, 2.0, 3.0]), "e": np.zeros(0), "b": 4.0},
        {"w": np.array([-1.0, -2.0, -3.0]), "e": np.zeros(0), "b": -0.5},
    ]
    proc.next(proc.initialize(), [{k: np.float32(v) for k, v in c.items()} for c in clients])
    assert upper.seen[0].tolist() == [4.0, -0.5]
    assert lower.seen[0].tolist() == [1.0, -3.0]


def test_float_32_larger_than_2_pow_32():
    out = _run(secure_sum(float(2**34)), _spec(np.float32), [2.0**33, 2.0**33, 2.0**34])
    np.testing.assert_allclose(out.result, 2.0**35, rtol=1e-6)
    assert out.measurements == dict(
        zip(MEASUREMENT_KEYS, [0, 0, float(2**34), -float(2**34)], strict=True)
    )


def test_float_64_larger_than_2_pow_64():
    out = _run(secure_sum(np.float64(2**66)), _spec(np.float64), [2.0**65, 2.0**65, 2.0**66])
    np.testing.assert_allclose(out.result, 2.0**67, rtol=1e-6)
    assert out.measurements["secure_upper_threshold"] == 2.0**66


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        (("1.0",), TypeError, "upper_bound"),
        ((True,), TypeError, "upper_bound"),
        ((None,), TypeError, "upper_bound"),
        ((1.0, 0), TypeError, "lower_bound"),
        ((1, 0.0), TypeError, "lower_bound"),
        ((CountingEstimate(1, 1), 0.0), TypeError, "lower_bound"),
        ((1.0, "0"), TypeError, "lower_bound"),
        ((0.0,), ValueError, "upper_bound"),
        ((-3,), ValueError, "upper_bound"),
        ((float("nan"),), ValueError, "finite"),
        ((1.0, float("-inf")), ValueError, "finite"),
        ((2**63,), ValueError, "int64"),
        ((2**62, -(2**62)), ValueError, "2\\*\\*62"),
    ],
)
def test_bad_parameters_raise_naming_the_argument(args, error, name):
    with pytest.raises(error, match=name):
        secure_sum(*args)


@pytest.mark.parametrize(
    ("args", "code_bits", "error", "match"),
    [
        ((1.0,), 0, ValueError, "code_bits must be an int in \\[1, 32\\]"),
        ((1.0,), 33, ValueError, "code_bits must be an int in \\[1, 32\\]"),
        ((1.0,), 22.0, TypeError, "code_bits must be an int"),
        ((1.0,), True, TypeError, "code_bits must be an int"),
        ((1,), 22, ValueError, "code_bits applies to float bounds"),
    ],
)
def test_code_bits_are_checked(args, code_bits, error, match):
    with pytest.raises(error, match=match):
        secure_sum(*args, code_bits=code_bits)
    if isinstance(args[0], float):
        with pytest.raises(error, match=match):
            ak.secure_aggregator(code_bits=code_bits)


@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12),
    st.floats(-1e3, 1e3),
    st.floats(1e-3, 1e3),
    st.integers(1, 32),
)
def test_narrow_codes_round_trip_within_their_step_and_go_out_at_their_width(
    values, lo, span, bits
):
    hi = lo + span
    code = FloatCode.of(lo, hi, np.float64, bits)
    proc = secure_sum(hi, lo, code_bits=bits).create(_spec(np.float64))
    with channels.recording() as log:
        out = proc.next((), np.asarray(values))
    assert [use.bitwidth for use in log] == [bits, 1]
    exact = sum(min(max(v, code.lo), code.hi) for v in values)
    step = code.span / (2**bits - 1)
    decoding = 1e-15 * len(values) * max(abs(code.lo), abs(code.hi))
    assert abs(float(out.result) - exact) <= step * len(values) + decoding
    if bits < 32:  # a 32-bit code is finer: its error is below the narrow code's step
        wide = secure_sum(hi, lo).create(_spec(np.float64)).next((), np.asarray(values))
        assert abs(float(wide.result) - exact) <= step * len(values) / 2 + decoding


def test_a_narrow_code_decodes_a_sum_outside_its_range_as_an_error():
    code = FloatCode.of(-1.0, 1.0, np.float64, 22)
    code.decode(np.array([0, 2 * (2**22 - 1)]), 2, checked=True)
    with pytest.raises(ValueError, match=r"a sum of 2 22-bit codes must be in \[0, 8388606\]"):
        code.decode(np.array([0, 2 * (2**22 - 1) + 1]), 2, checked=True)


def test_factories_compare_by_value():
    assert secure_sum(1.0, -1.0) == secure_sum(np.float64(1.0), np.float32(-1.0))
    assert secure_sum(1) != secure_sum(1.0)
    assert secure_sum(3).mode == "int" and secure_sum(3.0).mode == "float"
    assert secure_sum(1.0) == secure_sum(1.0, code_bits=32) != secure_sum(1.0, code_bits=22)


# -- behaviour ------------------------------------------------------------------------------------


def test_nan_raises_naming_the_client_and_tensor_and_leaves_state_alone():
    upper = CountingEstimate(1.0, 1.0)
    proc = secure_sum(upper).create({"w": _spec(np.float32, (2,)), "b": _spec(np.float32)})
    state = proc.initialize()
    good = {"w": np.ones(2, np.float32), "b": np.float32(0)}
    bad = {"w": np.ones(2, np.float32), "b": np.float32("nan")}
    with pytest.raises(ak.InvalidUpdateError, match=r"client 1, tensor \['b'\].*NaN"):
        proc.next(state, [good, bad])
    assert state == 1.0 and upper.seen == []
    assert proc.next(state, [good]).state == 2.0


def test_infinities_are_refused_like_nan():
    # The docstring promised it; +-Inf used to be clipped to the bound (issue 20, item 5).
    for data in ([[1.0, 1.0], [np.inf, 1.0]], [[1.0, 1.0], [-np.inf, 0.5]]):
        with pytest.raises(InvalidUpdateError, match="client 1, tensor <root>: holds Inf"):
            _run(secure_sum(2.0), _spec(np.float32, (2,)), data)


def test_bound_processes_see_nothing_of_a_round_with_infinities():
    upper, lower = CountingEstimate(2.0, 0.0), CountingEstimate(-2.0, 0.0)
    data = [[0.25, 1.0], [-np.inf, 0.5], [0.25, -0.5]]
    with pytest.raises(InvalidUpdateError, match="client 1"):
        _run(secure_sum(upper, lower), _spec(np.float32, (2,)), np.array(data, np.float32))
    assert upper.seen == [] and lower.seen == []


def test_a_bound_estimate_with_lower_above_upper_raises_before_anything_changes():
    proc = secure_sum(CountingEstimate(-1.0, 1.0)).create(_spec(np.float32))
    with pytest.raises(ValueError, match="lower <= upper"):
        proc.next(proc.initialize(), [1.0])


def test_zero_weight_clients_hold_zeros_even_when_they_hold_nan():
    factory = ak.mean(value_sum=secure_sum(10.0), weight_sum=secure_sum(float(2**20 - 1), 0.0))
    proc = factory.create(_spec(np.float64, (2,)))
    values = [np.array([1.0, 2.0]), np.array([np.nan, np.inf]), np.array([3.0, 4.0])]
    out = proc.next(proc.initialize(), values, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(out.result, [2.0, 3.0], rtol=1e-6)


def test_a_zeroed_client_is_clipped_into_a_range_without_zero_like_tff():
    # TFF's zeroing replaces a value by zeros, which secure_sum then clips into [lo, hi].
    factory = ak.mean(value_sum=secure_sum(5.0, 1.0), weight_sum=secure_sum(10.0, 0.0))
    proc = factory.create(_spec(np.float64))
    out = proc.next(proc.initialize(), [2.0, 3.0], [1.0, 0.0])
    np.testing.assert_allclose(out.result, 3.0, rtol=1e-6)  # (2 + clip(0)) / 1
    assert out.measurements["mean_value"]["secure_lower_clipped_count"] == 1


@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=0, max_size=12),
    st.floats(-1e3, 1e3),
    st.floats(1e-3, 1e3),
    st.sampled_from([np.float32, np.float64]),
)
@example([129.0, -97.0], -128.0, 256.6032331099886, np.float32)  # hi - lo inexact in float32
def test_float_round_trip_within_one_step_per_client(values, lo, span, dtype):
    hi = lo + span
    code = FloatCode.of(lo, hi, dtype)
    proc = secure_sum(hi, lo).create(_spec(dtype))
    out = proc.next((), np.asarray(values, dtype))
    exact = sum(min(max(float(dtype(v)), code.lo), code.hi) for v in values)
    step = code.span / MAX_CODE
    # A step per client (half from rounding, and the code of a value at the upper bound may be
    # clipped by one), the float64 decoding, and the final rounding to the value dtype.
    decoding = 1e-15 * len(values) * max(abs(code.lo), abs(code.hi))
    tolerance = step * len(values) + decoding + np.finfo(dtype).eps * abs(exact)
    assert abs(float(out.result) - exact) <= tolerance


@given(
    st.lists(st.lists(st.integers(-50, 50), min_size=3, max_size=3), min_size=1, max_size=10),
    st.integers(-20, 0),
    st.integers(1, 20),
    st.booleans(),
)
def test_values_at_a_bound_are_not_counted_and_values_beyond_are(rows, lo, hi, as_float):
    matrix = np.array(rows, dtype=np.float32 if as_float else np.int32)
    if as_float:
        factory, spec = secure_sum(float(hi), float(lo)), _spec(np.float32, (3,))
    else:
        factory, spec = secure_sum(hi, lo), _spec(np.int32, (3,))
    out = _run(factory, spec, list(matrix))
    above = sum(bool((r > hi).any()) for r in matrix)
    below = sum(bool((r < lo).any()) for r in matrix)
    assert out.measurements["secure_upper_clipped_count"] == above
    assert out.measurements["secure_lower_clipped_count"] == below
    expected = np.clip(matrix.astype(np.float64), lo, hi).sum(axis=0)
    np.testing.assert_allclose(out.result, expected, atol=1e-5 * len(rows) * (hi - lo))


def test_streamed_blocks_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(3)
    clients = [rng.standard_normal(50).astype(np.float32) * 3 for _ in range(9)]
    for factory in (secure_sum(2.0), secure_sum(CountingEstimate(1.5, 0.5))):
        proc = factory.create(_spec(np.float32, (50,)))
        batch = proc.next(proc.initialize(), clients)
        monkeypatch.setattr(process, "STREAM_BLOCK_BYTES", 3 * 50 * 4)
        streamed = proc.next(proc.initialize(), iter(clients))
        monkeypatch.undo()
        np.testing.assert_array_equal(batch.result, streamed.result)
        assert batch.measurements == streamed.measurements
        assert batch.state == streamed.state


@pytest.mark.parametrize(
    ("factory", "dtype"),
    [
        (secure_sum(2.0), np.float32),
        (secure_sum(CountingEstimate(1.5, 0.5)), np.float64),
        (secure_sum(5, -3), np.int32),
    ],
)
def test_a_round_hands_over_a_new_result_that_a_mean_divides_in_place(factory, dtype):
    """``owns_result``: the finished sum shares memory with nothing the round keeps, so a mean
    divides it in its own pass (``process.divide``) and gets the bits of ``np.divide``."""
    rng = np.random.default_rng(5)
    clients = (rng.standard_normal((6, 40)) * 3).astype(dtype)
    proc = factory.create(_spec(dtype, (40,)))
    round_ = proc.begin_round(proc.initialize())
    assert round_.owns_result
    batch = ak.ClientBatch(clients.astype(proc.layout.dtype), proc.layout)
    block = Contributions(batch, np.ones(6), needs=proc.stats_needed)
    round_.add(block, None)
    _, total, _ = round_.finish()
    assert not np.shares_memory(total, round_.values.accumulator)
    if dtype != np.int32:
        mean = ak.unweighted_mean(factory).create(_spec(dtype, (40,)))
        out = mean.next(mean.initialize(), list(clients))
        expected = np.divide(total, np.float64(6)).astype(dtype)
        np.testing.assert_array_equal(out.result, expected)


@pytest.mark.parametrize(("lo", "hi"), [(0.5, 0.5), (1e15, 1e15 + 1)], ids=["equal", "far"])
def test_decoding_without_the_kernel_divides_with_numpys_bits(lo, hi):
    code = FloatCode.of(lo, hi, np.float64)  # equal bounds, or a range tiny next to its offset
    total = np.array([0, 7, code.max_code * 3], dtype=np.int64)
    plain = code.decode(total, 3)
    out = np.empty(3, np.float32)
    assert np.shares_memory(code.decode(total, 3, denominator=3.0, out=out), out)
    np.testing.assert_array_equal(out, np.divide(plain, 3.0).astype(np.float32))


def test_zero_clients():
    out = _run(secure_sum(1.0), _spec(np.float32, (2,)), [])
    assert out.result.tolist() == [0.0, 0.0]
    assert out.measurements["secure_upper_clipped_count"] == 0


# -- channels -------------------------------------------------------------------------------------


def test_mean_with_secure_sums_uses_only_secure_channels_and_plain_mean_does_not():
    rng = np.random.default_rng(0)
    template = {"w": _spec(np.float32, (4, 3)), "b": _spec(np.float32, (3,))}
    clients = [
        {"w": rng.standard_normal((4, 3), dtype=np.float32), "b": rng.random(3, np.float32)}
        for _ in range(6)
    ]
    weights = rng.random(6) * 10
    secure = ak.mean(value_sum=secure_sum(100.0), weight_sum=secure_sum(float(2**20 - 1), 0.0))
    proc = secure.create(template)
    out = assert_only_secure(proc, proc.initialize(), clients, weights)
    plain = ak.mean().create(template)
    expected = plain.next(plain.initialize(), clients, weights).result
    # The weight sum's step is 2**20 / 2**32 per client: relative error below 1e-3 here.
    for key in ("w", "b"):
        np.testing.assert_allclose(out.result[key], expected[key], rtol=1e-3, atol=1e-4)
    assert set(out.measurements) == {"mean_value", "mean_weight"}
    with pytest.raises(AssertionError, match="plain channel"):
        assert_only_secure(plain, plain.initialize(), clients, weights)


def test_unweighted_mean_with_secure_sums_uses_only_secure_channels():
    factory = ak.unweighted_mean(secure_sum(CountingEstimate(5.0, 1.0)), count_sum=secure_sum(1, 0))
    proc = factory.create(_spec(np.float32, (3,)))
    clients = [np.full(3, v, np.float32) for v in (1.0, 2.0, 3.0, 10.0)]
    out = assert_only_secure(proc, proc.initialize(), clients)
    np.testing.assert_allclose(out.result, [(1 + 2 + 3 + 5) / 4] * 3, rtol=1e-6)
    assert out.measurements["mean_count"]["secure_upper_clipped_count"] == 0
    _, uses = channel_uses(proc, proc.initialize(), clients)
    assert sorted((u.bitwidth, u.length) for u in uses) == [(1, 1), (1, 3), (1, 3), (32, 3)]


@pytest.mark.parametrize(
    ("factory", "template", "values"),
    [
        (secure_sum(2.0, -1.0), _spec(np.float32, (4,)), None),
        (secure_sum(CountingEstimate(1.0, 1.0)), _spec(np.float64, (4,)), None),
        (secure_sum(7, -3), _spec(np.int32, (4,)), None),
        (secure_sum(1e6 + 1.0, 1e6), _spec(np.float64, (4,)), "offset"),
    ],
)
def test_a_protocol_backend_gives_the_same_bits(factory, template, values):
    rng = np.random.default_rng(11)
    data = rng.standard_normal((5, 4)) * 3
    if values == "offset":
        data += 1e6
    data = (
        data.astype(template.dtype)
        if template.dtype.kind == "f"
        else np.rint(data).astype(np.int32)
    )
    proc = factory.create(template)
    fused = proc.next(proc.initialize(), list(data))
    backend = ProtocolLikeBackend()
    with channels.using_backend(backend):
        separate = proc.next(proc.initialize(), list(data))
    np.testing.assert_array_equal(fused.result, separate.result)
    assert fused.measurements == separate.measurements
    assert backend.moduli  # the backend did the sums


def test_the_masking_protocol_plugs_in_as_a_backend():
    pytest.importorskip("cryptography")
    from aggkit.secure.simulation import run_secure_sum

    class MaskingBackend(channels.SumBackend):
        fused = False

        def modular_sum(self, inputs, modulus):
            return run_secure_sum(inputs, modulus=modulus, seed=0)

    proc = secure_sum(1.0).create(_spec(np.float32, (3,)))
    data = [np.array([0.5, -2.0, 0.25], np.float32), np.array([0.25, 0.5, 3.0], np.float32)]
    expected = proc.next((), data)
    with channels.using_backend(MaskingBackend()):
        out = proc.next((), data)
    np.testing.assert_array_equal(out.result, expected.result)
    assert out.measurements == expected.measurements


def test_named_tuple_and_ordered_dict_templates():
    Pair = collections.namedtuple("Pair", ["x", "y"])
    template = Pair(_spec(np.float32), _spec(np.float32, (2,)))
    out = _run(secure_sum(1.0), template, [Pair(np.float32(0.5), np.ones(2, np.float32))] * 2)
    assert isinstance(out.result, Pair)
    np.testing.assert_allclose(out.result.y, [2.0, 2.0], rtol=1e-6)
