"""Who masks with whom: the complete graph (SecAgg) or a sparse random graph (SecAgg+).

In SecAgg (Bonawitz et al. 2017) every pair of clients agrees on a pairwise mask and every client
Shamir-shares its secrets with all others: O(n) key agreements and O(n * t) share arithmetic per
client. SecAgg+ (Bell et al. 2020, https://eprint.iacr.org/2020/704) restricts both to the
neighbours of a sparse random graph with ``k = O(log n)`` neighbours per client.

aggkit's sparse graph is the Harary graph ``H(k, n)`` laid over a uniformly random permutation of
the clients: with the clients placed on a ring in shuffled order, each client is joined to the
``k / 2`` clients on either side (``k`` even), as in Flower's SecAgg+ workflow. Every client has
exactly ``k`` neighbours; a client's secrets are shared among its *closed* neighbourhood (itself
and its neighbours), ``k + 1`` holders. The default ``k = 2 * ceil(log2 n)`` keeps the degree
logarithmic in ``n``; Bell et al. give the ``k`` needed for given fractions of corrupted and
dropped clients and a failure probability, which may be larger: pass ``degree`` explicitly for a
deployment.

Graphs are plain ``dict[int, frozenset[int]]`` (open neighbourhoods: a client is not its own
neighbour), symmetric.

Examples
--------
>>> g = harary_graph(range(6), degree=2, randbytes=lambda n: bytes(range(n)))
>>> all(len(v) == 2 for v in g.values())
True
>>> complete_graph([0, 1, 2])[0]
frozenset({1, 2})
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np

__all__ = ["check_graph", "complete_graph", "default_degree", "harary_graph"]

Graph = dict[int, frozenset[int]]


def default_degree(num_clients: int) -> int:
    """``2 * ceil(log2 n)``, at most ``n - 1`` (then the graph is complete).

    Examples
    --------
    >>> [default_degree(n) for n in (2, 10, 100, 1000)]
    [1, 8, 14, 20]
    """
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    if num_clients == 1:
        return 0
    return min(2 * math.ceil(math.log2(num_clients)), num_clients - 1)


def complete_graph(ids: Iterable[int]) -> Graph:
    """Every client is every other client's neighbour (plain SecAgg)."""
    members = _check_ids(ids)
    everyone = frozenset(members)
    return {u: everyone - {u} for u in members}


def harary_graph(
    ids: Iterable[int],
    degree: int | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> Graph:
    """The Harary graph ``H(k, n)`` over a random permutation of ``ids`` (SecAgg+).

    Parameters
    ----------
    ids : iterable of int
        The clients.
    degree : int, optional
        ``k``, the number of neighbours of each client; :func:`default_degree` when omitted. An
        odd ``k`` is rounded up to the next even number; ``k >= n - 1`` gives the complete graph.
    randbytes : callable
        Source of randomness for the permutation (``os.urandom`` by default).

    Returns
    -------
    dict of int to frozenset of int
        The (open) neighbourhood of every client.
    """
    members = _check_ids(ids)
    n = len(members)
    if degree is None:
        degree = default_degree(n)
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
        raise ValueError(f"degree must be a non-negative int, got {degree!r}")
    degree += degree % 2
    if degree >= n - 1:
        return complete_graph(members)
    # A uniform permutation: sort by independent 128-bit random keys (ties, probability ~n^2 /
    # 2^129, are broken by id and only cost uniformity, not correctness).
    keys = randbytes(16 * n)
    order = [u for _, u in sorted((keys[16 * i : 16 * i + 16], u) for i, u in enumerate(members))]
    half = degree // 2
    graph: dict[int, set[int]] = {u: set() for u in members}
    for i, u in enumerate(order):
        for offset in range(1, half + 1):
            v = order[(i + offset) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: frozenset(vs) for u, vs in graph.items()}


def check_graph(graph: Mapping[int, Iterable[int]], ids: Iterable[int]) -> Graph:
    """Validate a caller's graph over ``ids``: symmetric, no self-loops, no unknown ids.

    Returns the graph as ``dict[int, frozenset[int]]``; raises ``ValueError`` otherwise.
    """
    members = set(_check_ids(ids))
    if set(graph) != members:
        raise ValueError("graph must have exactly one entry per client id")
    out = {int(u): frozenset(int(v) for v in vs) for u, vs in graph.items()}
    for u, vs in out.items():
        if u in vs:
            raise ValueError(f"graph: client {u} is listed as its own neighbour")
        unknown = vs - members
        if unknown:
            raise ValueError(f"graph: client {u} has unknown neighbours {sorted(unknown)[:5]}")
        for v in vs:
            if u not in out[v]:
                raise ValueError(f"graph is not symmetric: {v} in N({u}) but {u} not in N({v})")
    return out


def _check_ids(ids: Iterable[int]) -> list[int]:
    members = list(ids)
    if any(not isinstance(u, int | np.integer) or isinstance(u, bool) for u in members):
        raise TypeError("client ids must be ints")
    members = [int(u) for u in members]
    if any(u < 0 for u in members):
        raise ValueError("client ids must be non-negative")
    if len(set(members)) != len(members):
        raise ValueError("client ids must be distinct")
    return members
