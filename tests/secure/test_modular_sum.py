"""ak.secure_modular_sum: TFF's cases with the reference's numbers, and Python-integer sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aggkit as ak
from aggkit import channels
from aggkit.secure.modular_sum import secure_modular_sum
from aggkit.testing import assert_only_secure, channel_uses


class ProtocolLikeBackend(channels.SumBackend):
    fused = False

    def modular_sum(self, inputs, modulus):
        return np.array([sum(int(v) for v in col) % modulus for col in np.asarray(inputs).T])


def _sum(modulus, data, symmetric_range=False, dtype=np.int32):
    proc = secure_modular_sum(modulus, symmetric_range).create(ak.TensorSpec((), dtype))
    out = assert_only_secure(proc, proc.initialize(), [dtype(v) for v in data])
    assert out.state == () and out.measurements == ()
    return int(out.result)


@pytest.mark.parametrize(
    ("modulus", "data", "expected"),
    [
        (2, [0, 1], 1),
        (2, [0, 1, 1], 0),
        (2, [0, 1, 1, 1], 1),
        (8, [1, 2, 3], 6),
        (8, [1, 2, 3, 4], 2),
        (22, [22], 0),
        (22, [220], 0),
        (22, [-1, 7], 6),
    ],
)
def test_non_symmetric(modulus, data, expected):
    assert _sum(modulus, data) == expected


@pytest.mark.parametrize(
    ("modulus", "data", "expected"),
    [
        (2, [0, 1], 1),
        (2, [0, 1, 1], -1),
        (2, [0, 1, 1, 1], 0),
        (2, [0, -1], -1),
        (2, [0, -1, -1], 1),
        (2, [0, -1, -1, -1], 0),
        (8, [1, 2, 3], 6),
        (8, [1, 2, 3, 4], -5),
        (8, [-1, -2, -3, -4], 5),
        (22, [22], -21),
        (22, [-22], 21),
        (22, [215], 0),
        (22, [112, 123], 20),
    ],
)
def test_symmetric(modulus, data, expected):
    assert _sum(modulus, data, symmetric_range=True) == expected


def test_struct_sum():
    template = {"a": ak.TensorSpec((2,), np.int32), "b": [ak.TensorSpec((), np.int64)]}
    proc = secure_modular_sum(8).create(template)
    clients = [
        {"a": np.array([1, 7], np.int32), "b": [np.int64(5)]},
        {"a": np.array([2, 3], np.int32), "b": [np.int64(-1)]},
    ]
    out = assert_only_secure(proc, (), clients)
    assert out.result["a"].tolist() == [3, 2] and out.result["a"].dtype == np.int32
    assert int(out.result["b"][0]) == 4


@given(
    st.lists(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=2), max_size=10),
    st.one_of(st.integers(1, 100), st.integers(1, 2**31)),  # results must fit int32
    st.booleans(),
)
def test_equals_python_integer_sums(rows, modulus, symmetric):
    proc = secure_modular_sum(modulus, symmetric).create(ak.TensorSpec((2,), np.int32))
    values = [np.array(r, np.int32) for r in rows]
    out = proc.next((), values)
    m = 2 * modulus - 1 if symmetric else modulus
    expected = [sum(col) % m for col in zip(*rows, strict=True)] if rows else [0, 0]
    if symmetric:
        expected = [r - m if r >= modulus else r for r in expected]
    assert out.result.tolist() == expected
    with channels.using_backend(ProtocolLikeBackend()):
        assert proc.next((), values).result.tolist() == out.result.tolist()


def test_large_moduli_with_int64_values():
    modulus = 2**61 + 1
    proc = secure_modular_sum(modulus).create(ak.TensorSpec((), np.int64))
    data = [2**62, 2**62, -(2**63), 2**63 - 1]
    assert int(proc.next((), [np.int64(v) for v in data]).result) == sum(data) % modulus


def test_one_channel_use_with_the_channel_modulus():
    proc = secure_modular_sum(5, symmetric_range=True).create(ak.TensorSpec((3,), np.int32))
    _, uses = channel_uses(proc, (), [np.ones(3, np.int32)] * 4)
    assert [(u.kind, u.modulus, u.clients, u.length) for u in uses] == [("secure_modular", 9, 4, 3)]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((2.0,), TypeError, "modulus"),
        ((True,), TypeError, "modulus"),
        (("8",), TypeError, "modulus"),
        ((0,), ValueError, "modulus"),
        ((-3,), ValueError, "modulus"),
        ((8, 1), TypeError, "symmetric_range"),
        ((8, None), TypeError, "symmetric_range"),
        ((2**62 + 1,), ValueError, "modulus"),
        ((2**61 + 1, True), ValueError, "modulus"),
    ],
)
def test_bad_parameters(args, error, match):
    with pytest.raises(error, match=match):
        secure_modular_sum(*args)


@pytest.mark.parametrize(
    "template",
    [
        ak.TensorSpec((), np.float32),
        {"a": ak.TensorSpec((), np.int32), "b": ak.TensorSpec((), np.float64)},
        {},
    ],
)
def test_non_integer_templates_raise(template):
    with pytest.raises(TypeError, match="integer"):
        secure_modular_sum(8).create(template)


def test_numpy_integer_modulus_and_equality():
    assert secure_modular_sum(np.int32(8)) == secure_modular_sum(8)
    assert secure_modular_sum(8, True) != secure_modular_sum(8)
