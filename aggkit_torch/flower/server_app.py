"""The Flower ServerApp of federated MNIST: the main job's run, on Flower.

It reads the run config (the options of ``python -m aggkit_torch.mnist``, see
:mod:`aggkit_torch.flower.run_config`), builds the same MNIST CNN (``torch.manual_seed(seed)``),
the same aggregator (:func:`aggkit_torch.mnist.make_aggregator`) and the same
:class:`~aggkit_torch.federated.FedAvgConfig`, and runs :class:`~aggkit_torch.flower.strategy.
AggkitStrategy` for ``rounds`` rounds. Every ``eval-every`` rounds and after the last one it
evaluates the global model on the MNIST test set (unless ``server-eval=false``, or the server
has no MNIST) and logs the round
as the main job does: accuracy, loss, timings and the aggregator's measurements. With ``out``
set it writes ``metrics.json`` (the per-round history and Flower's metrics) and ``model.npz``
(the final global arrays) there.
"""

from __future__ import annotations

import json
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from aggkit_torch.flower import require_flwr

require_flwr()

from flwr.app import ArrayRecord, Context, MetricRecord  # noqa: E402
from flwr.common import log  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from aggkit_torch.flower.run_config import RUN_CONFIG, fedavg_config, mnist_args  # noqa: E402

__all__ = ["app", "run"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run federated MNIST with the run config's aggregator."""
    run(grid, context.run_config)


def run(grid: Grid, run_config: dict[str, Any], strategy_class: Any = None) -> dict[str, Any]:
    """Run federated MNIST on ``grid``; returns what ``metrics.json`` holds.

    ``strategy_class`` replaces :class:`AggkitStrategy` (same arguments), e.g. the secure
    strategy of :mod:`aggkit_torch.flower.secure_apps`.
    """
    import numpy as np
    import torch

    from aggkit_torch import mnist as main_job
    from aggkit_torch.flower.strategy import AggkitStrategy
    from aggkit_torch.local_training import configure_threads
    from aggkit_torch.models import MnistCNN

    args = mnist_args(run_config)
    settings = {key: run_config.get(key, RUN_CONFIG[key]) for key in RUN_CONFIG}
    if args.threads is not None:
        configure_threads(args.threads)
    torch.manual_seed(args.seed)
    model = MnistCNN()
    strategy = (strategy_class or AggkitStrategy)(
        main_job.make_aggregator(args.aggregator, args),
        fedavg_config(args),
        min_available_nodes=args.clients,
        fraction_evaluate=float(settings["fraction-evaluate"]),
        min_evaluate_nodes=1,
    )
    evaluator = _CentralEvaluation(args, model, strategy, enabled=bool(settings["server-eval"]))
    result = strategy.start(
        grid,
        ArrayRecord(model.state_dict()),
        num_rounds=args.rounds,
        timeout=float(settings["round-timeout"]),
        evaluate_fn=evaluator,
    )
    summary: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "history": strategy.history,
        "train_metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate_metrics": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
    }
    accuracy = strategy.history[-1].get("test_accuracy") if strategy.history else None
    if accuracy is not None:
        summary["test_accuracy"] = accuracy
    if settings["out"]:
        out = Path(str(settings["out"]))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=1))
        arrays = {key: array.numpy() for key, array in result.arrays.items()}
        np.savez(out / "model.npz", **arrays)
        log(INFO, "metrics: %s, model: %s", out / "metrics.json", out / "model.npz")
    if accuracy is not None:
        log(INFO, "test accuracy: %.4f", accuracy)
    return summary


class _CentralEvaluation:
    """Flower's ``evaluate_fn``: test accuracy every ``eval-every`` rounds and after the last;
    logs each round's line as the main job does."""

    def __init__(self, args: Any, model: Any, strategy: Any, *, enabled: bool = True):
        self.args, self.model, self.strategy = args, model, strategy
        self.test_set: Any = None
        self.available = enabled

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        from aggkit_torch.federated import format_round

        if server_round == 0:
            return None
        history = self.strategy.history
        metrics = history[-1] if history and history[-1]["round"] == server_round else None
        result = None
        due = server_round % self.args.eval_every == 0 or server_round == self.args.rounds
        if due and self._load():
            from aggkit_torch.local_training import evaluate

            self.model.load_state_dict(arrays.to_torch_state_dict())
            accuracy, loss = evaluate(self.model, *self.test_set)
            result = MetricRecord({"test_accuracy": accuracy, "test_loss": loss})
            if metrics is not None:
                metrics.update(test_accuracy=accuracy, test_loss=loss)
        if metrics is not None:
            log(INFO, "%s", format_round(metrics))
        return result

    def _load(self) -> bool:
        if self.test_set is None and self.available:
            from aggkit_torch.data import load_mnist

            try:
                mnist = load_mnist(self.args.data)
            except FileNotFoundError as error:
                log(WARNING, "no MNIST on the server, so no test accuracy: %s", error)
                self.available = False
                return False
            self.test_set = (mnist.test_images, mnist.test_labels)
        return self.available
