"""The attack harness: who attacks, what each attack sends, the trainer hook, the main job's
flags, and the accuracy-under-attack script (quick mode, real MNIST)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aggkit as ak
from aggkit_torch.attacks import ATTACKS, RULES, Attack, alie_z, malicious_rows, robust_rule


def _round(k=10, n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.2, (k, n)).astype(np.float32)


def test_attackers_are_reproducible_per_round_and_sized_by_the_fraction():
    a = [malicious_rows(3, r, 15, 0.2).tolist() for r in range(6)]
    assert a == [malicious_rows(3, r, 15, 0.2).tolist() for r in range(6)]
    assert all(len(rows) == 3 for rows in a) and len({tuple(r) for r in a}) > 1
    assert malicious_rows(3, 0, 15, 0.2).tolist() != malicious_rows(4, 0, 15, 0.2).tolist()
    assert len(malicious_rows(0, 0, 10, 0.1)) == 1 and len(malicious_rows(0, 0, 9, 0.1)) == 0


@pytest.mark.parametrize("kind", [k for k in ATTACKS if k != "label_flip"])
def test_honest_rows_are_untouched_and_attackers_send_the_attack(kind):
    matrix = _round()
    before = matrix.copy()
    attack = Attack(kind, 0.3, seed=1, z=1.5)
    rows = attack.poison(2, matrix)
    honest = np.setdiff1d(np.arange(10), rows)
    np.testing.assert_array_equal(matrix[honest], before[honest])
    if kind == "none":
        assert rows.size == 0
        return
    assert rows.tolist() == malicious_rows(1, 2, 10, 0.3).tolist()
    mu = before[honest].astype(np.float64).mean(axis=0)
    sigma = before[honest].astype(np.float64).std(axis=0)
    expected = {
        "sign_flip": -before[rows],
        "scaled": 100.0 * before[rows],
        "alie": np.broadcast_to(mu - 1.5 * sigma, (len(rows), 50)),
        "ipm": np.broadcast_to(-0.1 * mu, (len(rows), 50)),
    }
    if kind == "gaussian":
        assert abs(matrix[rows].std() - 1.0) < 0.15 and not np.allclose(matrix[rows], before[rows])
    else:
        np.testing.assert_allclose(matrix[rows], expected[kind], rtol=1e-6)


def test_alie_z_is_the_papers():
    # Baruch et al.: n = 50, m = 12 gives s = 14 and z = Phi^-1(36/50).
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-9)


def test_invalid_attacks():
    with pytest.raises(ValueError, match="attack must be one of"):
        Attack("backdoor", 0.1)
    with pytest.raises(ValueError, match="malicious"):
        Attack("alie", 1.0)
    with pytest.raises(ValueError, match="needs the trainer"):
        Attack("label_flip", 0.5).poison(0, _round())


def test_rules_for_the_command_line():
    for name in RULES:
        assert isinstance(robust_rule(name, 15, 3), ak.Factory)
    assert robust_rule("trimmed_mean", 15, 3).trim_fraction == pytest.approx(3.5 / 15)
    assert robust_rule("multi_krum", 15, 3) == ak.krum(3, 12)
    with pytest.raises(ValueError, match="rule must be one of"):
        robust_rule("mean", 15, 3)


def _trainer(aggregator, attack, clients=6):
    import torch

    from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
    from aggkit_torch.models import MnistCNN

    torch.manual_seed(0)
    images, labels = torch.randn(60, 1, 28, 28), torch.randint(0, 10, (60,))
    parts = [range(10 * i, 10 * i + 10) for i in range(clients)]
    config = FedAvgConfig(clients_per_round=clients, local_steps=1, batch_size=10, seed=0)
    return FederatedTrainer(
        MnistCNN(), aggregator, images, labels, parts, config=config, update_transform=attack
    )


@pytest.mark.parametrize("kind", ["sign_flip", "label_flip"])
def test_the_trainer_aggregates_the_poisoned_updates(kind):
    honest = _trainer(ak.unweighted_mean(), None)
    honest.run_round()
    attacked = _trainer(ak.unweighted_mean(), Attack(kind, 0.5, seed=0))
    attacked.run_round()
    rows = Attack(kind, 0.5, seed=0).rows(0, 6)
    diff = attacked.batch.matrix - honest.batch.matrix
    changed = np.flatnonzero(np.abs(diff).max(axis=1) > 0)
    assert changed.tolist() == rows.tolist() and len(rows) == 3
    if kind == "sign_flip":
        np.testing.assert_array_equal(attacked.batch.matrix[rows], -honest.batch.matrix[rows])


def test_main_job_flags_parse():
    from aggkit_torch.mnist import make_aggregator, parse_args

    args = parse_args(
        [
            "--aggregator",
            "bulyan",
            "--attack",
            "ipm",
            "--malicious",
            "0.2",
            "--clients",
            "40",
            "--clients-per-round",
            "15",
        ]
    )
    assert args.attack == "ipm" and args.malicious == 0.2
    assert make_aggregator("bulyan", args) == ak.bulyan(3)
    args = parse_args(["--aggregator", "krum", "--num-byzantine", "1"])
    assert make_aggregator("krum", args) == ak.krum(1)


@pytest.mark.mnist
@pytest.mark.slow
def test_accuracy_attacks_script_quick(mnist_root, tmp_path):
    from benchmarks import accuracy_attacks

    argv = ["--quick", "--data", str(mnist_root), "--out", str(tmp_path), "--partitions", "iid"]
    argv += ["--fractions", "0.2", "--attacks", "sign_flip", "--rules", "mean,median"]
    text = accuracy_attacks.main(argv)
    assert "| median |" in text and "sign_flip 20%" in text
    assert "Command: `python benchmarks/accuracy_attacks.py --model cnn --rounds 1 " in text
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 2 rules x (no attack, sign_flip at 20%)
    assert (tmp_path / "accuracy_attacks.png").read_bytes()[:4] == b"\x89PNG"
    accuracy_attacks.main(argv)  # a second call resumes: nothing runs again
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4


def test_accuracy_attacks_renders_every_workers_runs(tmp_path):
    # Two workers share one --out: worker A ran mean (with and without attack), worker B ran
    # median under attack only and finishes last. B's table must hold A's runs too (it used to
    # render its own runs only and overwrite A's table); a line still being written is skipped.
    from benchmarks import accuracy_attacks

    def run(rule, attack, fraction, accuracy):
        return {
            "partition": "iid",
            "attack": attack,
            "fraction": fraction,
            "rule": rule,
            "num_byzantine": 2,
            "accuracy": accuracy,
            "seconds": 1.0,
            "error": None,
        }

    lines = [run("mean", "none", 0.0, 0.91), run("mean", "sign_flip", 0.2, 0.42)]
    lines.append(run("median", "sign_flip", 0.2, 0.77))
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"partition": "iid", "att'
    (tmp_path / "results.jsonl").write_text(text)
    argv = ["--out", str(tmp_path), "--partitions", "iid", "--fractions", "0.2"]
    args = accuracy_attacks._parser().parse_args(
        [*argv, "--attacks", "sign_flip", "--rules", "median", "--no-baseline"]
    )
    table = accuracy_attacks.render(args)
    assert "| mean | 0.910 | 0.420 |" in table and "| median |  | 0.770 |" in table
    assert table.index("| mean |") < table.index("| median |")  # RULE_NAMES order
    assert (tmp_path / "accuracy_attacks.md").read_text() == table
    assert (tmp_path / "accuracy_attacks.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".accuracy")) == []
