"""Summation channels: recording, range checks, exactness and pluggable backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aggkit as ak
from aggkit import channels
from aggkit.channels import SecureChannelSum, SumBackend
from aggkit.process import Round
from aggkit.testing import assert_only_secure, channel_uses


class RecordingBackend(SumBackend):
    """A backend that takes every client's vector, like a real protocol, and keeps the calls."""

    fused = False

    def __init__(self):
        self.calls: list[tuple[np.ndarray, int]] = []

    def modular_sum(self, inputs, modulus):
        self.calls.append((np.array(inputs), modulus))
        total = [sum(int(v) for v in column) % modulus for column in np.asarray(inputs).T]
        return np.array(total, dtype=np.uint64)


def test_plain_sums_are_recorded():
    process = ak.mean().create(ak.TensorSpec((3,), np.float32))
    _, uses = channel_uses(process, process.initialize(), [np.ones(3, np.float32)] * 4, [1.0] * 4)
    assert [(u.kind, u.clients, u.length, u.secure) for u in uses] == [
        ("plain", 4, 3, False),
        ("plain", 4, 1, False),
    ]


def test_recordings_nest_and_close():
    with channels.recording() as outer:
        channels.record_plain(2, 3)
        with channels.recording() as inner:
            channels.secure_sum_bitwidth(np.ones((2, 1), np.int64), 1)
    channels.record_plain(5, 5)  # nobody listens
    assert [u.kind for u in outer] == ["plain", "secure_bitwidth"]
    assert [u.kind for u in inner] == ["secure_bitwidth"]


def test_bitwidth_sum_is_exact_beyond_the_bit_width():
    vectors = np.full((5, 2), 2**31 - 1)
    with channels.recording() as log:
        total = channels.secure_sum_bitwidth(vectors, 31, owner="test")
    assert total.tolist() == [5 * (2**31 - 1)] * 2
    assert log[0] == channels.ChannelUse("secure_bitwidth", 2, 5, bitwidth=31, owner="test")


@pytest.mark.parametrize(
    ("bitwidth", "bad"),
    [(1, 2), (1, -1), (8, 256), (32, 2**32)],
)
def test_inputs_outside_the_bit_width_are_refused(bitwidth, bad):
    with pytest.raises(ValueError, match="inputs must be in"):
        channels.secure_sum_bitwidth(np.array([[0], [bad]]), bitwidth)


def test_inputs_outside_the_modulus_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        channels.secure_sum_modular(np.array([[7]]), 7)


def test_channel_parameters_are_checked():
    with pytest.raises(TypeError, match="bitwidth"):
        SecureChannelSum(2, bitwidth=2.0)
    with pytest.raises(ValueError, match="bitwidth"):
        SecureChannelSum(2, bitwidth=0)
    with pytest.raises(ValueError, match="bitwidth"):
        SecureChannelSum(2, bitwidth=63)
    with pytest.raises(TypeError, match="modulus"):
        SecureChannelSum(2, modulus=True)
    with pytest.raises(ValueError, match="modulus"):
        SecureChannelSum(2, modulus=0)
    with pytest.raises(TypeError, match="exactly one"):
        SecureChannelSum(2, bitwidth=3, modulus=8)
    with pytest.raises(TypeError, match="integers"):
        channels.secure_sum_bitwidth(np.array([[0.5]]), 3)
    with pytest.raises(ValueError, match=r"\[k, 2\]"):
        SecureChannelSum(2, bitwidth=3).add(np.zeros((1, 3), np.int64))


def test_a_sum_that_could_overflow_int64_is_refused():
    channel = SecureChannelSum(1, bitwidth=62)
    channel.add(np.array([[2**62 - 1]]))
    with pytest.raises(ValueError, match="overflow"):
        channel.add(np.array([[0], [0]]))


def test_a_sum_finishes_once():
    channel = SecureChannelSum(1, modulus=5)
    channel.finish()
    with pytest.raises(RuntimeError):
        channel.finish()
    with pytest.raises(RuntimeError):
        channel.add(np.zeros((1, 1), np.int64))


@given(
    st.integers(1, 2**62),
    st.lists(st.lists(st.integers(0, 2**62), min_size=3, max_size=3), max_size=12),
)
def test_modular_sums_equal_python_integer_sums(modulus, rows):
    rows = [[v % modulus for v in row] for row in rows]
    vectors = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
    expected = [sum(column) % modulus for column in zip(*rows, strict=True)] if rows else [0] * 3
    assert channels.secure_sum_modular(vectors, modulus).tolist() == expected
    with channels.using_backend(RecordingBackend()):
        assert channels.secure_sum_modular(vectors, modulus).tolist() == expected


def test_a_protocol_backend_gets_every_vector_and_a_modulus_the_sum_never_reaches():
    backend = RecordingBackend()
    vectors = np.array([[7, 0], [7, 7], [1, 2]])
    with channels.using_backend(backend):
        channel = SecureChannelSum(2, bitwidth=3)
        assert not channel.fused and channel.accumulator is None
        channel.add(vectors[:2])
        channel.add(vectors[2:])
        total = channel.finish()
    assert total.tolist() == [15, 9]
    ((inputs, modulus),) = backend.calls
    np.testing.assert_array_equal(inputs, vectors)
    assert modulus == 2 ** (3 + 2)  # 3 clients: 2 more bits
    assert channels.current_backend().fused  # the default is back


def test_using_backend_checks_its_argument():
    with pytest.raises(TypeError, match="SumBackend"), channels.using_backend(object()):
        pass


def test_a_fused_sum_refuses_vectors_it_cannot_hold_exactly():
    channel = SecureChannelSum(1, bitwidth=32)
    assert channel.fused
    channel.add_accumulated(2**31)  # (2**31) * (2**32 - 1) < 2**63
    with pytest.raises(ValueError, match="overflow"):
        channel.add_accumulated(1)


def test_assert_only_secure_fails_for_plain_sums_and_for_rounds_that_sum_nothing():
    process = ak.sum().create(ak.TensorSpec((2,), np.float32))
    with pytest.raises(AssertionError, match="1 of 1 sums used the plain channel"):
        assert_only_secure(process, (), [np.ones(2, np.float32)])

    class Silent(ak.AggregationProcess):
        def initialize(self):
            return ()

        def begin_round(self, state):
            class R(Round):
                def add(self, block, weights):
                    pass

                def finish(self):
                    return (), np.zeros(2), ()

            return R()

    silent = Silent(ak.Layout(ak.TensorSpec((2,), np.float32)))
    with pytest.raises(AssertionError, match="summed nothing"):
        assert_only_secure(silent, (), [np.ones(2, np.float32)])
