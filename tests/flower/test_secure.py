"""Secure aggregation over Flower: the secure apps against AggkitStrategy + MaskingBackend.

In-process (the grid hands messages to the ClientApp, nodes die at chosen protocol stages) and
between real processes (a SuperLink and 5 SuperNodes on 127.0.0.1, one round in which two
SuperNodes are killed, one before it sends its masked input, one after). Both must end with the
model of the in-process reference run with the same seeds and dropouts. The in-process test runs
two rounds, the deaths in the second: rounds after deaths, and the state carried between rounds,
are checked there; the real-process run checks what only real processes show (a node process
dying mid-protocol, the bytes on the wire), and one round of it is enough for that.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")
pytest.importorskip("cryptography")

from aggkit.secure.identity import IdentityRegistry, SigningIdentity
from tests.flower import reference
from tests.flower.secure_reference import DyingGrid, masked_reference_run

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = 5
#: Partition 1 dies before sending its masked input, partition 3 after (round 2 of 2).
DEATHS = {1: (2, "masked_input"), 3: (2, "consistency_check")}
#: The nodes in each round's sum.
INCLUDED = [[0, 1, 2, 3, 4], [0, 2, 3, 4]]
#: The same deaths in the one round of the real-process run.
DEATHS_REAL = {p: (1, stage) for p, (_, stage) in DEATHS.items()}


def identities(tmp_path, count: int) -> tuple[dict[int, str], str]:
    """An identity file per partition and the registry file."""
    keys, paths = {}, {}
    for p in range(count):
        keys[p] = SigningIdentity.generate()
        paths[p] = str(tmp_path / f"node{p}.key")
        keys[p].save(paths[p])
    registry = tmp_path / "registry.json"
    IdentityRegistry.of(keys).save(registry)
    return paths, str(registry)


def secure_config(mnist_root, tmp_path, registry: str, rounds: int = 2):
    return reference.run_config(
        NODES,
        NODES,
        rounds=rounds,
        threads=1,
        data=str(mnist_root),
        out=str(tmp_path / "out"),
        aggregator="secure",
        **{"fraction-evaluate": 0.0, "secagg-registry": registry, "secagg-stage-timeout": 120.0},
    )


def assert_same_model(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
    assert sorted(ours) == sorted(theirs)
    worst = 0.0
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        worst = max(worst, float(np.abs(ours[name] - value).max()))
    return worst


@pytest.mark.mnist
@pytest.mark.parametrize("mode", ["authenticated", "honest-but-curious"])
def test_secure_apps_in_process_equal_masking_backend_with_dropouts(mnist_root, tmp_path, mode):
    """Also in the honest-but-curious mode, which has no consistency round: the node that dies
    at "consistency_check" dies when its unmask request reaches it, and is in the sum."""
    from aggkit_torch.flower import secure_apps, server_app

    keys, registry = identities(tmp_path, NODES)
    config = secure_config(mnist_root, tmp_path, registry)
    config["secagg-mode"] = mode
    nodes = {100 + i: {"partition-id": i, "num-partitions": NODES} for i in range(NODES)}
    secure_nodes = {n: {**c, "secagg-key": keys[c["partition-id"]]} for n, c in nodes.items()}
    grid = DyingGrid(secure_apps.client_app, secure_nodes, config, DEATHS)
    strategy_class = secure_apps.secure_strategy(config)
    summary = server_app.run(grid, config, strategy_class=strategy_class)
    ours = dict(np.load(tmp_path / "out" / "model.npz"))
    assert [h["clients"] for h in summary["history"]] == INCLUDED
    sent = [stage for stage in grid.stages if stage]
    assert ("consistency_check" in sent) == (mode == "authenticated")

    config["out"] = str(tmp_path / "reference")
    expected = masked_reference_run(nodes, config, DEATHS)
    theirs = dict(np.load(tmp_path / "reference" / "model.npz"))
    assert [sorted(h["clients"]) for h in expected["history"]] == [list(range(NODES))] * 2
    for a, b in zip(summary["history"], expected["history"], strict=True):
        assert a["measurements"] == b["measurements"]
    assert assert_same_model(ours, theirs) == 0.0  # same process, same bits


@pytest.mark.slow
@pytest.mark.mnist
def test_secure_run_between_real_processes_with_two_nodes_killed(mnist_root, tmp_path, monkeypatch):
    """SuperLink + 5 SuperNodes on 127.0.0.1, authenticated SecAgg+, 1 round, in which the
    SuperNode of partition 1 is killed when the masked-input request reaches it, that of
    partition 3 after it sent its masked input. The final model is the reference's.

    Each protocol stage starts a ClientApp process on every node, so every round costs about
    20 process starts; one round keeps this test within the suite's budget."""
    from aggkit_torch.flower.secure_apps import write_secure_app
    from tests.flower.federation import Federation

    # The nodes' ClientApp is tests.flower.secure_crash_app: the repository root on their path.
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    keys, registry = identities(tmp_path, NODES)
    config = secure_config(mnist_root, tmp_path, registry, rounds=1)
    config["secagg-stage-timeout"] = 600.0
    extra = {p: f'secagg-key="{keys[p]}"' for p in range(NODES)}
    for p, (server_round, stage) in DEATHS_REAL.items():
        extra[p] += f' crash-at="{server_round}:{stage}"'
    app = write_secure_app(tmp_path / "app", **{k.replace("-", "_"): v for k, v in config.items()})
    app.write_text(
        app.read_text().replace(
            "aggkit_torch.flower.secure_apps:client_app", "tests.flower.secure_crash_app:client_app"
        )
    )
    with Federation(tmp_path / "flwr", NODES, node_config=extra) as federation:
        done = federation.run(app.parent, reference.as_flag(config), timeout=1500)
        logs = done.stdout + done.stderr
        assert done.returncode == 0, logs[-4000:] + federation.tail()
    ours = dict(np.load(tmp_path / "out" / "model.npz"))
    summary = __import__("json").loads((tmp_path / "out" / "metrics.json").read_text())
    assert [h["clients"] for h in summary["history"]] == INCLUDED[1:]

    nodes = {100 + i: {"partition-id": i, "num-partitions": NODES} for i in range(NODES)}
    config["out"] = str(tmp_path / "reference")
    masked_reference_run(nodes, config, DEATHS_REAL)
    theirs = dict(np.load(tmp_path / "reference" / "model.npz"))
    worst = assert_same_model(ours, theirs)
    print(f"largest weight difference from the MaskingBackend run: {worst:.3g}")


def test_the_apps_mode_is_explicit():
    from aggkit_torch.flower.secure_apps import secure_strategy

    with pytest.raises(ValueError, match="needs secagg-registry"):
        secure_strategy({})  # authenticated by default: no registry, no run
    with pytest.raises(ValueError, match="secagg-mode must be"):
        secure_strategy({"secagg-mode": "trusting"})
    assert secure_strategy({"secagg-mode": "honest-but-curious"}).keywords["honest_but_curious"]


def _fixed_update_app():
    """A secure ClientApp whose "training" adds a fixed noise drawn from the partition id."""
    from flwr.app import Array, ArrayRecord, MetricRecord
    from flwr.clientapp import ClientApp

    from aggkit_torch.flower import client_app as plain
    from aggkit_torch.flower import secure_apps

    app = ClientApp()
    app.query("partition")(plain.query_partition)
    app.query("secagg")(secure_apps.secagg)

    @app.train()
    def train(message, context):
        partition = int(context.node_config["partition-id"])
        rng = np.random.default_rng(1000 + partition)
        arrays = message.content.array_records["arrays"]
        trained = {
            k: a.numpy() + rng.normal(0, 0.1, a.shape).astype(np.float32) for k, a in arrays.items()
        }
        record = ArrayRecord({k: Array(v) for k, v in trained.items()})
        metrics = MetricRecord({"num-examples": 10 + partition, "train_loss": 0.0})
        return secure_apps.answer_train(message, context, record, metrics)

    return app


def _secure_run(empty_rounds: set[int], rounds: int):
    """Secure rounds of ``ak.secure_aggregator()`` over 5 in-process nodes; nobody is sampled
    in ``empty_rounds``. Returns the strategy and the final arrays."""
    from flwr.app import Array, ArrayRecord

    import aggkit as ak
    from aggkit_torch.federated import FedAvgConfig
    from aggkit_torch.flower.secure import SecureAggkitStrategy
    from tests.flower.local_grid import LocalGrid

    class Strategy(SecureAggkitStrategy):
        def sample_partitions(self, server_round, num_partitions):
            if server_round in empty_rounds:
                return np.array([], dtype=np.int64)
            return super().sample_partitions(server_round, num_partitions)

    run_config = {
        "aggregator": "secure",
        "clients": NODES,
        "clients-per-round": NODES,
        "secagg-mode": "honest-but-curious",
    }
    nodes = {100 + p: {"partition-id": p, "num-partitions": NODES} for p in range(NODES)}
    grid = LocalGrid(_fixed_update_app(), nodes, run_config)
    strategy = Strategy(
        ak.secure_aggregator(),
        FedAvgConfig(clients_per_round=NODES),
        honest_but_curious=True,
        fraction_evaluate=0.0,
        min_evaluate_nodes=0,
    )
    rng = np.random.default_rng(0)
    initial = {"w": rng.normal(size=(40, 25)).astype(np.float32), "b": np.zeros(7, np.float32)}
    arrays = ArrayRecord({k: Array(v) for k, v in initial.items()})
    result = strategy.start(grid, arrays, num_rounds=rounds, timeout=60)
    final = {k: a.numpy() for k, a in result.arrays.items()}
    return strategy, initial, final


def test_a_round_that_samples_no_node_changes_nothing():
    """Round 1 samples nobody: no protocol runs, and neither the model nor the aggregator's
    state moves, so round 2 ends where a one-round run ends (bit for bit)."""
    skipped, initial, after_skip = _secure_run({1}, rounds=2)
    plain, _, after_one = _secure_run(set(), rounds=1)
    assert [h["round"] for h in skipped.secagg_history] == [2]
    assert skipped.secagg_history[0]["included"] == list(range(NODES))
    assert not np.array_equal(after_one["w"], initial["w"])  # the real round moved the model
    for name in initial:
        np.testing.assert_array_equal(after_skip[name], after_one[name], err_msg=name)
    assert repr(skipped.aggregator_state) == repr(plain.aggregator_state)


class _Clock:
    """A fake clock for PatientGrid: ``sleep`` moves it on."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class _SlowGrid:
    """Replies to a node's message arrive ``delays[node]`` seconds after the push (never if
    None); every pull is logged with its time."""

    def __init__(self, clock: _Clock, delays: dict[int, float | None]):
        self.clock, self.delays, self.pulls = clock, delays, []
        self.pushed: dict[str, tuple[float, object]] = {}

    def push_messages(self, messages):
        ids = []
        for message in messages:
            key = str(len(self.pushed))
            self.pushed[key] = (self.clock.now, message)
            ids.append(key)
        return ids

    def pull_messages(self, ids):
        from flwr.app import Message, RecordDict

        self.pulls.append(self.clock.now)
        out = []
        for key in ids:
            pushed_at, message = self.pushed[key]
            delay = self.delays[message.metadata.dst_node_id]
            if delay is not None and self.clock.now >= pushed_at + delay:
                reply = Message(RecordDict(), reply_to=message)
                reply.metadata.__dict__["_reply_to_message_id"] = key
                out.append(reply)
        return out


def _queries(nodes):
    from flwr.app import Message, RecordDict

    return [Message(RecordDict(), dst_node_id=n, message_type="query.secagg") for n in nodes]


def test_patient_grid_gets_the_same_replies_with_fewer_pulls(monkeypatch):
    from aggkit_torch.flower import secure

    clock = _Clock()
    monkeypatch.setattr(secure, "time", clock)
    grid = _SlowGrid(clock, {1: 5.0, 2: 20.0})
    patient = secure.PatientGrid(grid)
    # First exchange of its kind: Flower's schedule, a pull at once and then every 3 s.
    replies = patient.send_and_receive(_queries([1, 2]), timeout=600, key="share_keys")
    assert len(replies) == 2
    assert grid.pulls == [0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0]
    assert patient.durations == {"share_keys": 21.0}
    # The same exchange again: after the first pull it waits 80% of the last duration (16.8 s).
    grid.pulls.clear()
    start = clock.now
    replies = patient.send_and_receive(_queries([1, 2]), timeout=600, key="share_keys")
    assert len(replies) == 2
    assert [round(t - start, 6) for t in grid.pulls] == [0.0, 16.8, 19.8, 22.8]
    # Another exchange is not slowed by it: Flower's schedule again.
    grid.pulls.clear()
    start = clock.now
    patient.send_and_receive(_queries([1]), timeout=600, key="unmask")
    assert [t - start for t in grid.pulls] == [0.0, 3.0, 6.0]


def test_patient_grid_stops_at_the_timeout_with_the_replies_it_has(monkeypatch):
    from aggkit_torch.flower import secure

    clock = _Clock()
    monkeypatch.setattr(secure, "time", clock)
    grid = _SlowGrid(clock, {1: 1.0, 2: None})  # node 2 never answers
    patient = secure.PatientGrid(grid)
    patient.durations["query.secagg"] = 100.0  # a long exchange last time: the timeout still wins
    replies = patient.send_and_receive(_queries([1, 2]), timeout=10.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["0"]
    assert grid.pulls == [0.0, 10.0]
    assert patient.durations == {"query.secagg": 100.0}  # an unfinished exchange teaches nothing


def test_strategy_waits_patiently_only_on_a_grid_that_polls(monkeypatch):
    import aggkit as ak
    from aggkit_torch.flower.secure import PatientGrid, SecureAggkitStrategy

    seen = []
    monkeypatch.setattr(
        "aggkit_torch.flower.strategy.AggkitStrategy.start",
        lambda self, grid, *a, **k: seen.append(grid),
    )
    strategy = SecureAggkitStrategy(ak.secure_aggregator(), honest_but_curious=True)

    class Polling:
        polls_for_replies = True

    class Local:
        pass

    polling, local = Polling(), Local()
    strategy.start(polling, None)
    strategy.start(local, None)
    assert isinstance(seen[0], PatientGrid) and seen[0].grid is polling
    assert seen[1] is local
