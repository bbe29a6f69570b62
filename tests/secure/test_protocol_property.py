"""Property: the protocol's sum is the plain modular sum for any inputs, sizes and dropouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

pytest.importorskip("cryptography")

from aggkit.secure.errors import ProtocolAbort
from aggkit.secure.graph import harary_graph
from aggkit.secure.messages import STAGES
from aggkit.secure.simulation import simulate_round
from tests.secure.protocol_helpers import modular_sum

MODULI = st.one_of(
    st.integers(1, 64).map(lambda b: 1 << b),
    st.integers(2, 2**64),
)


@st.composite
def rounds(draw):
    k = draw(st.integers(1, 7))
    m = draw(st.integers(0, 12))
    modulus = draw(MODULI)
    seed = draw(st.integers(0, 2**32))
    rng = np.random.default_rng(seed)
    top = min(modulus, 2**63)
    x = rng.integers(0, top, size=(k, m), dtype=np.uint64)
    if k and m and draw(st.booleans()):
        x[draw(st.integers(0, k - 1)), draw(st.integers(0, m - 1))] = modulus - 1
    # Each client vanishes at most once, at a random stage (or never).
    fate = draw(st.lists(st.sampled_from([None] * 6 + list(STAGES)), min_size=k, max_size=k))
    drop = {s: [u for u in range(k) if fate[u] == s] for s in STAGES}
    return x, modulus, drop, seed


@settings(max_examples=40)
@given(rounds(), st.data())
def test_secagg_sum_equals_plain_modular_sum(case, data):
    x, modulus, drop, seed = case
    k = x.shape[0]
    t = data.draw(st.integers(1, k))
    # With the complete graph the round completes iff each stage keeps >= t clients (Bonawitz).
    alive = set(range(k))
    completes = True
    for stage in STAGES:
        alive -= set(drop[stage])
        completes &= len(alive) >= t
    try:
        out = simulate_round(
            x, modulus=modulus, threshold=t, dropouts=drop, graph="secagg", seed=seed
        )
    except ProtocolAbort:
        event("aborted")
        assert not completes
        return
    event("completed")
    assert completes
    included = sorted(set(range(k)) - set().union(*(drop[s] for s in STAGES[:3])))
    assert list(out.included) == included
    np.testing.assert_array_equal(out.sum, modular_sum(x, included, modulus))


@settings(max_examples=40)
@given(rounds(), st.data())
def test_secagg_plus_sum_equals_plain_modular_sum(case, data):
    x, modulus, drop, seed = case
    k = x.shape[0]
    degree = data.draw(st.integers(0, max(k - 1, 0)))
    graph = harary_graph(range(k), degree, np.random.default_rng(seed).bytes)
    smallest = min(len(v) for v in graph.values()) + 1
    t = data.draw(st.integers(1, smallest))
    no_dropouts = not any(drop.values())
    try:
        out = simulate_round(x, modulus=modulus, threshold=t, dropouts=drop, graph=graph, seed=seed)
    except ProtocolAbort:
        event("aborted")
        assert not no_dropouts  # without dropouts a round always completes
        return
    event("completed")
    gone = set().union(*(drop[s] for s in STAGES[:3]), *out.pruned.values())
    assert set(out.included) == set(range(k)) - gone
    np.testing.assert_array_equal(out.sum, modular_sum(x, out.included, modulus))


@settings(max_examples=30, deadline=None)
@given(rounds(), st.data())
def test_authenticated_sum_equals_plain_modular_sum(case, data):
    # The authenticated mode (identities, signatures, consistency check) under random dropouts
    # at every stage, complete or sparse graph: the sum is exact or the round aborts.
    x, modulus, drop, seed = case
    k = x.shape[0]
    if data.draw(st.booleans()):
        graph = "secagg"
    else:
        degree = data.draw(st.integers(0, max(k - 1, 0)))
        graph = harary_graph(range(k), degree, np.random.default_rng(seed).bytes)
    smallest = k if graph == "secagg" else min(len(v) for v in graph.values()) + 1
    t = data.draw(st.integers(1, smallest))
    try:
        out = simulate_round(
            x,
            modulus=modulus,
            threshold=t,
            dropouts=drop,
            graph=graph,
            seed=seed,
            authenticated=True,
        )
    except ProtocolAbort:
        event("aborted")
        assert any(drop.values())  # without dropouts a round always completes
        return
    event("completed")
    gone = set().union(*(drop[s] for s in STAGES[:3]), *out.pruned.values())
    assert set(out.included) == set(range(k)) - gone
    np.testing.assert_array_equal(out.sum, modular_sum(x, out.included, modulus))
