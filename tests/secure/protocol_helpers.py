"""A hand-driven protocol round for tests: lets a test drop, tamper with or replace messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest

pytest.importorskip("cryptography")

from aggkit.secure.crypto import DeterministicRandom
from aggkit.secure.identity import IdentityRegistry, SigningIdentity
from aggkit.secure.messages import STAGES, Message, decode
from aggkit.secure.protocol import ClientPolicy, SecAggClient, SecAggResult, SecAggServer

#: The policy of the honest-but-curious tests below: they probe the protocol's own checks at
#: thresholds and sizes a deployment's default ClientPolicy would refuse.
PERMISSIVE = ClientPolicy.permissive()


def identities(n: int, seed: int = 0) -> tuple[dict[int, SigningIdentity], IdentityRegistry]:
    """Reproducible identities for clients ``0..n-1`` and their registry."""
    ids = {u: SigningIdentity.generate(DeterministicRandom(seed, "identity", u)) for u in range(n)}
    return ids, IdentityRegistry.of(ids)


#: ``hook(stage, client_id, message) -> message``: sees each request before the client does and
#: each response before the server does.
Hook = Callable[[str, int, Message], Message]


def drive_round(
    inputs: np.ndarray,
    *,
    modulus: int,
    threshold: int,
    graph: Mapping[int, frozenset[int]] | None = None,
    drop: Mapping[str, set[int]] | None = None,
    on_request: Hook | None = None,
    on_response: Hook | None = None,
    seed: int = 0,
    authenticated: bool = False,
    policy: ClientPolicy = PERMISSIVE,
) -> tuple[SecAggResult, SecAggServer, dict[int, SecAggClient]]:
    """Run a full round over ``inputs`` rows; every message goes through bytes.

    ``authenticated=True`` gives every client an identity (and the default-strict ``policy`` if
    the caller passes ``ClientPolicy()``); otherwise the honest-but-curious mode.
    """
    drop = drop or {}
    ids = list(range(inputs.shape[0]))
    if authenticated:
        keys, registry = identities(len(ids), seed)
        server_mode: dict = {"registry": registry}
        client_mode = {u: {"identity": keys[u], "registry": registry} for u in ids}
    else:
        server_mode = {"honest_but_curious": True}
        client_mode = {u: {"honest_but_curious": True} for u in ids}
    server = SecAggServer(
        ids,
        modulus=modulus,
        vector_length=inputs.shape[1],
        threshold=threshold,
        graph=graph,
        randbytes=DeterministicRandom(seed, "server"),
        **server_mode,
    )
    clients = {
        u: SecAggClient(
            u, randbytes=DeterministicRandom(seed, "client", u), policy=policy, **client_mode[u]
        )
        for u in ids
    }
    requests = server.start()
    result = None
    carried: set[int] = set()  # dropped at a stage this mode does not run: gone at the next
    for stage in STAGES:
        if stage not in server.stages:
            carried = set(drop.get(stage, ()))
            continue
        gone, carried = carried | set(drop.get(stage, ())), set()
        for u, request in requests.items():
            if u in gone:
                continue
            request = decode(request.to_bytes())
            if on_request is not None:
                request = on_request(stage, u, request)
            response = clients[u].handle(request, inputs[u] if stage == "masked_input" else None)
            response = decode(response.to_bytes())
            if on_response is not None:
                response = on_response(stage, u, response)
            server.receive(response)
        if stage != STAGES[-1]:
            requests = server.advance()
        else:
            result = server.finish()
    return result, server, clients


def modular_sum(inputs: np.ndarray, rows, modulus: int) -> np.ndarray:
    """The reference: exact sum of the given rows mod ``modulus``, as uint64."""
    total = np.zeros(inputs.shape[1], dtype=object)
    for r in rows:
        total = total + inputs[r].astype(object)
    return (total % modulus).astype(np.uint64)


def up_to_masked_input(
    n: int, *, modulus: int, vector_length: int, threshold: int
) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, Message]]:
    """Server and clients ``0..n-1`` after key sharing, with the masked-input requests."""
    server = SecAggServer(
        list(range(n)),
        modulus=modulus,
        vector_length=vector_length,
        threshold=threshold,
        honest_but_curious=True,
    )
    clients = {u: SecAggClient(u, honest_but_curious=True, policy=PERMISSIVE) for u in range(n)}
    requests = server.start()
    for _ in range(2):
        for u, r in requests.items():
            server.receive(clients[u].handle(r))
        requests = server.advance()
    return server, clients, requests
