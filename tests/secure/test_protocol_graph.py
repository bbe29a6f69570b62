"""The masking graphs: complete (SecAgg) and Harary over a random permutation (SecAgg+)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("cryptography")

from aggkit.secure.crypto import DeterministicRandom
from aggkit.secure.graph import check_graph, complete_graph, default_degree, harary_graph


def connected(graph) -> bool:
    if not graph:
        return True
    start = next(iter(graph))
    seen, todo = {start}, [start]
    while todo:
        for v in graph[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(graph)


@given(st.integers(1, 80), st.integers(0, 90), st.integers(0, 1000))
def test_harary_graph_is_regular_symmetric_and_connected(n, degree, seed):
    graph = harary_graph(range(n), degree, DeterministicRandom(seed))
    check_graph(graph, range(n))
    k = min(degree + degree % 2, n - 1)
    assert {len(vs) for vs in graph.values()} == {k}
    if k >= 2 or n <= 2:
        assert connected(graph) or k == 0


def test_default_degree_and_complete_fallback():
    assert [default_degree(n) for n in (1, 2, 3, 16, 17, 100, 1000)] == [0, 1, 2, 8, 10, 14, 20]
    assert harary_graph(range(5), 4) == complete_graph(range(5))
    assert harary_graph(range(5), 10) == complete_graph(range(5))


def test_permutation_depends_on_the_randomness():
    graphs = {
        frozenset(harary_graph(range(30), 4, DeterministicRandom(s)).items()) for s in range(5)
    }
    assert len(graphs) == 5
    assert harary_graph(range(30), 4, DeterministicRandom(1)) == harary_graph(
        range(30), 4, DeterministicRandom(1)
    )


def test_check_graph_rejects_bad_graphs():
    with pytest.raises(ValueError, match="own neighbour"):
        check_graph({0: {0}}, [0])
    with pytest.raises(ValueError, match="unknown"):
        check_graph({0: {5}}, [0])
    with pytest.raises(ValueError, match="one entry"):
        check_graph({0: set()}, [0, 1])
    with pytest.raises(ValueError):
        harary_graph([0, 1], -1)
    with pytest.raises(ValueError, match="distinct"):
        complete_graph([1, 1])
