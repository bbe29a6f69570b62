"""Messages round-trip through bytes, and bad bytes are rejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggkit.secure import messages as msgs
from aggkit.secure.errors import MessageFormatError

SESSION = st.binary(min_size=16, max_size=16)
IDS = st.integers(0, msgs.MAX_CLIENT_ID)
KEY = st.binary(min_size=32, max_size=32)
UNIQUE_IDS = st.lists(IDS, max_size=8, unique=True).map(tuple)


@st.composite
def pairs(draw):
    ids = draw(st.lists(IDS, max_size=6, unique=True))
    return tuple((i, draw(st.binary(max_size=100))) for i in ids)


@st.composite
def any_message(draw):
    s, c = draw(SESSION), draw(IDS)
    kind = draw(st.integers(1, 8))
    if kind == 1:
        return msgs.AdvertiseKeysRequest(
            s,
            c,
            draw(st.integers(2, 2**64)),
            draw(st.integers(0, 2**40)),
            draw(st.integers(1, 2**20)),
        )
    if kind == 2:
        return msgs.AdvertiseKeysResponse(s, c, draw(KEY), draw(KEY))
    if kind == 3:
        ids = draw(st.lists(IDS, max_size=6, unique=True))
        return msgs.ShareKeysRequest(
            s, c, tuple(msgs.PeerKeys(i, draw(KEY), draw(KEY)) for i in ids)
        )
    if kind == 4:
        return msgs.ShareKeysResponse(s, c, draw(KEY), draw(pairs()))
    if kind == 5:
        return msgs.MaskedInputRequest(s, c, draw(pairs()))
    if kind == 6:
        dtype = draw(st.sampled_from([np.uint32, np.uint64]))
        n = draw(st.integers(0, 50))
        values = np.random.default_rng(n).integers(
            0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True
        )
        return msgs.MaskedInputResponse(s, c, values)
    if kind == 7:
        return msgs.UnmaskRequest(s, c, draw(UNIQUE_IDS), draw(UNIQUE_IDS))
    return msgs.UnmaskResponse(s, c, draw(pairs()), draw(pairs()))


@given(any_message())
def test_round_trip(message):
    data = message.to_bytes()
    back = msgs.decode(data)
    assert type(back) is type(message)
    assert back == message
    assert back.to_bytes() == data
    assert type(message).from_bytes(data) == message
    for name, value in msgs.fields(message).items():
        other = getattr(back, name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value)
            assert other.dtype == value.dtype
        else:
            assert other == value


@given(any_message(), st.data())
def test_truncated_or_extended_bytes_are_rejected(message, data):
    raw = message.to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MessageFormatError):
        msgs.decode(raw[:cut])
    with pytest.raises(MessageFormatError):
        msgs.decode(raw + b"\0")


def test_from_bytes_checks_the_kind():
    raw = msgs.UnmaskRequest(bytes(16), 1, (1,), ()).to_bytes()
    with pytest.raises(MessageFormatError, match="expected"):
        msgs.UnmaskResponse.from_bytes(raw)


def test_unknown_kind_and_invalid_fields_are_format_errors():
    raw = bytearray(msgs.UnmaskRequest(bytes(16), 1, (1,), ()).to_bytes())
    raw[5] = 99
    with pytest.raises(MessageFormatError, match="kind"):
        msgs.decode(bytes(raw))
    raw = bytearray(msgs.UnmaskRequest(bytes(16), 1, (1, 2), ()).to_bytes())
    raw[-9:-5] = raw[-13:-9]  # repeat the id 1
    with pytest.raises(MessageFormatError, match="repeat"):
        msgs.decode(bytes(raw))
    big = msgs.UnmaskRequest(bytes(16), 1, (), ()).to_bytes()
    big = big[:22] + (2**32 - 1).to_bytes(4, "big") + big[26:]  # client id beyond the maximum
    with pytest.raises(MessageFormatError):
        msgs.decode(big)


def test_construction_validates():
    with pytest.raises(ValueError):
        msgs.AdvertiseKeysResponse(bytes(15), 0, bytes(32), bytes(32))
    with pytest.raises(ValueError):
        msgs.AdvertiseKeysResponse(bytes(16), 0, bytes(31), bytes(32))
    with pytest.raises(ValueError):
        msgs.AdvertiseKeysResponse(bytes(16), -1, bytes(32), bytes(32))
    with pytest.raises(TypeError):
        msgs.AdvertiseKeysResponse(bytes(16), 1.0, bytes(32), bytes(32))
    with pytest.raises(TypeError):
        msgs.MaskedInputResponse(bytes(16), 0, np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        msgs.ShareKeysResponse(bytes(16), 0, bytes(32), ((1, b""), (1, b"")))
    with pytest.raises(TypeError):
        msgs.ShareKeysRequest(bytes(16), 0, ("peer",))
