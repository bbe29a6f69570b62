"""ak.tree_aggregation (DP-FTRL): exactness without noise, the tree's noise, accounting, seeds.

Statistical tests use fixed seeds and 2^20 coordinates per estimate: a standard deviation is
then estimated to 0.07% (one standard error), and the tolerance is 1%.
"""

from __future__ import annotations

import pickle

import dp_accounting as dpa
import numpy as np
import pytest

import aggkit as ak
from aggkit.dp import ExtractingDpEventFromInitialStateError, extract_dp_event
from aggkit.tree import tree_dp_event

N = 1 << 20
F32 = ak.TensorSpec((5,), np.float32)


def _rounds(factory, template, rounds):
    """Results and states of ``rounds`` rounds with one all-zero client: the noise alone."""
    process = factory.create(template)
    state = process.initialize()
    zero = [np.zeros(template.shape, template.dtype)]
    results, states = [], []
    for _ in range(rounds):
        out = process.next(state, zero)
        state = out.state
        results.append(np.asarray(out.result, np.float64))
        states.append(state)
    return results, states


def _weight(level: int, efficient: bool) -> float:
    return 1.0 / (2.0 - 0.5**level) if efficient else 1.0


# -- exactness without noise ---------------------------------------------------------------------


@pytest.mark.parametrize("efficient", [True, False])
@pytest.mark.parametrize("restart", [None, 2])
def test_zero_noise_returns_the_clipped_mean_of_every_round(efficient, restart):
    rng = np.random.default_rng(0)
    template = ak.TensorSpec((50,), np.float32)
    tree = ak.tree_aggregation(0.0, 8, clip=1.5, efficient=efficient, restart_rounds=restart)
    fixed = ak.gaussian_fixed(0.0, 8, clip=1.5)
    tree_process, fixed_process = tree.create(template), fixed.create(template)
    tree_state, fixed_state = tree_process.initialize(), fixed_process.initialize()
    for _ in range(5):
        clients = [rng.normal(0, 0.5, 50).astype(np.float32) for _ in range(6)]
        out = tree_process.next(tree_state, clients)
        tree_state = out.state
        reference = fixed_process.next(fixed_state, clients)
        # The same clipping and sum as gaussian_fixed: the same bits.
        np.testing.assert_array_equal(out.result, reference.result)
        x = np.array(clients, np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        clipped = x * np.minimum(1.0, 1.5 / norms)
        np.testing.assert_allclose(out.result, clipped.sum(0) / 8, rtol=1e-6, atol=1e-7)
        assert out.measurements == {"dp_query_metrics": {"tree_agg_dpftrl_clip": 1.5}, "dp": ()}


def test_a_client_with_nan_is_dropped():
    clients = [np.full(5, np.nan, np.float32), np.ones(5, np.float32)]
    out = ak.tree_aggregation(0.0, 2, clip=10.0).create(F32)
    result = out.next(out.initialize(), clients).result
    np.testing.assert_array_equal(result, np.full(5, 0.5, np.float32))


# -- the tree's noise ----------------------------------------------------------------------------


@pytest.mark.parametrize("efficient", [False, True])
def test_node_and_cumulative_noise_have_the_trees_standard_deviations(efficient):
    sigma = 1.3  # z * clip
    template = ak.TensorSpec((N,), np.float64)
    factory = ak.tree_aggregation(1.3, 1, clip=1.0, efficient=efficient, seed=7)
    results, states = _rounds(factory, template, 8)
    cumulative = np.zeros(N)
    for t, (result, state) in enumerate(zip(results, states, strict=True)):
        cumulative += result
        query = state["query_state"]
        levels = [int(v) for v in query["tree_levels"]]
        # The pending nodes are the set bits of t + 1, highest first.
        assert levels == [k for k in reversed(range(4)) if (t + 1) >> k & 1]
        for level, node in zip(levels, query["tree_nodes"], strict=True):
            # Honaker's unweighted node v = n + (v_l + v_r) / 2 has variance (2 - 2^-k) sigma^2.
            expected = sigma * (np.sqrt(2.0 - 0.5**level) if efficient else 1.0)
            assert np.std(node) == pytest.approx(expected, rel=0.01), (t, level)
        # The results add up to the tree's cumulative noise: the weighted pending nodes.
        tree_noise = sum(
            _weight(k, efficient) * node
            for k, node in zip(levels, query["tree_nodes"], strict=True)
        )
        np.testing.assert_allclose(cumulative, tree_noise, rtol=0, atol=1e-9)
        expected = sigma * np.sqrt(sum(_weight(k, efficient) for k in levels))
        assert np.std(cumulative) == pytest.approx(expected, rel=0.01), t
    # Round 3 (leaf 3) closes leaves 2 and 3 and the pair above: its own noise has 3 nodes.
    if not efficient:
        assert np.std(results[3]) == pytest.approx(sigma * np.sqrt(3.0), rel=0.01)


def test_efficient_tree_halves_the_variance_of_deep_cumulative_sums():
    template = ak.TensorSpec((1 << 18,), np.float64)
    plain, _ = _rounds(ak.tree_aggregation(1.0, 1, 1.0, efficient=False, seed=1), template, 16)
    fast, _ = _rounds(ak.tree_aggregation(1.0, 1, 1.0, efficient=True, seed=1), template, 16)
    # After 16 rounds one node of level 4 covers everything: 1 against 1 / (2 - 1/16).
    ratio = np.var(np.sum(fast, axis=0)) / np.var(np.sum(plain, axis=0))
    assert ratio == pytest.approx(1.0 / (2.0 - 1.0 / 16.0), rel=0.02)


@pytest.mark.parametrize("efficient", [False, True])
def test_restart_starts_a_new_tree(efficient):
    template = ak.TensorSpec((N,), np.float64)
    factory = ak.tree_aggregation(1.0, 1, 1.0, efficient=efficient, restart_rounds=3, seed=3)
    results, states = _rounds(factory, template, 5)
    # Round 3 starts a new tree: one fresh leaf, nothing subtracted.
    assert [int(v) for v in states[3]["query_state"]["tree_levels"]] == [0]
    np.testing.assert_array_equal(results[3], states[3]["query_state"]["tree_nodes"][0])
    assert np.std(results[3]) == pytest.approx(1.0, rel=0.01)
    assert abs(np.corrcoef(results[3][:10_000], np.sum(results[:3], 0)[:10_000])[0, 1]) < 0.05
    # Rounds 3 and 4 add up to the new tree's noise of two leaves: one level-1 node.
    level_1 = sum(results[3:5])
    assert np.std(level_1) == pytest.approx(_weight(1, efficient) ** 0.5, rel=0.01)


def test_seed_none_never_replays_a_rounds_new_noise():
    process = ak.tree_aggregation(1.0, 1, 1.0).create(ak.TensorSpec((1000,), np.float32))
    zero = [np.zeros(1000, np.float32)]
    state = process.next(process.initialize(), zero).state
    snapshot = pickle.dumps(state)
    first, second = process.next(state, zero), process.next(state, zero)
    assert pickle.dumps(state) == snapshot
    assert not np.any(first.result == second.result)
    assert process.initialize()["query_state"]["noise_key"] == 0


def test_a_seed_gives_the_same_bits_and_a_pure_next():
    template = ak.TensorSpec((1000,), np.float32)
    a, _ = _rounds(ak.tree_aggregation(1.0, 3, 1.0, seed=5), template, 6)
    b, states = _rounds(ak.tree_aggregation(1.0, 3, 1.0, seed=5), template, 6)
    c, _ = _rounds(ak.tree_aggregation(1.0, 3, 1.0, seed=6), template, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.any(a[0] == c[0])
    process = ak.tree_aggregation(1.0, 3, 1.0, seed=5).create(template)
    again = process.next(states[2], [np.zeros(1000, np.float32)])  # round 3 once more
    np.testing.assert_array_equal(again.result, a[3])


# -- accounting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rounds", "restart", "expected"),
    [
        (1, None, dpa.SingleEpochTreeAggregationDpEvent(0.8, 1)),
        (6, None, dpa.SingleEpochTreeAggregationDpEvent(0.8, 6)),
        (3, 3, dpa.SingleEpochTreeAggregationDpEvent(0.8, 3)),
        (
            4,
            3,
            dpa.ComposedDpEvent(
                [
                    dpa.SingleEpochTreeAggregationDpEvent(0.8, 3),
                    dpa.SingleEpochTreeAggregationDpEvent(0.8, 1),
                ]
            ),
        ),
        (
            6,
            3,
            dpa.SelfComposedDpEvent(dpa.SingleEpochTreeAggregationDpEvent(0.8, 3), 2),
        ),
    ],
)
def test_extracted_event_composes_the_trees_so_far(rounds, restart, expected):
    factory = ak.tree_aggregation(0.8, 2, 1.0, restart_rounds=restart, seed=0)
    _, states = _rounds(factory, F32, rounds)
    event = extract_dp_event(states[-1])
    assert event == expected
    assert event == tree_dp_event(0.8, rounds, restart)


def test_no_event_from_the_initial_state():
    process = ak.tree_aggregation(1.0, 2, 1.0).create(F32)
    with pytest.raises(ExtractingDpEventFromInitialStateError):
        extract_dp_event(process.initialize())


@pytest.mark.parametrize(
    ("z", "rounds", "restart"), [(1.0, 100, None), (0.7, 1000, 250), (2.5, 37, 10)]
)
def test_epsilon_equals_dp_accountings_for_the_same_event(z, rounds, restart):
    event = tree_dp_event(z, rounds, restart)
    accountant = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_SPECIAL)
    accountant.compose(event)
    expected = accountant.get_epsilon(1e-5)
    assert ak.privacy.epsilon(event, delta=1e-5) == expected
    assert ak.privacy.epsilon_of_event(event, 1e-5) == expected
    # The tree of T steps charges ceil(log2(T + 1)) Gaussians of multiplier z (dp-accounting).
    if restart is None:
        depth = int(np.ceil(np.log2(rounds + 1)))
        gaussian = dpa.rdp.RdpAccountant()
        gaussian.compose(dpa.GaussianDpEvent(z / np.sqrt(depth)))
        assert expected == pytest.approx(gaussian.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_of_an_event_takes_no_round_parameters():
    event = tree_dp_event(1.0, 10)
    with pytest.raises(TypeError, match="only delta and accountant"):
        ak.privacy.epsilon(event, delta=1e-5, rounds=10)
    with pytest.raises(TypeError, match="needs clients_per_round, rounds"):
        ak.privacy.epsilon(1.0, delta=1e-5)


def test_tree_events_do_not_mix_with_fixed_size_rounds():
    fixed = ak.privacy.round_event(1.0, clients_per_round=10, population=100, sampling="fixed_size")
    mixed = dpa.ComposedDpEvent([tree_dp_event(1.0, 5), fixed])
    with pytest.raises(ak.privacy.SamplingMismatchError):
        ak.privacy.epsilon(mixed, delta=1e-5)


# -- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"noise_multiplier": 0.01}, ValueError, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, ValueError, "noise_multiplier"),
        ({"clients_per_round": 0}, ValueError, "clients_per_round"),
        ({"clip": 0.0}, ValueError, "clip"),
        ({"restart_rounds": 0}, ValueError, "restart_rounds"),
        ({"restart_rounds": 2.5}, TypeError, "restart_rounds"),
        ({"efficient": 1}, TypeError, "efficient"),
        ({"seed": -1}, ValueError, "seed"),
        ({"record_sum": ak.mean()}, TypeError, "record_sum"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, error, name):
    args = {"noise_multiplier": 1.0, "clients_per_round": 10, "clip": 1.0, **kwargs}
    with pytest.raises(error, match=name):
        ak.tree_aggregation(**args)


def test_non_float_templates_and_weights_are_rejected():
    with pytest.raises(TypeError):
        ak.tree_aggregation(1.0, 2, 1.0).create(ak.TensorSpec((3,), np.int32))
    process = ak.tree_aggregation(1.0, 2, 1.0).create(F32)
    with pytest.raises(TypeError):
        process.next(process.initialize(), [np.ones(5, np.float32)], [1.0])


def test_secure_record_sum_runs_through_the_secure_channel():
    from aggkit.testing import assert_only_secure

    factory = ak.tree_aggregation(1.0, 2, 1.0, record_sum=ak.secure_sum(1.0), seed=0)
    process = factory.create(F32)
    clients = [np.full(5, 0.1, np.float32), np.full(5, 0.2, np.float32)]
    out = assert_only_secure(process, process.initialize(), clients)
    exact = ak.tree_aggregation(1.0, 2, 1.0, seed=0).create(F32)
    reference = exact.next(exact.initialize(), clients)
    # Same noise (same seed): the secure sum differs only by its 32-bit discretization.
    np.testing.assert_allclose(out.result, reference.result, atol=1e-6)
