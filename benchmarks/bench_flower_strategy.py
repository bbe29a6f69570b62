"""AggkitStrategy against Flower's own strategies, through Flower's message API (flwr 1.42).

One round's ``aggregate_train`` on 100 reply messages of one update each (the MNIST CNN's
431,080 float32 values in its 8 arrays, in full mode), every strategy timed on its own freshly
serialized replies (each reply's content goes through Flower's protobuf serialization, as a
transport delivers it: no strategy meets arrays another one already decoded), interleaved round
after round in one process so that they share the machine's load:

- Flower's ``FedAvg`` (weighted mean) against ``AggkitStrategy(ak.mean())`` and
  ``AggkitStrategy(ak.robust_aggregator())`` (zeroing, clipping, weighted mean);
- Flower's ``FedMedian`` against ``AggkitStrategy(ak.median())``;
- Flower's ``Krum`` against ``AggkitStrategy(ak.krum(f))`` (``f = 10`` of 100).

The aggkit strategies do what they do in a run: validate every reply, decode it into its row,
check finiteness, aggregate, and take the server optimizer's step (SGD, learning rate 1).
Reported: best and median time of each, and each one's median ratio against ``FedAvg`` (or
against Flower's strategy for the same rule), from the same rounds.

Run it as a script for the table (``python -m benchmarks.bench_flower_strategy --rounds 15``),
or through pytest like the other suites (smoke: one round on a small model).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import aggkit as ak
from benchmarks.bench_secagg_flower import TimedGrid, _task_identity, _through_bytes
from benchmarks.conftest import FULL, PAUSE, record


def sizes(full: bool) -> tuple[int, int]:
    """Replies a round (the issue's 100 clients) and the Byzantine clients Krum assumes."""
    return (100, 10) if full else (6, 1)


def model_arrays(full: bool = FULL) -> dict[str, np.ndarray]:
    """The MNIST CNN's initial arrays (full) or a small stand-in (smoke)."""
    if not full:
        rng = np.random.default_rng(0)
        return {"w": rng.normal(size=(40, 25)).astype(np.float32), "b": np.zeros(7, np.float32)}
    import torch

    from aggkit_torch.models import MnistCNN

    torch.manual_seed(0)
    return {k: v.detach().numpy().copy() for k, v in MnistCNN().state_dict().items()}


class Contender:
    """One strategy, its global arrays, and fresh replies to its own train messages."""

    def __init__(self, name: str, strategy, model: dict[str, np.ndarray], trained: list):
        self.name, self.strategy, self.trained = name, strategy, trained
        self.arrays = ArrayRecord({k: Array(v) for k, v in model.items()})
        self.grid = TimedGrid(None, {1000 + i: {} for i in range(len(trained))}, {})
        self.round = 0
        self.times: list[float] = []
        self.cpu: list[float] = []

    def replies(self) -> list[Message]:
        """Configure a round (untimed) and answer every train message with fresh bytes."""
        self.round += 1
        messages = list(
            self.strategy.configure_train(self.round, self.arrays, ConfigRecord(), self.grid)
        )
        replies = []
        for message in messages:
            i = message.metadata.dst_node_id - 1000
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in self.trained[i].items()}),
                    "metrics": MetricRecord({"num-examples": 50 + i, "train_loss": 0.5}),
                }
            )
            replies.append(Message(_through_bytes(content), reply_to=message))
        return replies

    def timed_round(self) -> float:
        replies = self.replies()
        time.sleep(PAUSE)
        start, cpu = time.perf_counter(), time.process_time()
        arrays, _ = self.strategy.aggregate_train(self.round, replies)
        seconds = time.perf_counter() - start
        self.cpu.append(time.process_time() - cpu)
        if arrays is None:
            raise RuntimeError(f"{self.name}: the round produced no arrays")
        self.times.append(seconds)
        return seconds


def contenders(full: bool = FULL) -> list[Contender]:
    """Flower's strategies and aggkit's, each with its own copy of the same replies."""
    from flwr.serverapp.strategy import FedAvg, FedMedian, Krum

    logging.getLogger("flwr").setLevel(logging.ERROR)  # FedAvg logs every round

    from aggkit_torch.federated import FedAvgConfig
    from aggkit_torch.flower.strategy import AggkitStrategy

    clients, byzantine = sizes(full)
    model = model_arrays(full)
    rng = np.random.default_rng(7)
    trained = [
        {k: (v + rng.normal(0, 0.01, v.shape)).astype(v.dtype) for k, v in model.items()}
        for _ in range(clients)
    ]
    common = {
        "fraction_evaluate": 0.0,
        "min_train_nodes": clients,
        "min_available_nodes": clients,
    }
    config = FedAvgConfig(clients_per_round=clients, client_weighting="num_examples")

    def aggkit(factory):
        return AggkitStrategy(factory, config, partition_sampling=False, fraction_evaluate=0.0)

    made = [
        ("flower FedAvg", FedAvg(**common)),
        ("aggkit mean", aggkit(ak.mean())),
        ("aggkit robust_aggregator", aggkit(ak.robust_aggregator())),
        ("flower FedMedian", FedMedian(**common)),
        ("aggkit median", aggkit(ak.median())),
        ("flower Krum", Krum(num_malicious_nodes=byzantine, **common)),
        ("aggkit krum", aggkit(ak.krum(byzantine))),
    ]
    return [Contender(name, strategy, model, trained) for name, strategy in made]


#: Which Flower strategy each aggkit one is compared with.
PEERS = {
    "aggkit mean": "flower FedAvg",
    "aggkit robust_aggregator": "flower FedAvg",
    "aggkit median": "flower FedMedian",
    "aggkit krum": "flower Krum",
}


def measure(rounds: int, full: bool = FULL, only: list[str] | None = None) -> dict[str, Any]:
    """Interleaved rounds of every contender; best/median ms and median ratios to the peer."""
    everyone = contenders(full)
    if only:
        everyone = [c for c in everyone if c.name in only]
    for c in everyone:  # warm-up: compile or load kernels, create processes and optimizers
        c.timed_round()
        c.times.clear()
        c.cpu.clear()
    for r in range(rounds):
        order = everyone[r % len(everyone) :] + everyone[: r % len(everyone)]
        for c in order:
            c.timed_round()
    by_name = {c.name: np.asarray(c.times) for c in everyone}
    cpu_by_name = {c.name: np.asarray(c.cpu) for c in everyone}
    result: dict[str, Any] = {}
    for name, times in by_name.items():
        cpu = cpu_by_name[name]
        entry = {
            "best_ms": times.min() * 1e3,
            "median_ms": float(np.median(times)) * 1e3,
            "cpu_median_ms": float(np.median(cpu)) * 1e3,
        }
        peer = PEERS.get(name)
        if peer in by_name:
            entry["peer"] = peer
            entry["ratio"] = float(np.median(by_name[peer] / times))  # > 1: faster than peer
            entry["best_ratio"] = float(by_name[peer].min() / times.min())
            entry["cpu_ratio"] = float(np.median(cpu_by_name[peer]) / np.median(cpu))
        result[name] = entry
    return result


_TABLE: dict[str, Any] = {}


@pytest.mark.parametrize("name", list(PEERS))
def test_aggkit_strategy_vs_flower_paired(benchmark, name):
    """Each aggkit strategy against its Flower peer, from one interleaved run of all of them
    (the first test runs it): a paired row of the benchmarks page."""
    _task_identity()
    from benchmarks.conftest import shape_id

    if not _TABLE:
        _TABLE.update(measure(15 if FULL else 1))
    entry, peer = _TABLE[name], _TABLE[PEERS[name]]
    clients, _ = sizes(FULL)
    values = sum(a.size for a in model_arrays(FULL).values())
    record(benchmark, group=f"flower-strategy-paired|{shape_id((clients, values))}")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timing is measure()'s
    benchmark.extra_info.update(
        paired=PEERS[name],
        reference_ms=peer["best_ms"],
        contender_ms=entry["best_ms"],
        best_ratio=entry["best_ratio"],
        ratio=entry["ratio"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="small model, 6 clients")
    parser.add_argument("--only", nargs="*", help="contender names to run")
    args = parser.parse_args()
    _task_identity()
    print(f"uptime: {os.popen('uptime').read().strip()}")
    table = measure(args.rounds, full=not args.smoke, only=args.only)
    for name, entry in table.items():
        ratio = ""
        if "ratio" in entry:
            ratio = (
                f"  {entry['ratio']:.2f}x {entry['peer']} (best {entry['best_ratio']:.2f}x,"
                f" CPU {entry['cpu_ratio']:.2f}x)"
            )
        print(
            f"{name:26s} best {entry['best_ms']:7.1f} ms  median {entry['median_ms']:7.1f} ms"
            f"  CPU {entry['cpu_median_ms']:7.1f} ms{ratio}"
        )
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
