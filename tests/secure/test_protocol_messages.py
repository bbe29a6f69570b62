"""Messages round-trip through bytes, and bad bytes are rejected."""

from __future__ import annotations

import dataclasses

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
def masked_words(draw):
    """``(words, modulus)``: a modulus of every word size (2 to 2**64), words in ``[0, modulus)``
    with the edge values 0 and ``modulus - 1`` among them."""
    bits = draw(st.integers(1, 64))
    modulus = draw(st.integers((1 << (bits - 1)) + 1, 1 << bits))
    dtype = msgs.word_dtype(modulus)
    n = draw(st.integers(0, 50))
    words = np.random.default_rng(n).integers(0, modulus, n, dtype=np.uint64, endpoint=False)
    words[: min(n, 2)] = [0, modulus - 1][: min(n, 2)]
    return words.astype(dtype), modulus


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
        return msgs.MaskedInputResponse(s, c, *draw(masked_words()))
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


# -- masked words: packed in word_bytes(modulus) bytes ------------------------------------------


def masked_bytes(words, modulus):
    return msgs.MaskedInputResponse(bytes(16), 7, words, modulus).to_bytes()


HEADER = 4 + 1 + 1 + 16 + 4 + 4  # magic, version, kind, session, client id, empty signature


def test_masked_words_take_the_fewest_bytes_their_modulus_needs():
    for modulus, size in [(2, 1), (256, 1), (257, 2), (2**32, 4), (2**37, 5), (2**64, 8)]:
        assert msgs.word_bytes(modulus) == size
        words = np.array([0, 1, modulus - 1], np.uint64).astype(msgs.word_dtype(modulus))
        raw = masked_bytes(words, modulus)
        assert len(raw) == HEADER + 8 + 1 + 8 + 3 * size
        back = msgs.decode(raw)
        assert back.modulus == modulus and back.masked.dtype == words.dtype
        assert back.masked.tolist() == [0, 1, modulus - 1]


@given(masked_words())
def test_masked_words_round_trip_at_every_width(case):
    words, modulus = case
    back = msgs.decode(masked_bytes(words, modulus))
    np.testing.assert_array_equal(back.masked, words)
    assert back.masked.dtype == words.dtype and back.modulus == modulus


def test_a_word_too_wide_for_its_modulus_is_refused_not_wrapped():
    # Packing keeps the low word_bytes(modulus) bytes: were a word >= modulus let through, 2**40
    # would travel as 0 in 5 bytes. Construction refuses it, for every width.
    for modulus in (2, 2**8, 2**32 - 5, 2**37, 2**40, 2**63 + 1):
        dtype = msgs.word_dtype(modulus)
        over = np.array([0, modulus], object).astype(np.uint64)  # modulus itself is out of range
        with pytest.raises(ValueError, match="masked must be in"):
            msgs.MaskedInputResponse(bytes(16), 0, over.astype(dtype), modulus)
    with pytest.raises(TypeError, match="uint64 for modulus"):
        msgs.MaskedInputResponse(bytes(16), 0, np.zeros(2, np.uint32), 2**37)
    full = msgs.MaskedInputResponse(bytes(16), 0, np.array([2**32 - 1], np.uint32))
    assert full.modulus == 2**32  # the default: the dtype's whole range


def _masked_parts(raw: bytes):
    """(prefix up to the modulus, modulus field, size byte, length field, words)."""
    at = HEADER
    return raw[:at], raw[at : at + 8], raw[at + 8], raw[at + 9 : at + 17], raw[at + 17 :]


def test_decoding_refuses_bad_word_sizes_lengths_and_high_bits():
    raw = masked_bytes(np.array([1, 2, 2**37 - 1], np.uint64), 2**37)
    head, modulus, size, length, words = _masked_parts(raw)
    assert size == 5 and int.from_bytes(length, "big") == 15 and len(words) == 15
    for bad in (0, 9, 255):
        with pytest.raises(MessageFormatError, match="word size must be 1 to 8 bytes"):
            msgs.decode(head + modulus + bytes([bad]) + length + words)
    for bad in (4, 8):  # a valid width, but not the canonical one for 2**37
        with pytest.raises(MessageFormatError, match="word size must be 5 bytes"):
            msgs.decode(head + modulus + bytes([bad]) + length + words)
    for cut in (14, 13, 11):  # not whole words
        odd = cut.to_bytes(8, "big")
        with pytest.raises(MessageFormatError, match="not a whole number of 5-byte words"):
            msgs.decode(head + modulus + bytes([size]) + odd + words[:cut])
    with pytest.raises(MessageFormatError, match="truncated"):
        msgs.decode(head + modulus + bytes([size]) + length + words[:10])
    # The high bits of a packed word: 2**37 (bit 37 of the last byte of the first word) and
    # 2**40 - 1 (every bit set) are >= the modulus.
    for word in (2**37, 2**40 - 1):
        high = word.to_bytes(5, "little") + words[5:]
        with pytest.raises(MessageFormatError, match=r"masked must be in \[0, 137438953472\)"):
            msgs.decode(head + modulus + bytes([size]) + length + high)
    # ...and the largest word in range decodes.
    top = (2**37 - 1).to_bytes(5, "little") + words[5:]
    assert msgs.decode(head + modulus + bytes([size]) + length + top).masked[0] == 2**37 - 1


def test_version_2_messages_are_refused_by_their_version():
    raw = bytearray(masked_bytes(np.zeros(3, np.uint64), 2**37))
    assert raw[4] == msgs.VERSION == 3
    raw[4] = 2
    with pytest.raises(MessageFormatError, match=r"unsupported message version 2 \(expected 3\)"):
        msgs.decode(bytes(raw))


def test_a_signature_covers_the_packed_words_and_the_modulus():
    message = msgs.MaskedInputResponse(bytes(16), 1, np.array([3, 4], np.uint64), 2**37)
    assert message.signed_bytes() == message.to_bytes()
    signed = dataclasses.replace(message, signature=bytes(range(64)))
    assert msgs.decode(signed.to_bytes()).signed_bytes() == message.to_bytes()
    assert dataclasses.replace(message, modulus=2**38).signed_bytes() != message.signed_bytes()
