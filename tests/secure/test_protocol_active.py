"""A malicious server against default-configured clients (Bonawitz et al. 2017, section 6).

Each attack is first shown to work where the defence is switched off (so the test can fail),
then refused by a client built with its defaults: an identity, the registry and the default
:class:`ClientPolicy`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

pytest.importorskip("cryptography")

from aggkit.secure import crypto, shamir
from aggkit.secure.errors import (
    ProtocolAbort,
    RefusedRequest,
    SecAggError,
    SignatureError,
)
from aggkit.secure.identity import IdentityRegistry, SigningIdentity
from aggkit.secure.messages import (
    AdvertiseKeysRequest,
    ConsistencyCheckRequest,
    MaskedInputRequest,
    PeerKeys,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskResponse,
)
from aggkit.secure.protocol import ClientPolicy, SecAggClient, SecAggServer
from tests.secure.protocol_helpers import PERMISSIVE, drive_round, identities, modular_sum

SESSION = bytes(range(16))
MODULUS = 2**16


def authenticated(n: int, **kwargs):
    """Default-configured clients ``0..n-1`` (identity, registry, default policy)."""
    keys, registry = identities(n)
    clients = {u: SecAggClient(u, identity=keys[u], registry=registry, **kwargs) for u in range(n)}
    return clients, keys, registry


# ----------------------------------------------------------------- 1. threshold chosen by server


def threshold_one_attack(victim: SecAggClient, secret: np.ndarray) -> np.ndarray:
    """The threshold-1 attack: threshold 1, a key list naming only the victim; returns what the
    server recovers of the victim's input (its self-mask share *is* the seed)."""
    u = victim.client_id
    keys = victim.handle(AdvertiseKeysRequest(SESSION, u, MODULUS, secret.size, threshold=1))
    me = PeerKeys(u, keys.encryption_key, keys.mask_key, keys.signature)
    victim.handle(ShareKeysRequest(SESSION, u, (me,)))
    masked = victim.handle(MaskedInputRequest(SESSION, u, ()), secret).masked
    if victim.authenticated:
        victim.handle(ConsistencyCheckRequest(SESSION, u, (u,)))
    answer = victim.handle(UnmaskRequest(SESSION, u, (u,), ()))
    ((_, share),) = answer.seed_shares
    seed = shamir.combine({u + 1: share}, threshold=1)
    mask = crypto.mask_values(seed, MODULUS, secret.size)
    return (masked.astype(np.int64) - mask.astype(np.int64)) % MODULUS


def test_threshold_one_recovers_the_input_when_the_policy_is_switched_off():
    secret = np.array([1234, 42, 7], np.int64)
    victim = SecAggClient(0, honest_but_curious=True, policy=PERMISSIVE)
    np.testing.assert_array_equal(threshold_one_attack(victim, secret), secret)


@pytest.mark.parametrize("mode", ["authenticated", "honest_but_curious"])
def test_default_client_refuses_a_threshold_below_its_policy(mode):
    secret = np.array([1234, 42, 7], np.int64)
    if mode == "authenticated":
        victim = authenticated(1)[0][0]
    else:
        victim = SecAggClient(0, honest_but_curious=True)
    with pytest.raises(RefusedRequest, match="client policy") as refusal:
        threshold_one_attack(victim, secret)
    assert "threshold 1" in str(refusal.value)
    assert victim.stage == "aborted"


def test_default_client_refuses_a_neighbourhood_below_its_policy():
    clients, _, _ = authenticated(3)
    server_keys = {
        u: clients[u].handle(AdvertiseKeysRequest(SESSION, u, MODULUS, 1, 3)) for u in (0, 1, 2)
    }
    peers = tuple(
        PeerKeys(u, r.encryption_key, r.mask_key, r.signature) for u, r in server_keys.items()
    )
    # Valid keys and signatures, threshold 3 of 3 holders: but only 2 neighbours (minimum 3).
    with pytest.raises(RefusedRequest, match="2 neighbours, fewer than its minimum 3"):
        clients[0].handle(ShareKeysRequest(SESSION, 0, peers))


def test_policy_threshold_bound_is_strictly_above_half():
    policy = ClientPolicy()
    policy.check(0, threshold=3, holders=5)
    policy.check(0, threshold=4, holders=7)
    for threshold, holders in [(2, 4), (3, 6), (3, 7), (1, 1)]:
        with pytest.raises(RefusedRequest):
            policy.check(0, threshold=threshold, holders=holders)
    assert policy.smallest_threshold() == 3  # more than half of 4 holders
    assert ClientPolicy(min_neighbours=6, threshold_fraction=2 / 3).smallest_threshold() == 5
    with pytest.raises(ValueError):
        ClientPolicy(threshold_fraction=1.0)


def test_a_mode_must_be_chosen():
    keys, registry = identities(2)
    with pytest.raises(TypeError, match="choose the mode"):
        SecAggClient(0)
    with pytest.raises(TypeError, match="choose the mode"):
        SecAggClient(0, registry=registry)
    with pytest.raises(ValueError, match="takes no identity"):
        SecAggClient(0, identity=keys[0], registry=registry, honest_but_curious=True)
    with pytest.raises(ValueError, match="does not hold this identity"):
        SecAggClient(1, identity=keys[0], registry=registry)
    with pytest.raises(TypeError, match="choose the mode"):
        SecAggServer([0, 1], modulus=8, vector_length=1, threshold=2)
    with pytest.raises(ValueError, match="not in the identity registry"):
        SecAggServer([0, 1, 2], modulus=8, vector_length=1, threshold=2, registry=registry)


# ----------------------------------------------------------------- 2. key substitution


def share_keys_requests(n: int, t: int, clients):
    """The honest share_keys requests of a round, and the server that made them."""
    mode = (
        {"registry": identities(n)[1]} if clients[0].authenticated else {"honest_but_curious": True}
    )
    server = SecAggServer(range(n), modulus=MODULUS, vector_length=4, threshold=t, **mode)
    for u, r in server.start().items():
        server.receive(clients[u].handle(r))
    return server, server.advance()


def substitute_keys(request: ShareKeysRequest, victim: int) -> tuple[ShareKeysRequest, dict]:
    """The server's keys in place of every neighbour's (it keeps their signatures)."""
    secrets, peers = {}, []
    for p in request.peers:
        if p.client_id == victim:
            peers.append(p)
            continue
        c_sk, c_pk = crypto.generate_keypair(os.urandom)
        _, s_pk = crypto.generate_keypair(os.urandom)
        secrets[p.client_id] = c_sk
        peers.append(PeerKeys(p.client_id, c_pk, s_pk, p.signature))
    return dataclasses.replace(request, peers=tuple(peers)), secrets


def test_key_substitution_decrypts_the_shares_of_an_unauthenticated_client():
    clients = {u: SecAggClient(u, honest_but_curious=True) for u in range(5)}
    _, requests = share_keys_requests(5, 3, clients)
    forged, secrets = substitute_keys(requests[0], victim=0)
    answer = clients[0].handle(forged)
    victim_pk = next(p.encryption_key for p in forged.peers if p.client_id == 0)
    shares = {}
    for v, ciphertext in answer.ciphertexts:
        key = crypto.derive_key(
            crypto.agree(secrets[v], victim_pk), forged.session_id, b"share-channel", 0, v
        )
        plain = crypto.unseal(key, forged.session_id, 0, v, ciphertext)
        shares[v + 1] = plain[:36]
    seed = shamir.combine(dict(list(shares.items())[:3]), threshold=3)
    assert crypto.commit(forged.session_id, 0, seed) == answer.seed_commitment  # the seed is out


def test_default_client_refuses_substituted_keys():
    clients, _, _ = authenticated(5)
    _, requests = share_keys_requests(5, 3, clients)
    forged, _ = substitute_keys(requests[0], victim=0)
    with pytest.raises(SignatureError, match="does not verify"):
        clients[0].handle(forged)
    # Keys of a client the registry does not know are refused too.
    clients, _, _ = authenticated(5)
    _, requests = share_keys_requests(5, 3, clients)
    stranger = SigningIdentity.generate()
    p = requests[1].peers[0]
    sig = stranger.sign(b"anything")
    extra = PeerKeys(9, p.mask_key[::-1], p.encryption_key[::-1], sig)
    bad = dataclasses.replace(requests[1], peers=(*requests[1].peers, extra))
    with pytest.raises(SignatureError, match="client 9 is not in the identity registry"):
        clients[1].handle(bad)


def test_parameters_altered_for_one_client_are_caught_by_its_neighbours():
    clients, _, registry = authenticated(5)
    server = SecAggServer(
        range(5), modulus=MODULUS, vector_length=4, threshold=3, registry=registry
    )
    requests = server.start()
    # The server asks client 0 for a different modulus; it cannot pass the signature on as valid.
    lied = dataclasses.replace(requests[0], modulus=2**32)
    with pytest.raises(SignatureError):
        server.receive(clients[0].handle(lied))
    # ...nor hand it to the others as the round's keys.
    keys0 = clients[0]._own_keys
    for u in (1, 2, 3, 4):
        server.receive(clients[u].handle(requests[u]))
    share = server.advance()[1]
    forged = PeerKeys(0, *keys0, b"\0" * 64)
    with pytest.raises(SignatureError):
        clients[1].handle(dataclasses.replace(share, peers=(*share.peers, forged)))


# ----------------------------------------------------------------- 3. inconsistent dropout lists


def after_masked_input(n: int, t: int, clients, x):
    """Server and clients of an honest round up to the requests after the masked inputs: the
    consistency check's (authenticated mode) or the unmask requests (honest-but-curious)."""
    server, requests = share_keys_requests(n, t, clients)
    for u, r in requests.items():
        server.receive(clients[u].handle(r))
    for u, r in server.advance().items():
        server.receive(clients[u].handle(r, x[u]))
    return server, server.advance()


def split_view_attack(clients, x, t: int, told_alive: set[int]):
    """The server tells ``told_alive`` that client 0 survived and the rest that it dropped.

    Returns how many shares of client 0's seed and of its mask key the server obtained.
    """
    n = len(clients)
    _, requests = after_masked_input(n, t, clients, x)
    everyone = tuple(range(n))
    without_0 = everyone[1:]
    signatures = {}
    for u in range(n):
        if not clients[u].authenticated:  # no consistency round: straight to the unmask lists
            continue
        view = everyone if u in told_alive else without_0
        if u == 0:
            view = everyone
        answer = clients[u].handle(ConsistencyCheckRequest(requests[u].session_id, u, view))
        signatures[u] = answer.signature
    seed_shares = key_shares = 0
    for u in range(n):
        alive = u in told_alive or u == 0
        survivors = everyone if alive else without_0
        dropped = () if alive else (0,)
        # The server's best: the signatures over the set this client was shown (signatures over
        # the other set do not verify: see test_signatures_over_another_survivor_set...).
        sigs = ()
        if clients[u].authenticated:
            group = (told_alive | {0}) if alive else set(range(n)) - told_alive - {0}
            sigs = tuple((v, signatures[v]) for v in sorted(group))
        request = UnmaskRequest(requests[u].session_id, u, survivors, dropped, sigs)
        try:
            answer = clients[u].handle(request)
        except SecAggError:
            continue
        assert isinstance(answer, UnmaskResponse)
        seed_shares += any(o == 0 for o, _ in answer.seed_shares)
        key_shares += any(o == 0 for o, _ in answer.key_shares)
    return seed_shares, key_shares


def test_inconsistent_dropout_lists_leak_both_secrets_without_the_policy():
    # t = 3, n = 7, all honest: clients 0-2 told "0 survived", 3-6 told "0 dropped".
    x = np.arange(7 * 4).reshape(7, 4) % MODULUS
    clients = {u: SecAggClient(u, honest_but_curious=True, policy=PERMISSIVE) for u in range(7)}
    seed, key = split_view_attack(clients, x, t=3, told_alive={0, 1, 2})
    assert seed >= 3 and key >= 3  # t shares of both of client 0's secrets: its input is out


def test_default_client_refuses_the_threshold_that_allows_inconsistent_lists():
    clients, _, _ = authenticated(7)
    _, requests = share_keys_requests(7, 3, clients)
    with pytest.raises(RefusedRequest, match=r"threshold 3 is not above 0.5 of its 7"):
        clients[0].handle(requests[0])


@pytest.mark.parametrize("told_alive", [{0, 1, 2}, {0, 1, 2, 3}, {1, 2, 3, 4}])
def test_consistency_check_refuses_a_split_view_at_the_policy_threshold(told_alive):
    # t = 4 (the smallest the default policy accepts for 7 holders): a group told the other
    # story holds fewer than t signatures over its set, and signatures over the other set do not
    # verify, so the server never gets t shares of both secrets.
    x = np.arange(7 * 4).reshape(7, 4) % MODULUS
    clients, _, _ = authenticated(7)
    seed, key = split_view_attack(clients, x, t=4, told_alive=told_alive)
    assert min(seed, key) < 4
    assert any(c.stage == "aborted" for c in clients.values())


def honest_unmask_requests(n: int, t: int, x):
    """Fresh default-configured clients of an honest round, and its unmask requests."""
    clients, _, _ = authenticated(n)
    server, requests = after_masked_input(n, t, clients, x)
    for u, r in requests.items():
        server.receive(clients[u].handle(r))
    return clients, server.advance()


def test_signatures_over_another_survivor_set_do_not_verify():
    x = np.arange(5 * 4).reshape(5, 4) % MODULUS
    clients, unmask = honest_unmask_requests(5, 3, x)
    # The server claims client 4 dropped, reusing signatures over the true set.
    lie = dataclasses.replace(
        unmask[0], survivors=tuple(v for v in unmask[0].survivors if v != 4), dropped=(4,)
    )
    with pytest.raises(RefusedRequest, match="does not match the survivor set"):
        clients[0].handle(lie)
    (v, sig), *rest = unmask[1].signatures
    forged = dataclasses.replace(unmask[1], signatures=((v, sig[::-1]), *rest))
    with pytest.raises(SignatureError):
        clients[1].handle(forged)
    few = dataclasses.replace(unmask[2], signatures=unmask[2].signatures[:2])
    with pytest.raises(RefusedRequest, match="only 2 neighbours signed"):
        clients[2].handle(few)


# ----------------------------------------------------------------- boundaries


@pytest.mark.parametrize("authenticated_mode", [False, True])
def test_too_few_survivors_refused_at_exactly_threshold_minus_one(authenticated_mode):
    n, t = 6, 4
    x = np.arange(n * 4).reshape(n, 4) % MODULUS
    for survivors, refused in [(t - 1, True), (t, False)]:
        if authenticated_mode:
            clients, _, _ = authenticated(n)
        else:
            clients = {u: SecAggClient(u, honest_but_curious=True) for u in range(n)}
        _, requests = after_masked_input(n, t, clients, x)
        # The survivor set at the consistency check, or (honest-but-curious mode, no such round)
        # the survivors and dropped of the unmask request.
        told = {"survivors": tuple(range(survivors))}
        if not authenticated_mode:
            told["dropped"] = tuple(range(survivors, n))
        request = dataclasses.replace(requests[0], **told)
        if refused:
            with pytest.raises(RefusedRequest, match=f"{t - 1} of its share holders survived"):
                clients[0].handle(request)
        else:
            clients[0].handle(request)
            assert clients[0].stage == ("unmask" if authenticated_mode else "done")


def ring(n: int, half: int) -> dict[int, frozenset[int]]:
    """Each client linked to the ``half`` clients on either side, in id order."""
    return {u: frozenset((u + d) % n for d in range(-half, half + 1) if d != 0) for u in range(n)}


@pytest.mark.parametrize("authenticated_mode", [False, True])
def test_sparse_graph_aborts_when_a_secret_has_fewer_than_threshold_holders(authenticated_mode):
    # 10 clients, 2 neighbours on either side, t = 4; clients 0 and 1 drop at masked_input:
    # client 9's closed neighbourhood {7, 8, 9, 0, 1} keeps only 3 holders.
    x = np.arange(10 * 5).reshape(10, 5) % MODULUS
    sent = []

    def spy(stage, u, msg):
        sent.append(stage)
        return msg

    with pytest.raises(ProtocolAbort, match="held by only 3 surviving clients") as abort:
        drive_round(
            x,
            modulus=MODULUS,
            threshold=4,
            graph=ring(10, 2),
            drop={"masked_input": {0, 1}},
            on_request=spy,
            authenticated=authenticated_mode,
            policy=ClientPolicy(),
        )
    assert abort.value.stage == "masked_input"
    assert "consistency_check" not in sent and "unmask" not in sent
    # One dropout leaves 4 = t holders everywhere: the round finishes with the right sum.
    result, _, _ = drive_round(
        x,
        modulus=MODULUS,
        threshold=4,
        graph=ring(10, 2),
        drop={"masked_input": {0}},
        authenticated=authenticated_mode,
        policy=ClientPolicy(),
    )
    np.testing.assert_array_equal(result.sum, modular_sum(x, range(1, 10), MODULUS))


# ----------------------------------------------------------------- identities


def test_identity_and_registry_files_round_trip(tmp_path):
    me = SigningIdentity.generate()
    me.save(tmp_path / "me.key")
    assert (tmp_path / "me.key").stat().st_mode & 0o777 == 0o600
    assert SigningIdentity.load(tmp_path / "me.key").public_key == me.public_key
    with pytest.raises(FileExistsError):
        me.save(tmp_path / "me.key")  # never overwrites a key
    registry = IdentityRegistry({3: me.public_key, 5: SigningIdentity.generate().public_key})
    registry.save(tmp_path / "registry.json")
    loaded = IdentityRegistry.load(tmp_path / "registry.json")
    assert dict(loaded) == dict(registry)
    loaded.verify(3, b"m", me.sign(b"m"))
    with pytest.raises(SignatureError):
        loaded.verify(5, b"m", me.sign(b"m"))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an aggkit"):
        IdentityRegistry.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="32 bytes"):
        IdentityRegistry({1: b"short"})
