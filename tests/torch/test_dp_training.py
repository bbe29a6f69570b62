"""Private training as a user meets it: client sampling, the run's epsilon, the dp main job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import aggkit as ak
from aggkit import privacy
from aggkit_torch import mnist as mnist_cli
from aggkit_torch.accounting import RunAccountant
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer, sample_clients
from aggkit_torch.models import MnistCNN
from aggkit_torch.params import parameters_to_vector

pytest.importorskip("dp_accounting")

# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _binomial_chi2_pvalue(sizes: np.ndarray, n: int, q: float) -> float:
    """Chi-square goodness of fit of ``sizes`` to Binomial(n, q), bins with >= 5 expected."""
    support = np.arange(n + 1)
    expected = stats.binom.pmf(support, n, q) * len(sizes)
    observed = np.bincount(sizes, minlength=n + 1).astype(float)
    # Merge the thin tails into their neighbours so every bin expects at least 5.
    lo = int(np.argmax(np.cumsum(expected) >= 5))
    hi = n - int(np.argmax(np.cumsum(expected[::-1]) >= 5))
    exp = np.concatenate([[expected[: lo + 1].sum()], expected[lo + 1 : hi], [expected[hi:].sum()]])
    obs = np.concatenate([[observed[: lo + 1].sum()], observed[lo + 1 : hi], [observed[hi:].sum()]])
    return float(stats.chisquare(obs, exp).pvalue)


def test_poisson_round_sizes_follow_the_binomial():
    n, count, rounds = 500, 50, 3000
    q = count / n
    draws = [sample_clients(7, r, n, count, "poisson") for r in range(rounds)]
    sizes = np.array([len(d) for d in draws])
    # Fixed seed: the p-value is one number; 1e-3 rejects a correct sampler 1 time in 1000.
    assert _binomial_chi2_pvalue(sizes, n, q) > 1e-3
    # The test has power: the same sizes are far from Binomial(n, 0.11) and from a fixed size.
    assert _binomial_chi2_pvalue(sizes, n, 0.11) < 1e-6
    fixed = np.array([len(sample_clients(7, r, n, count)) for r in range(rounds)])
    assert (fixed == count).all()
    # Every client is equally likely: its inclusion count is Binomial(rounds, q).
    inclusions = np.bincount(np.concatenate(draws), minlength=n)
    assert stats.chisquare(inclusions).pvalue > 1e-3
    # Within a round, clients are distinct and sorted.
    assert all((np.diff(d) > 0).all() for d in draws)


def test_sampling_is_reproducible_from_the_seed():
    for scheme in ("poisson", "fixed_size"):
        a = sample_clients(3, 5, 100, 10, scheme)
        np.testing.assert_array_equal(a, sample_clients(3, 5, 100, 10, scheme))
        assert not np.array_equal(a, sample_clients(4, 5, 100, 10, scheme))
        assert not np.array_equal(a, sample_clients(3, 6, 100, 10, scheme))
    with pytest.raises(ValueError, match="sampling"):
        sample_clients(0, 0, 10, 3, "uniform")
    with pytest.raises(ValueError, match="count"):
        sample_clients(0, 0, 10, 11)
    with pytest.raises(ValueError, match="sampling"):
        FedAvgConfig(sampling="stratified")
    with pytest.raises(ValueError, match="delta"):
        FedAvgConfig(delta=1.0)


# --------------------------------------------------------------------------------------------
# The trainer: rounds of varying size, the run's epsilon, resume, refusing a mismatch
# --------------------------------------------------------------------------------------------

POPULATION = 12


def _trainer(mnist, aggregator, **config):
    from aggkit_torch.data import partition_iid

    x, y = mnist.train_images[:1200], mnist.train_labels[:1200]
    defaults = {
        "clients_per_round": 4,
        "local_steps": 2,
        "batch_size": 20,
        "seed": 5,
        "sampling": "poisson",
        "client_weighting": "uniform",
    }
    torch.manual_seed(0)
    return FederatedTrainer(
        MnistCNN(),
        aggregator,
        x,
        y,
        partition_iid(y, POPULATION, seed=0),
        config=FedAvgConfig(**{**defaults, **config}),
    )


@pytest.mark.mnist
def test_poisson_rounds_vary_and_epsilon_is_the_accountants(mnist):
    # The aggregator reports its own (Poisson) epsilon: the trainer's, composed from the rounds'
    # DP events under its own sampling, must be the same number.
    aggregator = ak.gaussian_fixed(0.8, 4, clip=0.5, population=POPULATION, seed=1)
    trainer = _trainer(mnist, aggregator)
    seen = []
    original = trainer.process.next

    def spy(state, batch, weights=None):
        seen.append(batch.num_clients)
        return original(state, batch, weights)

    trainer.process.next = spy
    history = trainer.run(4, progress=False, log=None)
    sizes = [len(m["clients"]) for m in history]
    assert seen == sizes and len(set(sizes)) > 1  # the rounds' real sizes, and they vary
    for t, m in enumerate(history, start=1):
        expected = privacy.epsilon(
            0.8, clients_per_round=4, population=POPULATION, rounds=t, delta=1e-5
        )
        assert m["epsilon"] == pytest.approx(expected, rel=1e-12)
        assert m["measurements"]["privacy/epsilon"] == pytest.approx(expected, rel=1e-12)
        assert m["sampling"] == "poisson" and m["delta"] == 1e-5


@pytest.mark.mnist
def test_fixed_size_run_reports_the_replace_one_epsilon_and_refuses_a_poisson_one(mnist):
    trainer = _trainer(mnist, ak.gaussian_fixed(0.8, 4, clip=0.5, seed=1), sampling="fixed_size")
    history = trainer.run(2, progress=False, log=None)
    assert all(len(m["clients"]) == 4 for m in history)
    expected = privacy.epsilon(
        0.8, clients_per_round=4, population=POPULATION, rounds=2, delta=1e-5, sampling="fixed_size"
    )
    assert history[-1]["epsilon"] == pytest.approx(expected, rel=1e-12)
    # An aggregator whose running epsilon assumes Poisson sampling, in a fixed-size run: refused
    # before the round changes anything.
    accounted = ak.gaussian_fixed(0.8, 4, clip=0.5, population=POPULATION, seed=1)
    mismatched = _trainer(mnist, accounted, sampling="fixed_size")
    before = parameters_to_vector(mismatched.model).copy()
    state = mismatched.aggregator_state
    with pytest.raises(privacy.SamplingMismatchError, match="'poisson'"):
        mismatched.run_round()
    np.testing.assert_array_equal(parameters_to_vector(mismatched.model), before)
    assert mismatched.round == 0 and mismatched.aggregator_state is state
    assert mismatched.history == []


@pytest.mark.mnist
def test_poisson_run_resumes_bit_exactly_with_its_epsilon(mnist, tmp_path):
    def make():
        return _trainer(mnist, ak.dp_aggregator(0.3, 4, seed=2), server_momentum=0.9)

    straight = make()
    straight.run(3, progress=False, log=None)
    first = make()
    first.run(2, progress=False, log=None)
    first.save(tmp_path / "run.ckpt")
    resumed = make()
    resumed.load(tmp_path / "run.ckpt")
    resumed.run(1, progress=False, log=None)
    np.testing.assert_array_equal(
        parameters_to_vector(resumed.model), parameters_to_vector(straight.model)
    )
    for key in ("clients", "epsilon", "measurements"):
        assert resumed.history[-1][key] == straight.history[-1][key]
    assert resumed.accountant.rounds == 3


def test_run_accountant_checks_its_arguments():
    with pytest.raises(ValueError, match="sampling"):
        RunAccountant("uniform", clients_per_round=10, population=100)
    with pytest.raises(ValueError, match="delta"):
        RunAccountant("poisson", clients_per_round=10, population=100, delta=0.0)
    with pytest.raises(TypeError, match="whole number"):
        RunAccountant("fixed_size", clients_per_round=2.5, population=100)
    accountant = RunAccountant("poisson", clients_per_round=10, population=100)
    assert accountant.epsilon() == 0.0
    assert accountant.record({"not": "dp"}) is None and accountant.rounds == 0
    other = RunAccountant("fixed_size", clients_per_round=10, population=100)
    with pytest.raises(ValueError, match="'poisson' sampling"):
        other.load_state_dict(accountant.state_dict())
    # A checkpoint holds plain data; anything but Gaussians and their compositions is refused.
    crafted = {"sampling": "poisson", "delta": 1e-5, "released": [{"laplace": 1.0}]}
    with pytest.raises(ValueError, match="not a checkpointed DP event"):
        accountant.load_state_dict(crafted)


# --------------------------------------------------------------------------------------------
# The dp main job
# --------------------------------------------------------------------------------------------


def test_dp_job_defaults_target_epsilon_and_help():
    args = mnist_cli.parse_args(["--aggregator", "dp"])
    assert (args.clients, args.clients_per_round, args.rounds) == (1000, 100, 5)
    assert (args.sampling, args.noise_multiplier, args.delta) == ("poisson", 0.7, 1e-5)
    assert (args.local_epochs, args.batch_size, args.lr) == (2, 20, 0.05)
    assert (args.server_lr, args.server_momentum) == (2.0, 0.9)
    plain = mnist_cli.parse_args(["--aggregator", "robust"])
    assert (plain.clients, plain.sampling, plain.rounds) == (10, "fixed_size", 3)

    args = mnist_cli.parse_args(["--aggregator", "dp", "--target-epsilon", "4"])
    kwargs = dict(clients_per_round=100, population=1000, rounds=5, delta=1e-5)
    assert privacy.epsilon(args.noise_multiplier, **kwargs) <= 4.0
    assert privacy.epsilon(args.noise_multiplier * 0.999, **kwargs) > 4.0
    # The target wins over a noise multiplier (a Flower run config always carries one).
    both = ["--aggregator", "dp", "--target-epsilon", "4", "--noise-multiplier", "0.1"]
    assert mnist_cli.parse_args(both).noise_multiplier == args.noise_multiplier
    with pytest.raises(SystemExit):
        mnist_cli.parse_args(["--aggregator", "robust", "--target-epsilon", "4"])

    for action in mnist_cli.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help line"
        assert action.help.count("(default") <= 1, action.help


@pytest.mark.mnist
def test_quick_dp_job_reports_epsilon_every_round(mnist_root, tmp_path):
    command = [
        sys.executable,
        "-m",
        "aggkit_torch.mnist",
        "--aggregator",
        "dp",
        "--clients",
        "40",
        "--clients-per-round",
        "20",
        "--rounds",
        "2",
        "--local-steps",
        "1",
        "--train-subset",
        "400",
        "--delta",
        "1e-3",
        "--threads",
        "1",
        "--data",
        str(mnist_root),
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900)
    assert "failed to converge" not in done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("round ")]
    assert len(lines) == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for t, (line, round_metrics) in enumerate(zip(lines, metrics["history"], strict=True), 1):
        expected = privacy.epsilon(
            mnist_cli.NOISE_MULTIPLIER, clients_per_round=20, population=40, rounds=t, delta=1e-3
        )
        assert round_metrics["epsilon"] == pytest.approx(expected, rel=1e-12)
        assert f"epsilon {expected:.3g} (delta 0.001, poisson)" in line
    assert metrics["epsilon"] == metrics["history"][-1]["epsilon"]
    assert metrics["delta"] == 1e-3 and metrics["sampling"] == "poisson"
    assert f"privacy: epsilon {metrics['epsilon']:.3f} at delta 0.001" in done.stdout
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_epsilon_table_renders_the_runs_it_finds(tmp_path):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import dp_epsilon_table
    finally:
        sys.path.pop(0)
    for name, aggregator, z, epsilons, accuracy in [
        ("eps2", "dp", 1.6, [1.4, 2.0], 0.61),
        ("robust", "robust", None, [], 0.93),
    ]:
        history = [{"round": r + 1, "test_accuracy": accuracy - 0.1 * (1 - r)} for r in range(2)]
        for m, eps in zip(history, epsilons, strict=False):
            m.update(epsilon=eps, delta=1e-5, sampling="poisson")
        metrics = {
            "args": {"aggregator": aggregator, "noise_multiplier": z},
            "test_accuracy": accuracy,
            "history": history,
            **({"epsilon": epsilons[-1]} if epsilons else {}),
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    table = dp_epsilon_table.render(tmp_path, "--threads 1")
    rows = table.splitlines()[2:]
    assert rows == [
        "| dp, target epsilon 2 | 1.600 | 2.00 | 0.6100 | "
        "`python -m aggkit_torch.mnist --aggregator dp --target-epsilon 2 --threads 1` |",
        "| robust preset, same clients and local training, server lr 1 | - | - | 0.9300 | "
        f"`python -m aggkit_torch.mnist --aggregator robust {dp_epsilon_table._SAME_TRAINING} "
        "--threads 1` |",
    ]
    assert (tmp_path / "accuracy_epsilon.png").read_bytes()[:4] == b"\x89PNG"
