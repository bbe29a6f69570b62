"""The Flower apps of federated MNIST with secure aggregation (:mod:`aggkit_torch.flower.secure`).

- ``client_app``: the MNIST ClientApp (:mod:`aggkit_torch.flower.client_app`: partition query,
  training, evaluation) whose ``train`` reply carries no update: the node trains, computes the
  integer vectors its aggregator's secure channels carry (:func:`aggkit.secure.deployment.
  client_vector`) and answers the protocol's first request; ``query.secagg`` answers the next
  ones. Between messages the node's protocol state lives in its Flower context (a ClientApp
  may be a fresh process per message).
- ``server_app``: :func:`aggkit_torch.flower.server_app.run` with :class:`~aggkit_torch.flower.
  secure.SecureAggkitStrategy`.
- :func:`write_secure_app`: the app directory for ``flwr run``.

Configuration (run config unless said otherwise): ``secagg-mode`` (``"authenticated"``, the
default, or ``"honest-but-curious"``: chosen explicitly), ``secagg-registry`` (the identity
registry file, needed by the authenticated mode; a node config value overrides the run
config's), node config ``secagg-key`` (the node's identity file),
``secagg-graph`` (``"secagg+"`` or ``"secagg"``), ``secagg-degree`` and ``secagg-threshold``
(0: defaults), ``secagg-stage-timeout`` (seconds), ``secagg-min-nodes`` (nodes a round after
the first waits for). Use ``aggregator="secure"`` (``ak.secure_aggregator()``) or any other
fully secure aggregator.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from aggkit_torch.flower import require_flwr

require_flwr()

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from aggkit_torch.flower import client_app as plain  # noqa: E402
from aggkit_torch.flower.run_config import mnist_args  # noqa: E402

__all__ = ["SECURE_CONFIG", "answer_train", "client_app", "server_app", "write_secure_app"]

#: The secure apps' own run-config keys and their defaults.
SECURE_CONFIG: dict[str, str | int | float] = {
    "secagg-mode": "authenticated",
    "secagg-registry": "",
    "secagg-graph": "secagg+",
    "secagg-degree": 0,
    "secagg-threshold": 0,
    "secagg-stage-timeout": 600.0,
    "secagg-min-nodes": 4,
}

client_app = ClientApp()
client_app.query("partition")(plain.query_partition)
client_app.evaluate()(plain.evaluate)
server_app = ServerApp()


def _setting(context: Context, key: str) -> Any:
    """A node-config value, else the run config's, else the default."""
    if key in context.node_config:
        return context.node_config[key]
    return context.run_config.get(key, SECURE_CONFIG.get(key, ""))


@functools.lru_cache(maxsize=4)
def _registry(path: str) -> Any:
    from aggkit.secure.identity import IdentityRegistry

    return IdentityRegistry.load(path)


def _mode(mode: Any, registry: str) -> bool:
    """True for the authenticated mode (which needs a registry); the choice is explicit."""
    if mode == "honest-but-curious":
        return False
    if mode != "authenticated":
        raise ValueError(
            f"secagg-mode must be 'authenticated' or 'honest-but-curious', not {mode!r}"
        )
    if not registry:
        raise ValueError(
            "secagg-mode='authenticated' needs secagg-registry (the identity registry file); "
            "set secagg-mode='honest-but-curious' to run without identities"
        )
    return True


def _client_mode(context: Context) -> dict[str, Any]:
    """The protocol mode of this node's client: identity and registry, or honest-but-curious."""
    registry = str(_setting(context, "secagg-registry") or "")
    if not _mode(_setting(context, "secagg-mode"), registry):
        return {"honest_but_curious": True}
    from aggkit.secure.identity import SigningIdentity

    key = str(context.node_config.get("secagg-key", "") or "")
    if not key:
        raise ValueError(
            "the run uses identities (secagg-registry) but this SuperNode has no secagg-key "
            "in its node config"
        )
    return {"identity": SigningIdentity.load(key), "registry": _registry(registry)}


def _process(run_config: Any, template: dict[str, Any]) -> Any:
    """The run's aggregation process, for the model's structure."""
    import aggkit as ak
    from aggkit_torch import mnist as main_job

    args = mnist_args(run_config)
    layout = ak.Layout({k: ak.TensorSpec(a.shape, a.dtype) for k, a in template.items()})
    return main_job.make_aggregator(args.aggregator, args).create(layout)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Train (as the plain app does), pack the secure-channel vectors, start the protocol."""
    trained = plain.train(message, context)
    return answer_train(
        message,
        context,
        trained.content.array_records["arrays"],
        trained.content.metric_records["metrics"],
    )


def answer_train(message: Message, context: Context, trained: ArrayRecord, metrics: Any) -> Message:
    """The secure reply to a train message, given the node's trained arrays and metrics.

    Packs the integer vectors of the aggregator's secure channels for the update
    ``global - trained`` (kept in the node's context for the masked-input stage) and answers
    the protocol's first request. Any ClientApp that trains its own way can call it.
    """
    import numpy as np

    from aggkit.secure.deployment import client_vector, decode_state
    from aggkit.secure.messages import decode
    from aggkit.secure.protocol import SecAggClient

    config = message.content.config_records["config"]
    global_arrays = message.content.array_records["arrays"]
    template = {k: a.numpy() for k, a in global_arrays.items()}
    process = _process(context.run_config, template)
    layout = process.layout
    update = layout.flatten(template) - layout.flatten({k: a.numpy() for k, a in trained.items()})
    weight = 1.0 if config["secagg-weighting"] == "uniform" else float(metrics["num-examples"])
    if not np.isfinite(update).all():  # as AggkitStrategy does: zeros, weight 0
        update[:] = 0.0
        weight = 0.0
    state = decode_state(config["secagg-state"])
    vector, _ = client_vector(process, state, update, weight if process.is_weighted else None)
    partition, _ = plain.node_partition(context)
    client = SecAggClient(partition, **_client_mode(context))
    response = client.handle(decode(config["secagg"]))
    context.state["secagg"] = ConfigRecord({"client": client.to_state()})
    context.state["secagg-vector"] = ArrayRecord({"vector": Array(vector)})
    content = RecordDict({"secagg": ConfigRecord({"msg": response.to_bytes()}), "metrics": metrics})
    return Message(content, reply_to=message)


@client_app.query("secagg")
def secagg(message: Message, context: Context) -> Message:
    """Answer one protocol stage with the node's saved client."""
    from aggkit.secure.messages import MaskedInputRequest, decode
    from aggkit.secure.protocol import SecAggClient

    client = SecAggClient.from_state(
        context.state.config_records["secagg"]["client"], **_client_mode(context)
    )
    request = decode(message.content.config_records["secagg"]["msg"])
    value = None
    if isinstance(request, MaskedInputRequest):
        value = context.state.array_records["secagg-vector"]["vector"].numpy()
    response = client.handle(request, value)
    if value is not None:
        del context.state["secagg-vector"]  # masked and sent: the plain vector is not kept
    context.state["secagg"] = ConfigRecord({"client": client.to_state()})
    content = RecordDict({"secagg": ConfigRecord({"msg": response.to_bytes()})})
    return Message(content, reply_to=message)


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run federated MNIST with secure aggregation."""
    from aggkit_torch.flower.server_app import run

    run(grid, context.run_config, strategy_class=secure_strategy(context.run_config))


def secure_strategy(run_config: Any) -> Any:
    """:class:`SecureAggkitStrategy` configured from the run config (a strategy class)."""
    from aggkit_torch.flower.secure import SecureAggkitStrategy

    def get(key: str) -> Any:
        return run_config.get(key, SECURE_CONFIG[key])

    registry = str(get("secagg-registry") or "")
    mode: dict[str, Any] = (
        {"registry": _registry(registry)}
        if _mode(get("secagg-mode"), registry)
        else {"honest_but_curious": True}
    )
    return functools.partial(
        SecureAggkitStrategy,
        graph=str(get("secagg-graph")),
        degree=int(get("secagg-degree")) or None,
        threshold=int(get("secagg-threshold")) or None,
        stage_timeout=float(get("secagg-stage-timeout")),
        min_round_nodes=int(get("secagg-min-nodes")),
        **mode,
    )


def write_secure_app(directory: str | Any, **config: Any) -> Path:
    """:func:`~aggkit_torch.flower.app.write_app` for the secure apps (``secagg_*`` keys too).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     text = write_secure_app(d, rounds=2, secagg_threshold=3).read_text()
    >>> "secure_apps:client_app" in text, "secagg-threshold = 3" in text
    (True, True)
    """
    from aggkit_torch.flower.app import _toml_value, write_app

    secure = dict(SECURE_CONFIG)
    plain_config = {}
    for key, value in config.items():
        toml_key = key.replace("_", "-")
        if toml_key in secure:
            secure[toml_key] = value
        else:
            plain_config[key] = value
    path = write_app(directory, name="aggkit-flower-mnist-secure", **plain_config)
    text = path.read_text()
    text = text.replace("flower.server_app:app", "flower.secure_apps:server_app")
    text = text.replace("flower.client_app:app", "flower.secure_apps:client_app")
    text += "".join(f"{key} = {_toml_value(value)}\n" for key, value in secure.items())
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> Path:
    """``python -m aggkit_torch.flower.secure_apps DIR``: write the secure app directory."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m aggkit_torch.flower.secure_apps",
        description="Write a Flower app directory for federated MNIST with secure aggregation.",
    )
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    path = write_secure_app(args.directory, aggregator="secure")
    print(f"wrote {path}; run it with: flwr run {args.directory} <superlink> --stream")
    return path


if __name__ == "__main__":
    main()
