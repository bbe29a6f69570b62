"""A real Flower federation on loopback: one SuperLink and N SuperNodes as subprocesses.

Used by ``test_real_runs.py``; ``docs/flower.md`` gives the same commands. Every
process it starts (and every process those start) is stopped by pid when the context exits,
and nothing waits longer than its timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CONNECTION = "aggkit-loopback"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _stat(pid: int) -> tuple[int, str, int] | None:
    """``(ppid, state, start time)`` of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` as ``(pid, start time)`` (read from /proc)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _running(process: tuple[int, int]) -> bool:
    """The process is still the one recorded (same start time) and not a zombie."""
    stat = _stat(process[0])
    return stat is not None and stat[2] == process[1] and stat[1] != "Z"


class Federation:
    """``with Federation(tmp, num_nodes) as f: f.run(app_dir, run_config)``.

    Parameters
    ----------
    home : Path
        A fresh directory: Flower's home (``FLWR_HOME``: the CLI's config, installed apps) and
        the processes' logs.
    num_nodes : int
        SuperNodes, started with ``--node-config 'partition-id=<i> num-partitions=<n>'``.
    simulation : bool
        Start the SuperLink with ``--simulation`` and no SuperNodes: the run's ``num_nodes``
        virtual SuperNodes live in Flower's simulation engine (Ray), ``cpus_per_client`` each.
    node_config : mapping of int to str, optional
        More node config for SuperNode ``i`` (``'key="value" ...'``).
    """

    def __init__(
        self,
        home: Path,
        num_nodes: int,
        *,
        simulation: bool = False,
        cpus_per_client: int = 1,
        node_config: dict[int, str] | None = None,
    ):
        self.home = Path(home)
        self.num_nodes = num_nodes
        self.simulation = simulation
        self.cpus_per_client = cpus_per_client
        self.node_config = dict(node_config or {})
        self.env = {
            **os.environ,
            # SuperLink and SuperNodes start flower-superexec, flwr-serverapp and
            # flwr-clientapp by name: the environment's bin directory goes first on PATH.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.port, *self.node_ports = free_ports(num_nodes + 1)

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.home / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.home
            )
        self.processes.append(process)
        return process

    def __enter__(self) -> Federation:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        try:
            self._start(
                "superlink",
                [
                    str(BIN / "flower-superlink"),
                    "--insecure",
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    "--disable-runtime-dependency-installation",
                    *(["--simulation"] if self.simulation else []),
                ],
            )
            self.wait_for_port(self.port, timeout=60)
            for i, port in enumerate([] if self.simulation else self.node_ports):
                self._start(
                    f"supernode{i}",
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        f"--superlink=127.0.0.1:{self.port}",
                        f"--port={port}",
                        f"--node-config=partition-id={i} num-partitions={self.num_nodes} "
                        + self.node_config.get(i, ""),
                    ],
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited:\n{self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")

    def run(self, app: Path, run_config: str, timeout: float) -> subprocess.CompletedProcess:
        """``flwr run <app> <connection> --run-config ... --stream``, bounded in time."""
        argv = [str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", run_config]
        if self.simulation:
            argv += [
                "--federation-config",
                f"num_supernodes={self.num_nodes} client_resources_num_cpus={self.cpus_per_client}",
            ]
        return subprocess.run(
            [*argv, "--stream"],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def tail(self, lines: int = 15) -> str:
        parts = []
        for log in self.logs:
            if log.exists():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"== {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every started process and its descendants (by pid), within ``grace`` seconds.

        SuperLink and SuperNodes get SIGTERM; their SuperExec and ClientApp subprocesses, which
        watch their parent's pid, exit with them; whatever is left at the deadline gets SIGKILL.
        """
        family = [d for p in self.processes if p.poll() is None for d in _descendants(p.pid)]
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        while any(_running(d) for d in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        for descendant in family:
            if _running(descendant):
                os.kill(descendant[0], signal.SIGKILL)
        self.processes.clear()
