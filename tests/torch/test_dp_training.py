"""Private training as a user meets it: client sampling, the run's epsilon, the dp main job."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import aggkit as ak
from aggkit import privacy
from aggkit.tree import tree_dp_event
from aggkit_torch import mnist as mnist_cli
from aggkit_torch.accounting import RunAccountant
from aggkit_torch.federated import (
    FedAvgConfig,
    FederatedTrainer,
    flatten_measurements,
    sample_clients,
)
from aggkit_torch.models import MnistCNN
from aggkit_torch.params import model_layout, parameters_to_vector

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
@pytest.mark.parametrize("aggregator", ["dp", "dp-ftrl", "distributed-dp"])
def test_quick_dp_job_reports_epsilon_every_round(mnist_root, tmp_path, aggregator):
    command = [
        sys.executable,
        "-m",
        "aggkit_torch.mnist",
        "--aggregator",
        aggregator,
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
    sampling = "epochs" if aggregator == "dp-ftrl" else "poisson"
    for t, (line, round_metrics) in enumerate(zip(lines, metrics["history"], strict=True), 1):
        if aggregator == "distributed-dp":  # Skellam: the papers' bound, reported by the aggregator
            expected = round_metrics["measurements"]["privacy/epsilon"]
            assert round_metrics["measurements"]["privacy/delta"] == 1e-3
            assert 0 < expected < math.inf
        elif aggregator == "dp":
            expected = privacy.epsilon(
                mnist_cli.NOISE_MULTIPLIER,
                clients_per_round=20,
                population=40,
                rounds=t,
                delta=1e-3,
            )
        else:  # epochs of 2 rounds, a tree per epoch, no amplification
            z = mnist_cli.NOISE_MULTIPLIERS["dp-ftrl"]
            expected = privacy.epsilon(tree_dp_event(z, t, restart_rounds=2), delta=1e-3)
        assert round_metrics["epsilon"] == pytest.approx(expected, rel=1e-12)
        assert f"epsilon {expected:.3g} (delta 0.001, {sampling})" in line
    assert metrics["epsilon"] == metrics["history"][-1]["epsilon"]
    assert metrics["delta"] == 1e-3 and metrics["sampling"] == sampling
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
        ("ftrl", "dp-ftrl", 1.41, [3.2, 6.0], 0.55),
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
        "| dp-ftrl, defaults (tree noise multiplier 1.41) | 1.410 | 6.00 | 0.5500 | "
        "`python -m aggkit_torch.mnist --aggregator dp-ftrl --threads 1` |",
    ]
    # The matched-epsilon comparison: the rows of dp_epsilon_table.MATCHED that ran.
    assert (tmp_path / "matched.md").read_text().splitlines()[2:] == rows[2:]
    assert (tmp_path / "accuracy_epsilon.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# DP-FTRL (tree aggregation) and distributed DP in training
# --------------------------------------------------------------------------------------------


def test_epochs_sampling_takes_every_client_once_per_epoch():
    n, count = 23, 5  # 4 rounds an epoch; 3 clients sit each epoch out
    for epoch in range(3):
        rounds = [sample_clients(9, 4 * epoch + r, n, count, "epochs") for r in range(4)]
        seen = np.concatenate(rounds)
        assert all(len(r) == count for r in rounds)
        assert len(seen) == len(set(seen.tolist())) == 20  # no client twice in an epoch
    first = np.concatenate([sample_clients(9, r, n, count, "epochs") for r in range(4)])
    second = np.concatenate([sample_clients(9, r, n, count, "epochs") for r in range(4, 8)])
    assert not np.array_equal(first, second)  # a new order each epoch
    np.testing.assert_array_equal(
        sample_clients(9, 6, n, count, "epochs"), sample_clients(9, 6, n, count, "epochs")
    )


def test_run_accountant_takes_the_tree_event_of_the_run():
    process = ak.tree_aggregation(1.3, 4, clip=0.5, restart_rounds=3, seed=0).create(
        ak.TensorSpec((8,), np.float32)
    )
    accountant = RunAccountant("epochs", clients_per_round=4, population=12, rounds_per_epoch=3)
    state = process.initialize()
    for t in range(1, 8):
        state = process.next(state, [np.ones(8, np.float32)] * 4).state
        spent = accountant.record(state)
        expected = privacy.epsilon(tree_dp_event(1.3, t, restart_rounds=3), delta=1e-5)
        assert spent["epsilon"] == pytest.approx(expected, rel=1e-12)
        assert accountant.rounds == t
    # A round replayed from an older state released its tree's noise again: both count.
    replay = RunAccountant("epochs", clients_per_round=4, population=12, rounds_per_epoch=3)
    replay.load_state_dict(accountant.state_dict())  # plain data, trees included
    assert replay.epsilon() == accountant.epsilon()
    replay.record(state)
    assert replay.epsilon() > accountant.epsilon()


def test_run_accountant_refuses_a_tree_a_client_can_join_twice():
    process = ak.tree_aggregation(1.0, 4, clip=0.5, seed=0).create(ak.TensorSpec((8,), np.float32))
    state = process.next(process.initialize(), [np.ones(8, np.float32)] * 4).state
    for sampling in ("poisson", "fixed_size"):
        accountant = RunAccountant(sampling, clients_per_round=4, population=12)
        with pytest.raises(privacy.SamplingMismatchError, match="at most one round per tree"):
            accountant.record(state)
    # A tree that never restarts, in a run longer than an epoch of 3 rounds.
    accountant = RunAccountant("epochs", clients_per_round=4, population=12, rounds_per_epoch=3)
    for _ in range(3):
        accountant.record(state)
        state = process.next(state, [np.ones(8, np.float32)] * 4).state
    with pytest.raises(privacy.SamplingMismatchError, match="epoch boundary after round 3"):
        accountant.record(state)
    with pytest.raises(ValueError, match="rounds_per_epoch"):
        RunAccountant("epochs", clients_per_round=4, population=12)
    # No amplification under 'epochs': a Gaussian round is a plain Gaussian mechanism.
    gauss = ak.gaussian_fixed(1.0, 4, clip=0.5, seed=0).create(ak.TensorSpec((8,), np.float32))
    g_state = gauss.next(gauss.initialize(), [np.ones(8, np.float32)] * 4).state
    plain = RunAccountant("epochs", clients_per_round=4, population=12, rounds_per_epoch=3)
    assert plain.record(g_state)["epsilon"] == pytest.approx(
        privacy.epsilon(1.0, clients_per_round=4, population=None, rounds=1, delta=1e-5),
        rel=1e-12,
    )


def test_run_accountant_reports_distributed_skellams_own_epsilon():
    factory = ak.distributed_dp(1.0, 4, bits=16, clip=0.5, population=12, delta=1e-5, seed=0)
    process = factory.create(ak.TensorSpec((8,), np.float32))
    accountant = RunAccountant("poisson", clients_per_round=4, population=12)
    state = process.initialize()
    for t in range(1, 3):
        out = process.next(state, [np.ones(8, np.float32)] * 4)
        state = out.state
        spent = accountant.record(state, out.measurements)
        assert spent["epsilon"] == out.measurements["privacy"]["epsilon"]
        assert accountant.rounds == t
    # The trainer hands over flattened measurements ("privacy/epsilon"): the same number.
    flat = RunAccountant("poisson", clients_per_round=4, population=12)
    spent = flat.record(state, flatten_measurements(out.measurements))
    assert spent["epsilon"] == out.measurements["privacy"]["epsilon"]
    # Skellam has no dp-accounting event: without the aggregator's own epsilon it is refused,
    # and its Poisson epsilon is no guarantee for another sampling or delta.
    with pytest.raises(ValueError, match="cannot evaluate"):
        RunAccountant("poisson", clients_per_round=4, population=12).record(state)
    other = RunAccountant("poisson", clients_per_round=4, population=12, delta=1e-6)
    with pytest.raises(privacy.SamplingMismatchError, match="delta"):
        other.record(state, out.measurements)


def test_dp_ftrl_job_defaults_and_target_epsilon():
    args = mnist_cli.parse_args(["--aggregator", "dp-ftrl"])
    assert (args.clients, args.clients_per_round, args.sampling) == (1000, 100, "epochs")
    assert (args.server_lr, args.server_momentum, args.clip) == (2.0, 0.9, mnist_cli.CLIP)
    factory = mnist_cli.make_aggregator("dp-ftrl", args)
    assert factory.restart_rounds == 10 and factory.clip == mnist_cli.CLIP
    # The default spends what dp's default does (6.0 over 5 rounds): the docs compare the two.
    tree_eps = privacy.epsilon(tree_dp_event(args.noise_multiplier, 5, 10), delta=1e-5)
    central_eps = privacy.epsilon(
        mnist_cli.NOISE_MULTIPLIER, clients_per_round=100, population=1000, rounds=5, delta=1e-5
    )
    assert tree_eps <= 6.0 and tree_eps == pytest.approx(central_eps, abs=0.05)
    args = mnist_cli.parse_args(["--aggregator", "dp-ftrl", "--target-epsilon", "4"])
    assert privacy.epsilon(tree_dp_event(args.noise_multiplier, 5, 10), delta=1e-5) <= 4.0
    assert privacy.epsilon(tree_dp_event(args.noise_multiplier * 0.999, 5, 10), delta=1e-5) > 4.0
    with pytest.raises(SystemExit):
        mnist_cli.parse_args(["--aggregator", "dp-ftrl", "--sampling", "poisson"])
    # distributed-dp: by the papers' bound, as the run reports it.
    ddp = mnist_cli.parse_args(["--aggregator", "distributed-dp", "--target-epsilon", "4"])
    assert ddp.sampling == "poisson"
    layout = model_layout(MnistCNN())

    def ddp_eps(z):
        factory = ak.distributed_dp(z, 100, mnist_cli.DDP_BITS, ddp.clip, population=1000)
        return factory.create(layout).epsilon(5)

    assert ddp_eps(ddp.noise_multiplier) <= 4.0 < ddp_eps(ddp.noise_multiplier * 0.999)
    assert ddp_eps(mnist_cli.NOISE_MULTIPLIERS["distributed-dp"]) <= 6.0


@pytest.mark.mnist
def test_dp_ftrl_training_learns_and_its_model_is_the_noised_cumulative_sum(mnist):
    # DP-FTRL as the paper runs it: every client once per epoch (40 clients, 20 a round: epochs
    # of 2 rounds, a tree per epoch), plain server SGD at learning rate 1, so the model after
    # round t is the initial model minus the sum of the tree's per-round values. A setting that
    # should learn: 20 clients a round and tree noise 0.1 at clip 1 put 0.005 of noise per
    # coordinate on a round's mean (the 4 clients at the adaptive clip of test_federated's short
    # run are far noisier).
    from aggkit_torch.data import partition_iid

    x, y = mnist.train_images[:2400], mnist.train_labels[:2400]
    tx, ty = mnist.test_images[:2000], mnist.test_labels[:2000]
    torch.manual_seed(0)
    trainer = FederatedTrainer(
        MnistCNN(),
        ak.tree_aggregation(0.1, 20, clip=1.0, restart_rounds=2, seed=0),
        x,
        y,
        partition_iid(y, 40, seed=0),
        tx,
        ty,
        config=FedAvgConfig(
            clients_per_round=20,
            local_steps=10,
            batch_size=32,
            client_lr=0.05,
            seed=3,
            sampling="epochs",
            client_weighting="uniform",
        ),
    )
    initial = parameters_to_vector(trainer.model).astype(np.float64)
    results = []
    original = trainer.process.next

    def spy(state, batch, weights=None):
        out = original(state, batch, weights)
        results.append(np.concatenate([np.ravel(out.result[k]) for k in out.result]))
        return out

    trainer.process.next = spy
    history = trainer.run(4, progress=False, log=None)
    for t, metrics in enumerate(history, start=1):
        assert len(metrics["clients"]) == 20 and metrics["committed"]
        expected = privacy.epsilon(tree_dp_event(0.1, t, restart_rounds=2), delta=1e-5)
        assert metrics["epsilon"] == pytest.approx(expected, rel=1e-12)
    epochs = [set(m["clients"]) for m in history]
    assert epochs[0].isdisjoint(epochs[1]) and epochs[2].isdisjoint(epochs[3])
    # FTRL: the model is the initial one minus the running sum of the released values (float32
    # steps: rounding only).
    np.testing.assert_allclose(
        parameters_to_vector(trainer.model), initial - np.sum(results, axis=0), rtol=0, atol=1e-5
    )
    # Learns: test_federated's bar for rules that average clients (0.6; chance is 0.1). Measured
    # 0.66, 0.72, 0.81, 0.85 over the 4 rounds.
    assert history[-1]["test_accuracy"] > 0.6
