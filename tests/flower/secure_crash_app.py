"""The secure ClientApp, plus a way to kill its SuperNode at a chosen protocol stage (tests only).

A node started with ``--node-config '... crash-at="<round>:<stage>"'`` answers as
:mod:`aggkit_torch.flower.secure_apps`'s ``client_app`` until the request of that stage of that
round reaches it; then it sends its SuperNode SIGTERM (the SuperNode leaves the federation, so
the SuperLink reports it unavailable) and exits without answering.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from aggkit.secure.messages import STAGES, decode
from aggkit_torch.flower import secure_apps

client_app = ClientApp()
client_app.query("partition")(secure_apps.plain.query_partition)
client_app.evaluate()(secure_apps.plain.evaluate)


def _supernode_pid() -> int | None:
    """The pid of the flower-supernode process this ClientApp runs under (from /proc)."""
    pid = os.getppid()
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"flower-supernode" in cmdline:
            return pid
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        pid = int(stat[1])
    return None


def _maybe_crash(context: Context, server_round: int, stage: str) -> None:
    spec = str(context.node_config.get("crash-at", ""))
    if not spec:
        return
    crash_round, crash_stage = spec.split(":")
    if (server_round, STAGES.index(stage)) >= (int(crash_round), STAGES.index(crash_stage)):
        pid = _supernode_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        os._exit(1)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    server_round = int(message.content.config_records["config"]["server-round"])
    context.state["crash"] = ConfigRecord({"round": server_round})
    _maybe_crash(context, server_round, STAGES[0])
    return secure_apps.train(message, context)


@client_app.query("secagg")
def secagg(message: Message, context: Context) -> Message:
    stage = decode(message.content.config_records["secagg"]["msg"]).STAGE
    _maybe_crash(context, int(context.state.config_records["crash"]["round"]), stage)
    return secure_apps.secagg(message, context)
