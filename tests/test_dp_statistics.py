"""Gaussian DP: the noise's distribution, the denominator, accounting against dp-accounting, and
bits independent of the thread count. Fixed seeds; tolerances are stated with their reasons."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aggkit as ak
from aggkit import privacy
from aggkit.dp import adaptive_clip_noise_params, extract_dp_event

dpa = pytest.importorskip("dp_accounting")

N = 1_000_000  # coordinates: the sample std's relative standard error is 1/sqrt(2N) = 0.07%


def _one_round(factory, data, size=N):
    process = factory.create(ak.TensorSpec((size,), np.float64))
    return process.next(process.initialize(), data)


def _check_gaussian(sample, sigma):
    """std within 3% of sigma (about 42 standard errors: a wrong scale, not bad luck, fails it);
    mean within 4 standard errors of 0."""
    assert np.std(sample) == pytest.approx(sigma, rel=0.03)
    assert abs(np.mean(sample)) < 4 * sigma / np.sqrt(sample.size)


def test_fixed_noise_is_z_times_clip_before_the_division():
    z, clip, clients = 1.7, 0.5, 10
    data = [np.zeros(N)] * clients
    out = _one_round(ak.gaussian_fixed(z, clients, clip, seed=101), data)
    _check_gaussian(out.result * clients, z * clip)


def test_adaptive_noise_is_value_multiplier_times_this_rounds_clip():
    # z = 5, n = 100: sigma_b = 5, z_v = (1/25 - 1/100) ** -0.5 = 5.77, 15% above z, so a test
    # at 3% tells z_v * C from z * C. The clip changes after the round; the noise uses C0.
    z, clients, clip = 5.0, 100, 0.3
    z_v, _ = adaptive_clip_noise_params(z, clients)
    assert z_v / z > 1.1
    data = [np.zeros(N)] * clients
    out = _one_round(ak.gaussian_adaptive(z, clients, clip, seed=202), data)
    assert out.measurements["dp_query_metrics"]["clip"] != clip
    _check_gaussian(out.result * clients, z_v * clip)


def test_noise_is_fresh_each_round():
    process = ak.gaussian_fixed(1.0, 1, 1.0, seed=5).create(ak.TensorSpec((N // 10,), np.float64))
    state = process.initialize()
    first = process.next(state, [np.zeros(N // 10)])
    second = process.next(first.state, [np.zeros(N // 10)])
    # Independent rounds: correlation within 4 standard errors (1/sqrt(n)) of 0.
    corr = np.corrcoef(first.result, second.result)[0, 1]
    assert abs(corr) < 4 / np.sqrt(N // 10)


def test_result_is_divided_by_the_expected_not_the_actual_count():
    # 20 clients of value x (norm 1 <= clip) with 50 expected: the mean is 20 x / 50, not x.
    z, clip, expected, present = 1.0, 1.0, 50, 20
    x = np.full(N, 1.0 / np.sqrt(N))
    out = _one_round(ak.gaussian_fixed(z, expected, clip, seed=303), [x] * present)
    standard_error = z * clip / expected / np.sqrt(N)
    assert abs(np.mean(out.result) - present * x[0] / expected) < 4 * standard_error
    # Dividing by the 20 present would give x: 0.6 x = 30 standard errors away.
    assert abs(np.mean(out.result) - x[0]) > 20 * standard_error


# -- accounting ----------------------------------------------------------------------------------


def test_running_epsilon_equals_dp_accounting():
    z, clients, population, delta = 1.1, 50, 5000, 1e-6
    factory = ak.gaussian_fixed(z, clients, 1.0, population=population, delta=delta, seed=0)
    process = factory.create(ak.TensorSpec((3,), np.float32))
    state = process.initialize()
    by_hand = dpa.rdp.RdpAccountant()
    from_states = dpa.rdp.RdpAccountant()
    for t in range(1, 5):
        out = process.next(state, [np.ones(3, np.float32)])
        state = out.state
        by_hand.compose(dpa.PoissonSampledDpEvent(clients / population, dpa.GaussianDpEvent(z)))
        from_states.compose(
            privacy.sampled_event(
                extract_dp_event(state), clients_per_round=clients, population=population
            )
        )
        measured = out.measurements["privacy"]
        assert measured["rounds"] == t and measured["delta"] == delta
        assert measured["epsilon"] == pytest.approx(by_hand.get_epsilon(delta), rel=1e-12)
        assert measured["epsilon"] == pytest.approx(from_states.get_epsilon(delta), rel=1e-12)


def test_adaptive_round_costs_one_gaussian_of_the_overall_multiplier():
    # The reported epsilon uses z; dp-accounting on the round's composed event (value Gaussian
    # z_v, count Gaussian 2 sigma_b) gives the same (RDP adds: a/(2 z_v^2) + a/(2 (2 sb)^2)).
    z, clients, delta = 0.8, 40, 1e-5
    factory = ak.gaussian_adaptive(z, clients, population=clients, delta=delta, seed=1)
    process = factory.create(ak.TensorSpec((3,), np.float32))
    state = process.initialize()
    accountant = dpa.rdp.RdpAccountant()
    for _ in range(3):
        out = process.next(state, [np.ones(3, np.float32)] * 40)
        state = out.state
        accountant.compose(extract_dp_event(state))
        assert out.measurements["privacy"]["epsilon"] == pytest.approx(
            accountant.get_epsilon(delta), rel=1e-9
        )


# -- thread count ----------------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import aggkit as ak

    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    template = {"w": ak.TensorSpec((400, 300), np.float32), "b": ak.TensorSpec((7,), np.float32)}
    clients = [{"w": rng.normal(0, 0.01, (400, 300)).astype(np.float32),
                "b": rng.normal(0, 0.01, 7).astype(np.float32)} for _ in range(6)]
    clients[2]["w"][0, 0] = np.nan
    for factory in (
        ak.gaussian_fixed(0.7, 6, 0.5, seed=1),
        ak.dp_aggregator(0.5, 6, seed=2),
        ak.tree_aggregation(0.7, 6, 0.5, seed=3),
    ):
        process = factory.create(template)
        state = process.initialize()
        for _ in range(4):  # the tree closes nodes at rounds 1 and 3
            out = process.next(state, clients)
            state = out.state
            digest.update(out.result["w"].tobytes() + out.result["b"].tobytes())
            digest.update(repr(out.measurements).encode())
    print(digest.hexdigest())
    """
)


def _run(threads: int) -> str:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_seeded_rounds_do_not_depend_on_thread_count():
    one, two = _run(1), _run(2)
    assert len(one) == 64
    assert one == two
