"""Privacy accounting: aggkit's events and epsilons against dp-accounting; a published figure."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aggkit import privacy

dpa = pytest.importorskip("dp_accounting")


def _rdp(event):
    return dpa.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)


# --------------------------------------------------------------------------------------------
# Events and epsilons equal dp-accounting's own computation
# --------------------------------------------------------------------------------------------


def test_events_are_the_dp_accounting_events():
    assert privacy.gaussian_event(1.5) == dpa.GaussianDpEvent(1.5)
    sampled = privacy.round_event(0.8, clients_per_round=20, population=1000)
    assert sampled == dpa.PoissonSampledDpEvent(0.02, dpa.GaussianDpEvent(0.8))
    # No population, or a population of exactly clients_per_round: no sampling is claimed.
    assert privacy.round_event(0.8, clients_per_round=20) == dpa.GaussianDpEvent(0.8)
    assert privacy.round_event(0.8, clients_per_round=20, population=20) == dpa.GaussianDpEvent(0.8)
    inner = dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0), dpa.GaussianDpEvent(10.0)])
    assert privacy.sampled_event(
        inner, clients_per_round=5, population=50
    ) == dpa.PoissonSampledDpEvent(0.1, inner)


@pytest.mark.parametrize(
    ("accountant", "z", "clients", "population", "rounds", "delta"),
    [
        ("rdp", 1.1, 100, 10_000, 300, 1e-6),
        ("rdp", 0.7, 50, 2_000, 40, 1e-5),
        ("rdp", 2.0, 30, None, 25, 1e-5),
        ("rdp", 1.0, 10, 10, 1, 1e-3),
        # PLD is slow for many rounds or low noise: small cases keep the suite fast.
        ("pld", 2.0, 10, 100, 5, 1e-5),
        ("pld", 3.0, 30, None, 3, 1e-5),
        ("pld", 3.0, 10, 10, 1, 1e-3),
    ],
)
def test_epsilon_equals_dp_accounting(accountant, z, clients, population, rounds, delta):
    gaussian = dpa.GaussianDpEvent(z)
    one = (
        gaussian
        if population in (None, clients)
        else dpa.PoissonSampledDpEvent(clients / population, gaussian)
    )
    if accountant == "rdp":
        fresh = dpa.rdp.RdpAccountant()
    else:
        fresh = dpa.pld.PLDAccountant()
    expected = fresh.compose(dpa.SelfComposedDpEvent(one, rounds)).get_epsilon(delta)
    ours = privacy.epsilon(
        z,
        clients_per_round=clients,
        population=population,
        rounds=rounds,
        delta=delta,
        accountant=accountant,
    )
    assert ours == expected  # the same computation, so the same bits
    assert 0 < ours < math.inf


@pytest.mark.parametrize(
    ("z", "clients", "population", "rounds", "delta"),
    [
        (1.0, 100, 1000, 5, 1e-5),  # the dp main job's default
        (1.1, 100, 10_000, 300, 1e-6),
        (0.7, 50, 2_000, 40, 1e-5),
        (2.0, 3, 30, 25, 1e-3),
    ],
)
def test_fixed_size_epsilon_equals_dp_accounting_under_replace_one(
    z, clients, population, rounds, delta
):
    # The run: exactly `clients` of `population` without replacement, noise z * clip on a sum of
    # updates clipped to clip. Replacing one client moves that sum by up to 2 * clip, so with
    # respect to replace-one neighbours (the relation the without-replacement bound requires)
    # each round is a Gaussian of multiplier z / 2.
    one = dpa.SampledWithoutReplacementDpEvent(population, clients, dpa.GaussianDpEvent(z / 2))
    assert (
        privacy.round_event(
            z, clients_per_round=clients, population=population, sampling="fixed_size"
        )
        == one
    )
    accountant = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    expected = accountant.compose(dpa.SelfComposedDpEvent(one, rounds)).get_epsilon(delta)
    kwargs = dict(clients_per_round=clients, population=population, rounds=rounds, delta=delta)
    ours = privacy.epsilon(z, sampling="fixed_size", **kwargs)
    assert ours == expected
    assert 0 < ours < math.inf
    event = dpa.SelfComposedDpEvent(
        privacy.round_event(
            z, clients_per_round=clients, population=population, sampling="fixed_size"
        ),
        rounds,
    )
    assert privacy.epsilon_of_event(event, delta) == expected
    # Not the Poisson number: the two schemes are different guarantees.
    assert ours != privacy.epsilon(z, **kwargs)


def test_noise_multiplier_for_fixed_size_sampling_round_trips():
    kwargs = dict(clients_per_round=100, population=1000, rounds=5, sampling="fixed_size")
    z = privacy.noise_multiplier(8.0, delta=1e-5, **kwargs)
    assert privacy.epsilon(z, delta=1e-5, **kwargs) <= 8.0
    assert privacy.epsilon(z * (1 - 1e-4), delta=1e-5, **kwargs) > 8.0
    # More noise than Poisson sampling needs for the same target (a looser bound, another relation).
    assert z > privacy.noise_multiplier(
        8.0, delta=1e-5, clients_per_round=100, population=1000, rounds=5
    )


def test_mismatched_sampling_raises():
    poisson = privacy.round_event(1.0, clients_per_round=10, population=100)
    fixed = privacy.round_event(1.0, clients_per_round=10, population=100, sampling="fixed_size")
    with pytest.raises(privacy.SamplingMismatchError, match="mixes fixed_size"):
        privacy.epsilon_of_event(dpa.ComposedDpEvent([poisson, fixed]), 1e-5)
    # A Gaussian stated for add-or-remove-one beside fixed-size rounds: no single relation.
    with pytest.raises(privacy.SamplingMismatchError, match="unsampled"):
        privacy.epsilon_of_event(dpa.ComposedDpEvent([privacy.gaussian_event(1.0), fixed]), 1e-5)
    with pytest.raises(privacy.SamplingMismatchError, match="'poisson' sampling"):
        privacy.check_sampling("poisson", "fixed_size")
    privacy.check_sampling("fixed_size", "fixed_size")
    with pytest.raises(ValueError, match="sampling"):
        privacy.check_sampling("uniform", "poisson")
    with pytest.raises(ValueError, match="sampling"):
        privacy.epsilon(1.0, sampling="uniform", **GOOD)
    with pytest.raises(TypeError, match="whole number"):
        privacy.epsilon(1.0, sampling="fixed_size", **{**GOOD, "clients_per_round": 2.5})
    with pytest.raises(ValueError, match="does not support"):  # PLD has no fixed-size bound
        privacy.epsilon(1.0, sampling="fixed_size", accountant="pld", **GOOD)


def test_running_epsilon_prints_nothing():
    # 100 of 1,000 clients at z = 1: dp-accounting cannot evaluate its smallest fractional RDP
    # orders and logs an absl warning for each. aggkit's calls stay silent; the direct call in
    # the same process shows that those warnings really are raised here.
    code = textwrap.dedent(
        """
        import sys
        from aggkit import privacy
        kwargs = dict(clients_per_round=100, population=1000, delta=1e-5)
        for t in range(1, 6):
            privacy.epsilon(1.0, rounds=t, **kwargs)
        privacy.epsilon(0.9, rounds=5, sampling="fixed_size", **kwargs)
        privacy.noise_multiplier(8.0, rounds=5, **kwargs)
        sys.stderr.write("MARK\\n")
        sys.stderr.flush()
        import dp_accounting as dpa
        dpa.rdp.RdpAccountant().compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    before, after = done.stderr.split("MARK\n")
    assert before == ""
    assert "_compute_log_a_frac failed to converge" in after


def test_composed_event_collapses_runs_and_matches_epsilon():
    a = privacy.round_event(1.0, clients_per_round=10, population=1000)
    b = privacy.round_event(2.0, clients_per_round=10, population=1000)
    noop = dpa.NoOpDpEvent()
    composed = privacy.composed_event([a, a, noop, a, b, b])
    assert composed == dpa.ComposedDpEvent(
        [dpa.SelfComposedDpEvent(a, 3), dpa.SelfComposedDpEvent(b, 2)]
    )
    assert privacy.composed_event([]) == noop
    assert privacy.composed_event([a]) == a
    # Collapsing changes nothing in the guarantee: same as composing round by round.
    by_round = dpa.rdp.RdpAccountant()
    for event in [a, a, a, b, b]:
        by_round.compose(event)
    assert privacy.epsilon_of_event(composed, 1e-5) == pytest.approx(
        by_round.get_epsilon(1e-5), rel=1e-12
    )
    # T equal rounds composed one by one give epsilon(..., rounds=T).
    many = privacy.composed_event([a] * 50)
    assert privacy.epsilon_of_event(many, 1e-5) == privacy.epsilon(
        1.0, clients_per_round=10, population=1000, rounds=50, delta=1e-5
    )


def test_zero_rounds_and_zero_noise():
    kwargs = dict(clients_per_round=10, population=100, delta=1e-5)
    assert privacy.epsilon(1.0, rounds=0, **kwargs) == 0.0
    assert privacy.epsilon(0.0, rounds=1, **kwargs) == math.inf
    assert privacy.epsilon(0.0, rounds=1, accountant="pld", **kwargs) == math.inf
    assert privacy.noise_multiplier(1.0, rounds=0, **kwargs) == 0.0
    # Zero noise inside sampling and composition (a DP layer run with z = 0): no privacy, not a
    # ZeroDivisionError from dp-accounting's effective-multiplier sum.
    zero = dpa.ComposedDpEvent([dpa.GaussianDpEvent(0.0), dpa.GaussianDpEvent(0.0)])
    for sampling in privacy.SAMPLINGS:
        event = privacy.sampled_event(zero, clients_per_round=10, population=100, sampling=sampling)
        assert privacy.epsilon_of_event(dpa.SelfComposedDpEvent(event, 3), 1e-5) == math.inf


# --------------------------------------------------------------------------------------------
# A published figure
# --------------------------------------------------------------------------------------------

# TensorFlow Privacy's MNIST DP-SGD tutorial (tensorflow/privacy, tutorials/README.md, "Select
# Parameters" table and "Expected Output"; tutorials/mnist_dpsgd_tutorial.py): batch 256 of
# 60,000 examples, 60000 // 256 = 234 steps per epoch, delta = 1e-5, RDP orders
# [1 + x / 10 for x in range(1, 100)] + range(12, 64), and the classic RDP conversion
# eps = min over orders of rdp - log(delta) / (order - 1). Published: noise 1.12 -> eps 1.00
# after 1 epoch, 1.04 after 2, 2.92 after 60; noise 1.2 for 10 epochs -> eps 1.20.
TUTORIAL_ORDERS = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@pytest.mark.parametrize(
    ("z", "epochs", "published"),
    [(1.12, 1, 1.00), (1.12, 2, 1.04), (1.12, 60, 2.92), (1.2, 10, 1.20)],
)
def test_tf_privacy_mnist_tutorial_figures(z, epochs, published):
    rounds = epochs * (60_000 // 256)
    event = dpa.SelfComposedDpEvent(
        privacy.round_event(z, clients_per_round=256, population=60_000), rounds
    )
    accountant = dpa.rdp.RdpAccountant(orders=TUTORIAL_ORDERS).compose(event)
    classic = np.min(accountant.rdp - np.log(1e-5) / (TUTORIAL_ORDERS - 1))
    assert round(float(classic), 2) == published
    # aggkit reports dp-accounting's improved conversion: a smaller (still valid) epsilon.
    ours = privacy.epsilon(z, clients_per_round=256, population=60_000, rounds=rounds, delta=1e-5)
    assert 0.5 * published < ours < published


# --------------------------------------------------------------------------------------------
# Noise multiplier for a target epsilon
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accountant", "target", "clients", "population", "rounds", "delta"),
    [
        ("rdp", 2.0, 100, 10_000, 500, 1e-6),
        ("rdp", 8.0, 256, 60_000, 14_040, 1e-5),
        ("rdp", 0.5, 20, None, 10, 1e-5),
        ("pld", 2.3, 20, None, 3, 1e-5),
    ],
)
def test_noise_multiplier_round_trips(accountant, target, clients, population, rounds, delta):
    kwargs = dict(
        clients_per_round=clients, population=population, rounds=rounds, accountant=accountant
    )
    z = privacy.noise_multiplier(target, delta=delta, **kwargs)
    eps = privacy.epsilon(z, delta=delta, **kwargs)
    assert eps <= target
    assert eps == pytest.approx(target, rel=1e-3)
    # Smallest: a little less noise misses the target.
    assert privacy.epsilon(z * (1 - 1e-4), delta=delta, **kwargs) > target


def test_noise_multiplier_for_a_huge_target_is_small_but_valid():
    z = privacy.noise_multiplier(1e4, delta=1e-5, clients_per_round=10, population=None, rounds=1)
    eps = privacy.epsilon(z, clients_per_round=10, population=None, rounds=1, delta=1e-5)
    assert 0 < z < 0.05 and eps <= 1e4


def test_unreachable_target_raises():
    with pytest.raises(ValueError, match="unreachable"):
        privacy.noise_multiplier(
            1e-4, delta=1e-12, clients_per_round=10, population=None, rounds=10
        )


# --------------------------------------------------------------------------------------------
# Monotonicity
# --------------------------------------------------------------------------------------------


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_population():
    def eps(z=1.0, rounds=100, population=10_000):
        return privacy.epsilon(
            z, clients_per_round=100, population=population, rounds=rounds, delta=1e-5
        )

    by_rounds = [eps(rounds=r) for r in (1, 10, 100, 1000)]
    assert all(a < b for a, b in itertools.pairwise(by_rounds))
    by_noise = [eps(z=z) for z in (0.5, 0.8, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in itertools.pairwise(by_noise))
    by_population = [eps(population=p) for p in (100, 1000, 10_000, 100_000)]
    assert all(a > b for a, b in itertools.pairwise(by_population))
    # PLD is tighter than RDP's conversion.
    pld = privacy.epsilon(
        2.0, clients_per_round=100, population=1000, rounds=5, delta=1e-5, accountant="pld"
    )
    assert pld < eps(z=2.0, rounds=5, population=1000)


# --------------------------------------------------------------------------------------------
# Arguments and the optional dependency
# --------------------------------------------------------------------------------------------

GOOD = dict(clients_per_round=10, population=100, rounds=5, delta=1e-5)


@pytest.mark.parametrize(
    ("changes", "error", "name"),
    [
        (dict(z=-1.0), ValueError, "noise_multiplier"),
        (dict(z=math.inf), ValueError, "noise_multiplier"),
        (dict(z=math.nan), ValueError, "noise_multiplier"),
        (dict(z="1"), TypeError, "noise_multiplier"),
        (dict(clients_per_round=0), ValueError, "clients_per_round"),
        (dict(clients_per_round=-3), ValueError, "clients_per_round"),
        (dict(population=5), ValueError, "population"),
        (dict(population=0), ValueError, "population"),
        (dict(rounds=-1), ValueError, "rounds"),
        (dict(rounds=2.5), TypeError, "rounds"),
        (dict(rounds=True), TypeError, "rounds"),
        (dict(delta=0.0), ValueError, "delta"),
        (dict(delta=1.0), ValueError, "delta"),
        (dict(accountant="moments"), ValueError, "accountant"),
    ],
)
def test_epsilon_rejects(changes, error, name):
    kwargs = dict(GOOD)
    z = kwargs.pop("z", 1.0)
    kwargs.update(changes)
    z = kwargs.pop("z", z)
    with pytest.raises(error, match=name):
        privacy.epsilon(z, **kwargs)


@pytest.mark.parametrize(
    ("target", "changes", "error", "name"),
    [
        (0.0, {}, ValueError, "epsilon"),
        (-1.0, {}, ValueError, "epsilon"),
        (math.inf, {}, ValueError, "epsilon"),
        (None, {}, TypeError, "epsilon"),
        (1.0, dict(delta=2.0), ValueError, "delta"),
        (1.0, dict(population=1), ValueError, "population"),
        (1.0, dict(accountant="x"), ValueError, "accountant"),
    ],
)
def test_noise_multiplier_rejects(target, changes, error, name):
    with pytest.raises(error, match=name):
        privacy.noise_multiplier(target, **{**GOOD, **changes})


def test_event_helpers_reject():
    with pytest.raises(ValueError, match="noise_multiplier"):
        privacy.gaussian_event(-0.1)
    with pytest.raises(TypeError, match="event"):
        privacy.sampled_event(1.0, clients_per_round=1, population=10)
    with pytest.raises(TypeError, match="events"):
        privacy.composed_event([privacy.gaussian_event(1.0), "x"])
    with pytest.raises(TypeError, match="event"):
        privacy.epsilon_of_event("x", 1e-5)
    with pytest.raises(ValueError, match="delta"):
        privacy.epsilon_of_event(privacy.gaussian_event(1.0), 0.0)


def test_import_is_cheap_and_missing_dependency_is_explained():
    code = (
        "import sys, aggkit.privacy\n"
        "assert 'dp_accounting' not in sys.modules\n"
        "sys.modules['dp_accounting'] = None\n"
        "try:\n"
        "    aggkit.privacy.gaussian_event(1.0)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install aggkit[dp]" in done.stdout
