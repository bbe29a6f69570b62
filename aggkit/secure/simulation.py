"""Run a secure aggregation round in-process over K simulated clients, with dropouts and costs.

Every message really goes through bytes (``to_bytes`` then ``decode``), so the simulation runs
exactly the code a networked deployment runs, and the byte counts are the wire sizes. Clients run
one after the other in this process: the times are CPU times of the real cryptography.

:func:`run_secure_sum` is the entry point for a summation backend: it returns only the modular
sum. :func:`simulate_round` returns the sum together with who was included, who dropped and the
per-stage costs.

How the secure channels reduce to one protocol run each (``docs/design.md``, "Channels and
backends"; this is what :class:`aggkit.secure.backend.MaskingBackend` does through
:func:`simulate_round`): once per channel call and round, with all leaves of the call
concatenated into one ``[K, m]`` integer matrix,

- ``secure_sum_bitwidth(values, b)``: ``run_secure_sum(values, modulus=2**(b + ceil(log2 K)))``.
  ``K * (2**b - 1) < 2**(b + ceil(log2 K))``, so the modular sum *is* the integer sum,
  bit-identical to the arithmetic path; ``b + ceil(log2 K)`` must stay <= 64.
- ``secure_modular_sum(values, m)``: ``run_secure_sum(values % m, modulus=m)`` for ``m >= 2``
  (the inputs wrap first); ``m = 1`` is all zeros without a round.

Without ``dropouts`` the result equals ``values.sum(axis=0) % modulus`` exactly (returned as
``uint64``; cast to the channel's dtype). ``seed`` makes a run reproducible; ``graph="secagg+"``
(the default) keeps a K=100, 431,080-value round at a few seconds, ``"secagg"`` takes several
times longer (see ``benchmarks/bench_secagg.py``).

Examples
--------
>>> import numpy as np
>>> x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
>>> run_secure_sum(x, modulus=2**8, seed=0)
array([22, 26, 30], dtype=uint64)
>>> out = simulate_round(x, modulus=2**8, dropouts={"masked_input": [3]}, seed=0)
>>> out.sum, out.included
(array([12, 15, 18], dtype=uint64), (0, 1, 2))
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from aggkit import _checks
from aggkit.secure.crypto import DeterministicRandom
from aggkit.secure.graph import complete_graph, harary_graph
from aggkit.secure.messages import STAGES, decode
from aggkit.secure.protocol import ClientPolicy, SecAggClient, SecAggServer, round_stages

__all__ = ["SimulationResult", "StageCost", "default_threshold", "run_secure_sum", "simulate_round"]


@dataclass
class StageCost:
    """What one stage cost, summed over its messages.

    Attributes
    ----------
    requests, responses : int
        Messages sent by the server and received back.
    bytes_to_clients, bytes_to_server : int
        Total wire bytes in each direction.
    max_request_bytes, max_response_bytes : int
        The largest single message in each direction.
    client_seconds : float
        CPU time of all clients (decode request, compute, encode response).
    max_client_seconds : float
        The slowest client.
    server_seconds : float
        Server time (encode requests, decode and check responses, close the stage).
    """

    requests: int = 0
    responses: int = 0
    bytes_to_clients: int = 0
    bytes_to_server: int = 0
    max_request_bytes: int = 0
    max_response_bytes: int = 0
    client_seconds: float = 0.0
    max_client_seconds: float = 0.0
    server_seconds: float = 0.0


@dataclass
class SimulationResult:
    """The outcome of :func:`simulate_round`.

    Attributes
    ----------
    sum : numpy.ndarray
        ``uint64[m]``, the sum of the included clients' inputs mod ``modulus``.
    included : tuple of int
        Rows of ``inputs`` whose values are in the sum.
    dropped : dict of str to tuple of int
        Clients that vanished at each stage.
    pruned : dict of str to tuple of int
        Clients the server left out after a stage (SecAgg+: too few neighbours left).
    threshold : int
        The threshold used.
    graph : dict of int to frozenset of int
        The masking graph used.
    costs : dict of str to StageCost
        Per-stage costs, in stage order (the stages of the mode: :func:`~aggkit.secure.protocol.
        round_stages`).
    """

    sum: np.ndarray
    included: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    pruned: dict[str, tuple[int, ...]]
    threshold: int
    graph: dict[int, frozenset[int]]
    costs: dict[str, StageCost] = field(default_factory=dict)


def default_threshold(holders: int) -> int:
    """A majority of the share holders: ``holders // 2 + 1``.

    Examples
    --------
    >>> [default_threshold(h) for h in (1, 2, 3, 15, 100)]
    [1, 2, 2, 8, 51]
    """
    return holders // 2 + 1


def simulate_round(
    inputs: np.ndarray,
    *,
    modulus: int,
    threshold: int | float | None = None,
    dropouts: Mapping[str, Collection[int] | float] | None = None,
    graph: str | Mapping[int, Collection[int]] = "secagg+",
    degree: int | None = None,
    seed: int | None = None,
    authenticated: bool = False,
    policy: ClientPolicy | None = None,
) -> SimulationResult:
    """Run one secure aggregation round over the rows of ``inputs``.

    Parameters
    ----------
    inputs : numpy.ndarray
        ``[K, m]`` integers in ``[0, modulus)``; row ``u`` is client ``u``'s input.
    modulus : int
        ``R``, ``2 <= R <= 2**64``. Use ``2**b`` for a ``b``-bit sum; any other value works too
        (masks are then drawn by rejection sampling).
    threshold : int or float, optional
        Shares needed to reconstruct a client's secrets. A float in ``(0, 1]`` is a fraction of the
        smallest closed neighbourhood (rounded up); default: a majority of it.
    dropouts : mapping, optional
        ``{stage: clients}``: the clients (rows) that vanish at each stage, never answering its
        request; or ``{stage: fraction}`` of the clients asked at that stage, drawn with ``seed``.
        Stages: ``"advertise_keys"``, ``"share_keys"``, ``"masked_input"``,
        ``"consistency_check"``, ``"unmask"``. A client listed at several stages vanishes at the
        first. The honest-but-curious mode has no consistency check: a client that vanishes
        there vanishes before answering the unmask request (the round's ``dropped`` lists it
        at ``"unmask"``).
    graph : {"secagg+", "secagg"} or mapping
        ``"secagg"``: complete graph. ``"secagg+"``: Harary graph with ``degree`` neighbours over a
        random permutation (complete when ``K`` is small). Or an explicit symmetric graph.
    degree : int, optional
        Neighbours per client for ``"secagg+"``; ``2 * ceil(log2 K)`` by default.
    seed : int, optional
        Makes the round reproducible (keys, seeds, graph, dropouts). Simulation only: without a
        seed all secrets come from ``os.urandom``.
    authenticated : bool
        Run the authenticated mode (every client gets an Ed25519 identity, drawn with ``seed``,
        and signs; the server and clients verify) instead of the honest-but-curious one.
    policy : ClientPolicy, optional
        The clients' policy; :meth:`ClientPolicy.permissive` by default, since one party plays
        every role here (a deployment's clients keep the strict default).

    Returns
    -------
    SimulationResult

    Raises
    ------
    ProtocolAbort
        Too few clients left at some stage to finish the round.
    """
    x = np.asarray(inputs)
    if x.ndim != 2:
        raise ValueError(f"inputs must be a [K, m] matrix, got shape {x.shape}")
    if x.dtype.kind not in "iu":
        raise TypeError(f"inputs must be integers, got {x.dtype}")
    num_clients, length = x.shape
    if num_clients == 0:
        raise ValueError("inputs must have at least one client (row)")
    if x.size and (x.min() < 0 or (modulus < 1 << 64 and x.max() >= modulus)):
        raise ValueError(f"inputs must be in [0, modulus) = [0, {modulus})")
    ids = list(range(num_clients))

    def randomness(*labels: object):
        return os.urandom if seed is None else DeterministicRandom(seed, *labels)

    if isinstance(graph, str):
        if graph == "secagg":
            masking_graph = complete_graph(ids)
        elif graph == "secagg+":
            masking_graph = harary_graph(ids, degree, randomness("graph"))
        else:
            raise ValueError(f"graph must be 'secagg', 'secagg+' or a mapping, got {graph!r}")
    else:
        masking_graph = graph
    holders = min(len(vs) for vs in masking_graph.values()) + 1 if masking_graph else 1
    t = _resolve_threshold(threshold, holders)
    plan = _checks.dropouts(dropouts, STAGES)
    rng = np.random.default_rng(None if seed is None else [seed, 0x5EC])

    costs = {stage: StageCost() for stage in round_stages(authenticated)}
    clock = time.perf_counter
    start = clock()
    modes = _modes(ids, authenticated, randomness)
    server = SecAggServer(
        ids,
        modulus=modulus,
        vector_length=length,
        threshold=t,
        graph=masking_graph,
        randbytes=randomness("server"),
        **modes.server,
    )
    policy = ClientPolicy.permissive() if policy is None else policy
    clients = {
        u: SecAggClient(u, randbytes=randomness("client", u), policy=policy, **modes.client(u))
        for u in ids
    }
    requests = server.start()
    costs[STAGES[0]].server_seconds += clock() - start
    result = None
    carried: frozenset[int] = frozenset()  # vanished at a stage this mode does not run
    for stage in STAGES:
        if stage not in costs:
            carried = _vanishing(plan.get(stage), requests, rng)
            continue
        cost = costs[stage]
        left = {u: r for u, r in requests.items() if u not in carried}
        vanish = carried | _vanishing(plan.get(stage), left, rng)
        carried = frozenset()
        for u, request in requests.items():
            begin = clock()
            data = request.to_bytes()
            cost.server_seconds += clock() - begin
            cost.requests += 1
            cost.bytes_to_clients += len(data)
            cost.max_request_bytes = max(cost.max_request_bytes, len(data))
            if u in vanish:
                continue
            begin = clock()
            response = clients[u].handle(decode(data), x[u] if stage == "masked_input" else None)
            reply = response.to_bytes()
            spent = clock() - begin
            cost.client_seconds += spent
            cost.max_client_seconds = max(cost.max_client_seconds, spent)
            cost.responses += 1
            cost.bytes_to_server += len(reply)
            cost.max_response_bytes = max(cost.max_response_bytes, len(reply))
            begin = clock()
            server.receive(decode(reply))
            cost.server_seconds += clock() - begin
        begin = clock()
        if stage != STAGES[-1]:
            requests = server.advance()
        else:
            result = server.finish()
        cost.server_seconds += clock() - begin
    assert result is not None
    return SimulationResult(
        sum=result.sum,
        included=result.included,
        dropped=result.dropped,
        pruned=result.pruned,
        threshold=t,
        graph=server.graph,
        costs=costs,
    )


def run_secure_sum(
    inputs: np.ndarray,
    *,
    modulus: int,
    threshold: int | float | None = None,
    dropouts: Mapping[str, Collection[int] | float] | None = None,
    graph: str | Mapping[int, Collection[int]] = "secagg+",
    degree: int | None = None,
    seed: int | None = None,
    authenticated: bool = False,
) -> np.ndarray:
    """The modular sum of the rows of ``inputs`` computed by the real protocol.

    Same parameters as :func:`simulate_round`. Without dropouts the result is bit-identical to
    ``inputs.sum(axis=0) % modulus`` (computed without overflow); with dropouts it is the sum over
    the clients that sent their masked input. ``modulus=1`` (every sum is 0, nothing to hide)
    returns zeros without running a round, so a backend can pass any modulus >= 1.

    Returns
    -------
    numpy.ndarray
        ``uint64[m]``.

    Examples
    --------
    >>> run_secure_sum(np.array([[20, 1], [5, 21]]), modulus=22, seed=1)
    array([3, 0], dtype=uint64)
    """
    if modulus == 1:
        x = np.asarray(inputs)
        if x.ndim != 2 or x.dtype.kind not in "iu" or (x.size and (x.min() < 0 or x.max() > 0)):
            raise ValueError("with modulus 1, inputs must be a [K, m] integer matrix of zeros")
        return np.zeros(x.shape[1], np.uint64)
    return simulate_round(
        inputs,
        modulus=modulus,
        threshold=threshold,
        dropouts=dropouts,
        graph=graph,
        degree=degree,
        seed=seed,
        authenticated=authenticated,
    ).sum


@dataclass
class _Modes:
    server: dict
    identities: dict

    def client(self, u: int) -> dict:
        if not self.identities:
            return {"honest_but_curious": True}
        return {"identity": self.identities[u], "registry": self.server["registry"]}


def _modes(ids: list[int], authenticated: bool, randomness) -> _Modes:
    """The keyword arguments that choose the protocol mode for the server and each client."""
    if not authenticated:
        return _Modes({"honest_but_curious": True}, {})
    from aggkit.secure.identity import IdentityRegistry, SigningIdentity

    identities = {u: SigningIdentity.generate(randomness("identity", u)) for u in ids}
    return _Modes({"registry": IdentityRegistry.of(identities)}, identities)


def _resolve_threshold(threshold: int | float | None, holders: int) -> int:
    threshold = _checks.sharing_threshold(threshold)
    if threshold is None:
        return default_threshold(holders)
    if isinstance(threshold, float):
        return max(1, math.ceil(threshold * holders - 1e-9))
    return threshold


def _vanishing(spec, requests, rng: np.random.Generator) -> frozenset[int]:
    if spec is None:
        return frozenset()
    if isinstance(spec, float):
        asked = sorted(requests)
        count = round(spec * len(asked))
        return frozenset(int(u) for u in rng.choice(asked, size=count, replace=False))
    return frozenset(spec) & frozenset(requests)
