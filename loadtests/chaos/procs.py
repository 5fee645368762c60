"""Real processes on loopback for chaos scenarios and the soak: start, wait, kill, stop.

Every child is started exactly as a user would start it (`python -m gateway ...`), in
its own session with a parent-death signal (a runner killed with SIGKILL leaves nothing
listening), with its output in a log file under the run's folder (a pipe nobody reads
would block a chatty child mid-run). Waits are bounded and async, so a scenario keeps
its load running while a process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

REPO = Path(__file__).resolve().parents[2]
LISTEN_GW = re.compile(r"switchyard listening on (http://\S+) admin (http://\S+)")
LISTEN_SIM = re.compile(r"switchyard-sim \S+ listening on (http://\S+)")
START_TIMEOUT = 60.0  # generous: the machines these run on are small and shared
_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process did not come up; the message carries the end of its log."""


def free_port() -> int:
    """A port that was free a moment ago (for a process that must come back on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # preexec_fn: runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    """One started process and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    admin: str = ""
    policy_dir: Path | None = None  # a gateway's policy folder

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def backend(self) -> str:
        """`host:port`, as the gateway's metrics label the endpoint."""
        return self.url.removeprefix("http://")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self, last: int = 100_000) -> str:
        try:
            return self.log.read_text(errors="replace")[-last:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the whole session: no drain, no goodbye (a crashed backend)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if it is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.popen.poll()

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        else:  # the leader is gone; its session may still hold a child (mlflow's uvicorn)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)


class Launcher:
    """Owns a temp folder and every process started in it; `with` cleans up both."""

    def __init__(self, keep: bool = False, prefix: str = "switchyard-chaos-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
        self.keep = keep
        self.children: list[Child] = []
        self._names: dict[str, int] = {}

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child, newest first (gateways before the backends they use)."""
        while self.children:
            self.children.pop().stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def folder(self, name: str) -> Path:
        """A fresh sub-folder of the run's folder."""
        path = self.root / self._unique(name)
        path.mkdir(parents=True)
        return path

    def _unique(self, name: str) -> str:
        n = self._names.get(name, 0)
        self._names[name] = n + 1
        return name if n == 0 else f"{name}-{n}"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        """Start `args` with the log in the run's folder; tracked for `close`."""
        log = self.root / f"{self._unique(name)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def forget(self, child: Child) -> None:
        """Stop tracking a child that was stopped on purpose."""
        if child in self.children:
            self.children.remove(child)

    async def simulator(
        self, name: str, *options: str, kind: str = "openai", port: int = 0
    ) -> Child:
        """A backend simulator (`switchyard simulate KIND`), once it listens."""
        args = [sys.executable, "-m", "gateway", "simulate", kind, "--port", str(port)]
        child = self.spawn(name, [*args, "--name", name, *options])
        child.url = (await wait_line(child, LISTEN_SIM)).group(1)
        return child

    async def gateway(
        self,
        policies: dict[str, str],
        *options: str,
        env: dict[str, str] | None = None,
        name: str = "gateway",
        files: dict[str, str] | None = None,
    ) -> Child:
        """A gateway serving `policies` (file name -> YAML) from a folder of its own;
        `files` are written next to them (reference data a policy names)."""
        folder = self.folder(f"{name}-policies")
        for file, text in {**(files or {}), **policies}.items():
            (folder / file).write_text(text)
        args = [sys.executable, "-m", "gateway", "serve", "--policies", str(folder)]
        args += ["--port", "0", "--admin-port", "0", "--watch-interval", "0"]
        # No gRPC listener unless asked (`--grpc-port 0` in options wins, being later):
        # its default port would clash between gateways running side by side.
        args += ["--grpc-port", "-1", *options]
        child = self.spawn(name, args, env)
        child.policy_dir = folder
        match = await wait_line(child, LISTEN_GW)
        child.url, child.admin = match.group(1), match.group(2)
        return child


async def wait_line(child: Child, pattern: re.Pattern[str]) -> re.Match[str]:
    """Wait (bounded) for the child to print a line matching `pattern`."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(child.log_text())
        if match:
            return match
        if not child.alive():
            break
        await asyncio.sleep(0.05)
    raise StartError(
        f"{child.name} did not start (exit status {child.popen.poll()}); "
        f"its output:\n{child.log_text(3000)}"
    )


async def metric(client: httpx.AsyncClient, admin: str, name: str, **labels: str) -> float:
    """Sum of a gateway metric's samples whose labels include `labels`."""
    text = (await client.get(f"{admin}/metrics", timeout=10)).text
    return metric_value(text, name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in a Prometheus text exposition matching `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
