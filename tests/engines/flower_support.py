"""A real SuperLink and SuperNodes on 127.0.0.1 for the Flower tests, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedit.engines.flower_launch import (
    flower_env,
    superlink_command,
    supernode_command,
    wait_for_port,
)
from fedit.engines.site_worker import SITE_WORKER_KEY, start_worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Federation:
    """One SuperLink and one SuperNode per node config, each with its own log file.

    Use as a context manager: every process it started is terminated (then killed) on exit.
    """

    def __init__(self, root: Path, certificates: Path | None = None, auth: bool = False):
        self.root = root
        self.home = root / "flwr-home"
        self.env = flower_env(self.home)
        self.env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
        self.certificates = certificates
        self.auth = auth
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.worker_folders: list[Path] = []

    def _start(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its children die with it
        )
        self.processes.append(process)
        return process

    def __enter__(self) -> Federation:
        insecure = self.certificates is None
        command = superlink_command(self.address, self.certificates, insecure, self.auth)
        self._start(command, "superlink")
        wait_for_port(self.port)
        return self

    def add_node(
        self, node_config: dict[str, Any], auth_key: Path | None = None, worker: bool = False
    ) -> None:
        """A SuperNode; with ``worker``, a site worker beside it, as ``fedit flower supernode``
        starts one."""
        ca = self.certificates / "ca.crt" if self.certificates else None
        if worker:
            process, folder = start_worker(self.env, self.root / f"worker{len(self.nodes)}.log")
            self.processes.append(process)
            self.worker_folders.append(folder)
            node_config = {**node_config, SITE_WORKER_KEY: str(folder)}
        command = supernode_command(
            self.address, node_config, free_port(), ca, ca is None, auth_key=auth_key
        )
        self.nodes.append(self._start(command, f"supernode{len(self.nodes)}"))

    def run(self, *items: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``fedit flower run ITEMS`` against this SuperLink (blocks until the run ends)."""
        security = (
            [f"flower.root_certificates={self.certificates / 'ca.crt'}"]
            if self.certificates
            else ["flower.insecure=true"]
        )
        command = [sys.executable, "-m", "fedit.cli.main", "flower", "run", *items]
        command += [f"flower.superlink={self.address}", *security]
        return subprocess.run(
            command, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def start_run(self, *items: str) -> subprocess.Popen[str]:
        """As ``run``, in the background."""
        security = (
            [f"flower.root_certificates={self.certificates / 'ca.crt'}"]
            if self.certificates
            else ["flower.insecure=true"]
        )
        command = [sys.executable, "-m", "fedit.cli.main", "flower", "run", *items]
        command += [f"flower.superlink={self.address}", *security]
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)  # type: ignore[arg-type]
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.root.glob("*.log"))

    def kill_node(self, index: int) -> None:
        """SIGKILL one SuperNode and the ClientApp it may be running."""
        _signal_group(self.nodes[index], signal.SIGKILL)
        self.nodes[index].wait()

    def restart_node(self, index: int, node_config: dict[str, Any]) -> None:
        """Start SuperNode ``index`` again (after ``kill_node``), logging to a new file: the
        same site, which the SuperLink registers as a new node."""
        ca = self.certificates / "ca.crt" if self.certificates else None
        command = supernode_command(self.address, node_config, free_port(), ca, ca is None)
        self.nodes[index] = self._start(command, f"supernode{index}-restarted")

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            _signal_group(process, signal.SIGKILL)  # stragglers in the group
            process.wait()
        for folder in self.worker_folders:
            shutil.rmtree(folder, ignore_errors=True)


def _signal_group(process: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the group that start_new_session made for it
