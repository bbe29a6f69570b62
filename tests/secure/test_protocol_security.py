"""What honest parties refuse: tampered ciphertexts and shares, and requests that would leak."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("cryptography")

from aggkit.secure.errors import (
    AuthenticationError,
    BadShareError,
    MessageFormatError,
    ProtocolAbort,
    ProtocolViolation,
    RefusedRequest,
    StageError,
)
from aggkit.secure.messages import (
    MaskedInputRequest,
    PeerKeys,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)
from aggkit.secure.protocol import SecAggClient, SecAggServer
from tests.secure.protocol_helpers import (
    PERMISSIVE,
    drive_round,
    modular_sum,
    up_to_masked_input,
)

X = np.arange(5 * 8).reshape(5, 8) % 16


def flip(data: bytes, index: int) -> bytes:
    raw = bytearray(data)
    raw[index] ^= 0x01
    return bytes(raw)


@pytest.mark.parametrize("where", [0, 20, -1])  # first byte, middle, last byte of the GCM tag
def test_tampered_share_ciphertext_is_rejected_by_the_receiver(where):
    def tamper(stage, u, msg):
        if isinstance(msg, MaskedInputRequest) and u == 2:
            (src, ct), *rest = msg.ciphertexts
            return dataclasses.replace(msg, ciphertexts=((src, flip(ct, where)), *rest))
        return msg

    with pytest.raises(AuthenticationError, match="failed authentication"):
        drive_round(X, modulus=2**16, threshold=3, on_request=tamper)


def test_ciphertext_redirected_to_another_client_is_rejected():
    # The server swaps the senders of two ciphertexts: the AAD binds (sender, receiver).
    def swap(stage, u, msg):
        if isinstance(msg, MaskedInputRequest) and u == 0:
            (a, ca), (b, cb), *rest = msg.ciphertexts
            return dataclasses.replace(msg, ciphertexts=((a, cb), (b, ca), *rest))
        return msg

    with pytest.raises(AuthenticationError):
        drive_round(X, modulus=2**16, threshold=3, on_request=swap)


@pytest.mark.parametrize("kind", ["seed", "key"])
def test_tampered_share_is_pinned_on_its_sender_and_the_round_finishes(kind):
    # Client 0's shares have the smallest evaluation point: the server would use them first.
    drop = {4} if kind == "key" else set()
    server, clients, requests = rounds_until_unmask(drop_masked=drop)
    field = "seed_shares" if kind == "seed" else "key_shares"
    answer = clients[0].handle(requests[0])
    pairs = getattr(answer, field)
    owner, share = pairs[-1]
    bad = dataclasses.replace(answer, **{field: (*pairs[:-1], (owner, flip(share, 35)))})
    with pytest.raises(BadShareError, match="client 0 returned") as error:
        server.receive(bad)
    assert error.value.client_id == 0
    with pytest.raises(ProtocolViolation, match="bad share and is excluded"):
        server.receive(answer)  # its good answer does not come back in either
    for u in sorted(requests)[1:]:
        server.receive(clients[u].handle(requests[u]))
    result = server.finish()  # 3 good holders of every secret remain: t = 3
    assert result.bad_shares == (0,)
    included = sorted(set(range(5)) - drop)
    np.testing.assert_array_equal(result.sum, modular_sum(X, included, 2**16))


def test_too_many_bad_shares_abort_before_reconstructing():
    server, clients, requests = rounds_until_unmask()
    for u in (0, 1, 2):
        answer = clients[u].handle(requests[u])
        (owner, share), *rest = answer.seed_shares
        with pytest.raises(BadShareError):
            server.receive(
                dataclasses.replace(answer, seed_shares=((owner, flip(share, 0)), *rest))
            )
    for u in (3, 4):
        server.receive(clients[u].handle(requests[u]))
    with pytest.raises(ProtocolAbort, match="2 shares"):
        server.finish()


def test_swapped_shares_of_two_owners_are_rejected():
    def swap(stage, u, msg):
        if isinstance(msg, UnmaskResponse) and u == 0:
            (a, sa), (b, sb), *rest = msg.seed_shares
            return dataclasses.replace(msg, seed_shares=((a, sb), (b, sa), *rest))
        return msg

    with pytest.raises(AuthenticationError):
        drive_round(X, modulus=2**16, threshold=3, on_response=swap)


def rounds_until_unmask(n=5, t=3, drop_masked=()):
    """Clients and the server up to the unmask requests (client ids 0..n-1)."""
    server, clients, requests = up_to_masked_input(n, modulus=2**16, vector_length=8, threshold=t)
    for u, r in requests.items():
        if u not in drop_masked:
            server.receive(clients[u].handle(r, X[u]))
    return server, clients, server.advance()  # honest-but-curious: no consistency round


def test_request_for_both_secrets_of_one_peer_is_refused():
    _, clients, requests = rounds_until_unmask(drop_masked={4})
    honest = requests[0]
    assert honest.dropped == (4,)
    greedy = dataclasses.replace(honest, survivors=(*honest.survivors, 4))
    with pytest.raises(RefusedRequest, match="both"):
        clients[0].handle(greedy)
    assert clients[0].stage == "aborted"
    with pytest.raises(StageError):  # and it does not answer the honest request afterwards
        clients[0].handle(honest)


def test_request_listing_the_client_itself_as_dropped_is_refused():
    _, clients, requests = rounds_until_unmask()
    r = requests[1]
    bad = dataclasses.replace(r, survivors=tuple(v for v in r.survivors if v != 1), dropped=(1,))
    with pytest.raises(RefusedRequest, match="dropped"):
        clients[1].handle(bad)


def test_request_about_a_stranger_or_too_few_survivors_is_refused():
    _, clients, requests = rounds_until_unmask()
    r = requests[2]
    with pytest.raises(RefusedRequest, match="did not mask"):
        clients[2].handle(dataclasses.replace(r, dropped=(9,)))
    # Without a consistency round the request's lists are the client's survivor set: too few
    # survivors, or a neighbour listed neither as survivor nor as dropped, is refused.
    with pytest.raises(RefusedRequest, match="1 of its share holders survived"):
        clients[3].handle(dataclasses.replace(requests[3], survivors=(3,)))
    with pytest.raises(RefusedRequest, match="does not match the survivor set"):
        clients[4].handle(dataclasses.replace(requests[4], survivors=(1, 2, 3, 4)))


def test_only_one_unmask_answer_per_client():
    _, clients, requests = rounds_until_unmask(drop_masked={4})
    clients[0].handle(requests[0])
    assert clients[0].stage == "done"
    flipped = dataclasses.replace(requests[0], survivors=(0, 1, 2, 3, 4), dropped=())
    with pytest.raises(StageError):
        clients[0].handle(flipped)


def test_client_refuses_key_lists_that_do_not_echo_its_keys_or_repeat_keys():
    server = SecAggServer(
        [0, 1, 2], modulus=2**8, vector_length=1, threshold=2, honest_but_curious=True
    )
    clients = {u: SecAggClient(u, honest_but_curious=True, policy=PERMISSIVE) for u in range(3)}
    for u, r in server.start().items():
        server.receive(clients[u].handle(r))
    requests = server.advance()
    r0 = requests[0]
    me = next(p for p in r0.peers if p.client_id == 0)
    forged = dataclasses.replace(me, mask_key=bytes(range(32)))
    bad = ShareKeysRequest(r0.session_id, 0, tuple(forged if p is me else p for p in r0.peers))
    with pytest.raises(RefusedRequest, match="echo"):
        clients[0].handle(bad)
    other = next(p for p in requests[1].peers if p.client_id == 2)
    dup = PeerKeys(2, other.encryption_key, requests[1].peers[0].mask_key)
    bad = ShareKeysRequest(
        r0.session_id, 1, (*[p for p in requests[1].peers if p.client_id != 2], dup)
    )
    with pytest.raises(RefusedRequest, match="repeats"):
        clients[1].handle(bad)
    few = ShareKeysRequest(
        r0.session_id, 2, tuple(p for p in requests[2].peers if p.client_id == 2)
    )
    with pytest.raises(RefusedRequest, match="threshold"):
        clients[2].handle(few)


def test_server_rejects_incomplete_or_malformed_unmask_answers():
    server, clients, requests = rounds_until_unmask(drop_masked={4})
    answer = clients[0].handle(requests[0])
    missing = dataclasses.replace(answer, key_shares=())
    with pytest.raises(ProtocolViolation, match="exactly"):
        server.receive(missing)
    short = dataclasses.replace(
        answer, seed_shares=tuple((o, s[:-1]) for o, s in answer.seed_shares)
    )
    with pytest.raises(ProtocolViolation, match="size"):
        server.receive(short)
    server.receive(answer)


def test_server_rejects_masked_values_outside_the_modulus():
    server, clients, requests = up_to_masked_input(2, modulus=1000, vector_length=2, threshold=2)
    answer = clients[0].handle(requests[0], np.array([1, 2]))
    assert answer.modulus == 1000
    # The message checks its words against its modulus (built here, or decoded: MessageFormatError
    # in test_protocol_messages.py), and the server checks that the modulus is its round's.
    with pytest.raises(ValueError, match=r"masked must be in \[0, 1000\)"):
        dataclasses.replace(answer, masked=np.array([5, 1000], np.uint32))
    forged = dataclasses.replace(answer, masked=np.array([5, 1000], np.uint32), modulus=2**32)
    with pytest.raises(ProtocolViolation, match="modulo 4294967296, the round's is 1000"):
        server.receive(forged)
    wrong = dataclasses.replace(answer, masked=np.array([5], np.uint32))
    with pytest.raises(ProtocolViolation):
        server.receive(wrong)


def test_corrupted_bytes_do_not_parse():
    server = SecAggServer(
        [0, 1], modulus=2**8, vector_length=1, threshold=2, honest_but_curious=True
    )
    data = server.start()[0].to_bytes()
    with pytest.raises(MessageFormatError, match="magic"):
        decode(b"XXXX" + data[4:])
    with pytest.raises(MessageFormatError, match="version"):
        decode(data[:4] + b"\x01" + data[5:])  # version 1 predates signatures
    with pytest.raises(MessageFormatError):
        decode(data[:-3])


def test_unmask_request_itself_validates_ids():
    with pytest.raises(ValueError, match="repeat"):
        UnmaskRequest(bytes(16), 0, survivors=(0, 0), dropped=())
