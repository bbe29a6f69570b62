"""The secure aggregation protocol: masks cancel, dropouts are recovered, aborts learn nothing."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cryptography")

from aggkit.secure import protocol, shamir
from aggkit.secure.errors import ProtocolAbort, ProtocolViolation, StageError
from aggkit.secure.graph import harary_graph
from aggkit.secure.messages import (
    STAGES,
    AdvertiseKeysRequest,
    ConsistencyCheckRequest,
    MaskedInputResponse,
)
from aggkit.secure.protocol import SecAggClient, SecAggServer
from aggkit.secure.simulation import run_secure_sum, simulate_round
from tests.secure.protocol_helpers import PERMISSIVE, drive_round, modular_sum, up_to_masked_input

MODULI = [2**32, 2**16, 2**64, 2**40, 22, 2**64 - 59, 2**31 + 1, 2]


def random_inputs(rng, k, m, modulus):
    top = min(modulus, 2**63)
    x = rng.integers(0, top, size=(k, m), dtype=np.uint64)
    if m:
        x[0, 0] = modulus - 1  # the largest value, beyond int64 for modulus 2**64
    return x


@pytest.mark.parametrize("modulus", MODULI)
@pytest.mark.parametrize("graph", ["secagg", "secagg+"])
def test_masks_cancel_without_dropouts(modulus, graph):
    rng = np.random.default_rng(modulus % 1000)
    x = random_inputs(rng, 12, 37, modulus)
    out = simulate_round(x, modulus=modulus, graph=graph, degree=4, seed=1)
    assert out.included == tuple(range(12))
    np.testing.assert_array_equal(out.sum, modular_sum(x, range(12), modulus))
    assert out.sum.dtype == np.uint64


def test_the_masked_inputs_are_not_the_inputs():
    x = np.zeros((4, 64), np.int64)
    seen = []

    def spy(stage, u, msg):
        if isinstance(msg, MaskedInputResponse):
            seen.append(msg.masked.copy())
        return msg

    result, _, _ = drive_round(x, modulus=2**32, threshold=3, on_response=spy)
    np.testing.assert_array_equal(result.sum, np.zeros(64))
    assert len(seen) == 4
    assert all(np.count_nonzero(y) > 60 for y in seen)
    assert all(not np.array_equal(seen[i], seen[j]) for i in range(4) for j in range(i))


def test_single_client_and_empty_vectors():
    np.testing.assert_array_equal(run_secure_sum(np.array([[3, 4]]), modulus=5, seed=0), [3, 4])
    assert run_secure_sum(np.zeros((3, 0), np.int64), modulus=2**32, seed=0).shape == (0,)


#: Every (authenticated, stage) pair a round runs: the honest-but-curious mode has no
#: consistency check.
MODE_STAGES = [(a, s) for a in (False, True) for s in protocol.round_stages(a)]


@pytest.mark.parametrize(("authenticated", "stage"), MODE_STAGES)
def test_secagg_recovers_from_n_minus_t_dropouts_at_any_stage(authenticated, stage):
    n, t = 7, 4
    rng = np.random.default_rng(7)
    x = random_inputs(rng, n, 50, 2**32)
    gone = {1, 4, 6}  # n - t of them
    result, _, _ = drive_round(
        x, modulus=2**32, threshold=t, drop={stage: gone}, authenticated=authenticated
    )
    # Clients that vanish after sending their masked input are still in the sum.
    after = stage in ("consistency_check", "unmask")
    expected = set(range(n)) if after else set(range(n)) - gone
    assert set(result.included) == expected
    np.testing.assert_array_equal(result.sum, modular_sum(x, sorted(expected), 2**32))
    assert result.dropped == {stage: tuple(sorted(gone))}


@pytest.mark.parametrize("authenticated", [False, True])
def test_only_the_authenticated_mode_runs_the_consistency_check(authenticated):
    x = random_inputs(np.random.default_rng(3), 5, 6, 2**16)
    sent = []

    def spy(stage, u, msg):
        sent.append(type(msg).__name__)
        return msg

    result, server, clients = drive_round(
        x, modulus=2**16, threshold=3, on_request=spy, authenticated=authenticated
    )
    np.testing.assert_array_equal(result.sum, modular_sum(x, range(5), 2**16))
    assert ("ConsistencyCheckRequest" in sent) == authenticated
    assert len(sent) == 5 * len(server.stages)
    assert server.stages == clients[0].stages == protocol.round_stages(authenticated)
    assert server.stages == STAGES if authenticated else "consistency_check" not in server.stages


def test_honest_but_curious_client_refuses_a_consistency_check_request():
    x = np.arange(8).reshape(4, 2)
    server, clients, requests = up_to_masked_input(4, modulus=16, vector_length=2, threshold=3)
    for u, r in requests.items():
        server.receive(clients[u].handle(r, x[u]))
    unmask = server.advance()
    assert all(type(r).__name__ == "UnmaskRequest" for r in unmask.values())
    check = ConsistencyCheckRequest(unmask[0].session_id, 0, (0, 1, 2, 3))
    with pytest.raises(StageError, match="expects UnmaskRequest"):
        clients[0].handle(check)
    assert clients[0].stage == "aborted"


def test_a_consistency_check_dropout_vanishes_before_unmask_without_that_round():
    # The same dropout plan in both modes: without a consistency round, the clients planned to
    # vanish there vanish before answering the unmask request; same survivors, same sum.
    x = random_inputs(np.random.default_rng(4), 12, 9, 2**24)
    plan = {"masked_input": [2], "consistency_check": 0.25, "unmask": 0.2}
    hbc, auth = (
        simulate_round(
            x, modulus=2**24, threshold=4, dropouts=plan, graph="secagg", seed=5, authenticated=a
        )
        for a in (False, True)
    )
    assert hbc.included == auth.included == tuple(u for u in range(12) if u != 2)
    np.testing.assert_array_equal(hbc.sum, auth.sum)
    np.testing.assert_array_equal(hbc.sum, modular_sum(x, hbc.included, 2**24))
    assert len(auth.dropped["consistency_check"]) == 3 and len(auth.dropped["unmask"]) == 2
    assert hbc.dropped["unmask"] == tuple(
        sorted(auth.dropped["consistency_check"] + auth.dropped["unmask"])
    )
    assert "consistency_check" not in hbc.dropped and "consistency_check" not in hbc.costs


def test_dropouts_spread_over_all_stages():
    n, t = 9, 4
    x = random_inputs(np.random.default_rng(9), n, 20, 2**20)
    drop = {"advertise_keys": {0}, "share_keys": {3}, "masked_input": {5, 8}, "unmask": {2}}
    result, _, _ = drive_round(x, modulus=2**20, threshold=t, drop=drop)
    assert result.included == (1, 2, 4, 6, 7)
    np.testing.assert_array_equal(result.sum, modular_sum(x, result.included, 2**20))


@pytest.mark.parametrize(("authenticated", "stage"), MODE_STAGES)
def test_abort_below_threshold_reconstructs_nothing(authenticated, stage, monkeypatch):
    n, t = 6, 4
    x = random_inputs(np.random.default_rng(1), n, 10, 2**32)
    calls = []
    real = shamir.combine
    monkeypatch.setattr(
        protocol.shamir, "combine", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with pytest.raises(ProtocolAbort) as info:
        drive_round(  # n - t + 1 dropouts
            x, modulus=2**32, threshold=t, drop={stage: {0, 2, 5}}, authenticated=authenticated
        )
    assert info.value.stage == stage
    assert "threshold" in str(info.value)
    assert calls == []  # no secret was reconstructed


def test_aborted_server_accepts_nothing_more():
    x = np.zeros((3, 2), np.int64)
    with pytest.raises(ProtocolAbort):
        drive_round(x, modulus=8, threshold=3, drop={"masked_input": {0}})
    server = SecAggServer(
        [0, 1, 2], modulus=8, vector_length=2, threshold=3, honest_but_curious=True
    )
    server.start()
    with pytest.raises(ProtocolAbort):
        server.advance()  # nobody answered
    assert server.stage == "aborted"
    with pytest.raises(StageError):
        server.advance()
    with pytest.raises(StageError):
        server.finish()


def test_secagg_plus_masks_only_with_neighbours_and_recovers():
    n = 30
    graph = harary_graph(range(n), degree=6, randbytes=np.random.default_rng(0).bytes)
    x = random_inputs(np.random.default_rng(2), n, 16, 2**32)
    sizes = {}

    def spy(stage, u, msg):
        if stage == "share_keys" and msg.client_id == u and hasattr(msg, "peers"):
            sizes[u] = len(msg.peers)
        return msg

    gone = {3, 11, 20}
    result, _, _ = drive_round(
        x, modulus=2**32, threshold=4, graph=graph, drop={"masked_input": gone}, on_request=spy
    )
    assert set(sizes.values()) == {7}  # each client shares with its 6 neighbours and itself
    np.testing.assert_array_equal(result.sum, modular_sum(x, sorted(set(range(n)) - gone), 2**32))


def test_secagg_plus_leaves_out_clients_without_enough_neighbours():
    # A ring (degree 2) with threshold 3 needs both neighbours of every client. Client 0 vanishing
    # before sharing keys starves 1 and n-1, which are left out before anyone masks with them;
    # that starves 2 and n-2, and so on: everyone is left out and the round aborts cleanly.
    ring = {u: frozenset({(u - 1) % 8, (u + 1) % 8}) for u in range(8)}
    x = np.ones((8, 3), np.int64)
    with pytest.raises(ProtocolAbort):
        drive_round(x, modulus=2**8, threshold=3, graph=ring, drop={"share_keys": {0}})
    # With threshold 2, only client 0 is missing and its neighbours keep enough holders.
    result, _, _ = drive_round(x, modulus=2**8, threshold=2, graph=ring, drop={"share_keys": {0}})
    assert result.included == tuple(range(1, 8))
    np.testing.assert_array_equal(result.sum, [7, 7, 7])


def test_pruning_happens_before_masking():
    # Star-free example: clients 0-1-2-3 on a path plus a triangle 4-5-6. Threshold 2. Client 1
    # vanishes before advertising, so 0 has no neighbour left (closed neighbourhood {0}) and is
    # left out when the advertise stage closes; the rest still aggregate.
    graph = {
        0: {1},
        1: {0, 2},
        2: {1, 3},
        3: {2},
        4: {5, 6},
        5: {4, 6},
        6: {4, 5},
    }
    x = np.arange(7 * 2).reshape(7, 2)
    result, _, _ = drive_round(
        x, modulus=2**16, threshold=2, graph=graph, drop={"advertise_keys": {1}}
    )
    assert result.pruned == {"advertise_keys": (0,)}
    assert result.included == (2, 3, 4, 5, 6)
    np.testing.assert_array_equal(result.sum, x[[2, 3, 4, 5, 6]].sum(axis=0))


def test_late_masked_input_is_rejected():
    server, clients, requests = up_to_masked_input(4, modulus=2**16, vector_length=3, threshold=3)
    late = clients[3].handle(requests[3], np.array([1, 2, 3]))
    for u in (0, 1, 2):
        server.receive(clients[u].handle(requests[u], np.array([1, 1, 1])))
    server.advance()  # closes masked_input: client 3 counts as dropped
    with pytest.raises(StageError, match="closed"):
        server.receive(late)
    assert server.waiting == frozenset({0, 1, 2})


def test_server_rejects_strangers_duplicates_and_other_sessions():
    server = SecAggServer(
        [0, 1, 2], modulus=2**16, vector_length=1, threshold=2, honest_but_curious=True
    )
    requests = server.start()
    client = SecAggClient(0, honest_but_curious=True, policy=PERMISSIVE)
    answer = client.handle(requests[0])
    server.receive(answer)
    with pytest.raises(ProtocolViolation, match="already answered"):
        server.receive(answer)
    stranger = SecAggClient(7, honest_but_curious=True, policy=PERMISSIVE).handle(
        dataclasses.replace(requests[0], client_id=7)
    )
    with pytest.raises(ProtocolViolation, match="not asked"):
        server.receive(stranger)
    other = SecAggClient(1, honest_but_curious=True, policy=PERMISSIVE).handle(
        dataclasses.replace(requests[1], session_id=bytes(16))
    )
    with pytest.raises(ProtocolViolation, match="session"):
        server.receive(other)
    copycat = dataclasses.replace(answer, client_id=2)
    with pytest.raises(ProtocolViolation, match="reuses"):
        server.receive(copycat)


def test_client_enforces_stage_order():
    server = SecAggServer(
        [0, 1], modulus=2**8, vector_length=1, threshold=2, honest_but_curious=True
    )
    requests = server.start()
    client = SecAggClient(0, honest_but_curious=True, policy=PERMISSIVE)
    client.handle(requests[0])
    with pytest.raises(StageError):
        client.handle(requests[0])  # a repeated request aborts the client
    assert client.stage == "aborted"
    with pytest.raises(StageError):
        client.handle(requests[0])


def test_bad_input_value_is_retryable():
    x = np.array([[1, 2], [3, 4], [5, 6]])
    attempts = []
    server, clients, requests = up_to_masked_input(3, modulus=8, vector_length=2, threshold=2)
    for bad, error in [
        (np.array([1, 8]), ValueError),
        (np.array([1.0, 2.0]), TypeError),
        (np.array([1, 2, 3]), ValueError),
        (None, ValueError),
        (np.array([-1, 2]), ValueError),
    ]:
        with pytest.raises(error):
            clients[0].handle(requests[0], bad)
        attempts.append(clients[0].stage)
    assert set(attempts) == {"masked_input"}
    for u, r in requests.items():
        server.receive(clients[u].handle(r, x[u]))
    for u, r in server.advance().items():  # honest-but-curious: the unmask stage follows
        server.receive(clients[u].handle(r))
    np.testing.assert_array_equal(server.finish().sum, [1, 4])  # (9, 12) mod 8


def test_constructor_checks():
    with pytest.raises(ValueError, match="threshold"):
        SecAggServer([0, 1, 2], modulus=8, vector_length=1, threshold=4, honest_but_curious=True)
    with pytest.raises(ValueError, match="threshold"):
        SecAggServer([0, 1, 2], modulus=8, vector_length=1, threshold=0, honest_but_curious=True)
    with pytest.raises(ValueError, match="modulus"):
        SecAggServer([0, 1], modulus=1, vector_length=1, threshold=1, honest_but_curious=True)
    with pytest.raises(ValueError, match="modulus"):
        SecAggServer(
            [0, 1], modulus=2**64 + 1, vector_length=1, threshold=1, honest_but_curious=True
        )
    with pytest.raises(ValueError, match="distinct"):
        SecAggServer([0, 0], modulus=8, vector_length=1, threshold=1, honest_but_curious=True)
    with pytest.raises(ValueError, match="symmetric"):
        SecAggServer(
            [0, 1, 2],
            modulus=8,
            vector_length=1,
            threshold=1,
            graph={0: {1}, 1: set(), 2: set()},
            honest_but_curious=True,
        )
    with pytest.raises(ValueError):
        SecAggServer([], modulus=8, vector_length=1, threshold=1, honest_but_curious=True)
    with pytest.raises(ValueError):
        AdvertiseKeysRequest(bytes(16), 0, modulus=2**65, vector_length=1, threshold=1)


def test_simulation_argument_checks():
    x = np.ones((3, 2), np.int64)
    with pytest.raises(ValueError, match="modulus"):
        run_secure_sum(x + 7, modulus=8)
    with pytest.raises(TypeError):
        run_secure_sum(x.astype(float), modulus=8)
    with pytest.raises(ValueError, match="stage"):
        run_secure_sum(x, modulus=8, dropouts={"fit": [0]})
    with pytest.raises(ValueError):
        run_secure_sum(x, modulus=8, graph="ring")
    with pytest.raises(ValueError):
        run_secure_sum(x, modulus=8, threshold=1.5)


def test_simulation_reports_costs_and_is_reproducible():
    x = random_inputs(np.random.default_rng(4), 10, 100, 2**32)
    a = simulate_round(x, modulus=2**32, graph="secagg", dropouts={"masked_input": 0.2}, seed=5)
    b = simulate_round(x, modulus=2**32, graph="secagg", dropouts={"masked_input": 0.2}, seed=5)
    assert a.included == b.included and len(a.included) == 8
    np.testing.assert_array_equal(a.sum, b.sum)
    cost = a.costs["masked_input"]
    assert cost.requests == 10 and cost.responses == 8
    assert cost.max_response_bytes >= 4 * 100  # the masked vector dominates
    assert all(c.client_seconds > 0 and c.server_seconds > 0 for c in a.costs.values())
    assert a.costs["share_keys"].bytes_to_server > 10 * 9 * protocol.SHARE_CIPHERTEXT_SIZE


def test_import_does_not_load_cryptography():
    code = (
        "import sys, aggkit.secure, aggkit.secure.messages, aggkit.secure.graph, "
        "aggkit.secure.shamir, aggkit.secure.errors; "
        "assert 'cryptography' not in sys.modules; assert 'numba' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys"])
def test_clients_gone_before_sharing_are_never_masked_with(stage):
    x = random_inputs(np.random.default_rng(3), 6, 5, 2**32)
    seen_peers, seen_senders = set(), set()

    def spy(s, u, msg):
        if s == "share_keys":
            seen_peers.update(p.client_id for p in msg.peers)
        if s == "masked_input":
            seen_senders.update(v for v, _ in msg.ciphertexts)
        return msg

    result, _, _ = drive_round(x, modulus=2**32, threshold=3, drop={stage: {2}}, on_request=spy)
    assert 2 not in seen_senders  # nobody received its shares, so nobody masked with it
    assert (2 in seen_peers) == (stage == "share_keys")
    assert "unmask" not in result.dropped and 2 not in result.included
    np.testing.assert_array_equal(result.sum, modular_sum(x, [0, 1, 3, 4, 5], 2**32))


@pytest.mark.parametrize(("k", "bits"), [(5, 20), (9, 60), (2, 1), (1, 8)])
def test_bitwidth_channel_mapping_gives_the_integer_sum(k, bits):
    # The mapping proposed for a secure_sum backend: modulus 2**(b + ceil(log2 K)) never wraps.
    rng = np.random.default_rng(bits)
    x = rng.integers(0, 2**bits, size=(k, 17), dtype=np.uint64)
    x[:, 0] = 2**bits - 1  # every client at the top of the range
    modulus = 2 ** (bits + math.ceil(math.log2(k)))
    total = run_secure_sum(x, modulus=modulus, seed=k)
    np.testing.assert_array_equal(total, x.astype(object).sum(axis=0).astype(np.uint64))


def test_modulus_one_needs_no_round():
    np.testing.assert_array_equal(run_secure_sum(np.zeros((3, 2), np.int64), modulus=1), [0, 0])
    with pytest.raises(ValueError):
        run_secure_sum(np.ones((3, 2), np.int64), modulus=1)
