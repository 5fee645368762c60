"""A real backend server (vLLM, Triton, BentoML) as a child process of the tests.

Each backend lives in its own environment (.venv-vllm, .venv-triton, .venv-bentoml, made
by that stage's install.sh) because its pins clash with the gateway's; this module runs
in the gateway's environment and only starts processes from those. What the backends
share lives here: the process-group start, the bounded wait for readiness, the kill and
the stop, the log. A subclass says what to run, with which environment, and when it is
ready.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import ClassVar

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a child in another venv, plus `overrides`.

    VIRTUAL_ENV and PYTHONPATH point at the gateway's environment and would leak it into
    the backend's; unbuffered output keeps the log current when a start fails.
    """
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env.update(PYTHONUNBUFFERED="1", **overrides)
    return env


def environment_problem(venv: Path, program: Path, name: str, stage: str) -> str | None:
    """Why the environment `venv` cannot be used, or None when its install.sh completed it.

    `program` is what the tests run from it; `stage` is the stage's folder and the prefix
    of its make target (`make {stage}-env`).
    """
    if not (venv / ".installed-stamp").is_file() or not program.exists():
        return (
            f"the {name} environment {venv} is missing or incomplete: "
            f"run `make {stage}-env` (bash tests/backends/{stage}/install.sh)"
        )
    return None


class BackendServer:
    """One backend server in its own process group, logging to `log_path`.

    Its own group because every backend starts helpers (engine and worker processes,
    tritonserver and its stubs, a worker supervisor) that a kill reaching only the
    parent would leave running. Subclasses (dataclasses: the base has no fields of its
    own, so theirs keep their positions) set `name` and the timeouts, provide
    `log_path`, and implement `command` and `waiting_for`.
    """

    name: ClassVar[str] = "backend"
    start_timeout_s: ClassVar[float] = 60.0
    stop_timeout_s: ClassVar[float] = 30.0
    poll_s: ClassVar[float] = 0.5

    log_path: Path
    # Class-level defaults of immutable values; `start` sets them on the instance.
    popen: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # seconds the last start took, for the stage's report

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The server's environment (see `child_env`)."""
        return child_env()

    def waiting_for(self, client: httpx.Client) -> str | None:
        """What the server is not ready for yet, or None once it is ready.

        May raise httpx.TransportError while the server is not listening yet.
        """
        raise NotImplementedError

    def cleanup(self) -> None:
        """Drop what a killed server leaves behind (called after every kill)."""

    def start(self, timeout: float | None = None) -> None:
        """Start the server and wait (bounded) until `waiting_for` says it is ready."""
        begun = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(begun + (self.start_timeout_s if timeout is None else timeout))
        except BaseException:
            self.kill()
            raise
        self.started_s = time.monotonic() - begun

    def _wait_ready(self, deadline: float) -> None:
        waiting: str | None = "the server to listen"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
                try:
                    waiting = self.waiting_for(client)
                except httpx.TransportError:
                    waiting = "the server to listen"
                if waiting is None:
                    return
                time.sleep(self.poll_s)
        raise RuntimeError(
            f"{self.name} was not ready within the bound (waiting for {waiting}):\n"
            f"{self.log_tail()}"
        )

    def alive(self) -> bool:
        """Whether the server's own process is still running."""
        return self.popen is not None and self.popen.poll() is None

    def ensure_running(self) -> None:
        """Restart the server if a test killed it (keeps test order free)."""
        if not self.alive():
            self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or an OOM kill would."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.cleanup()

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (the server shuts its helpers down), then SIGKILL whatever is left."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(self.stop_timeout_s if timeout is None else timeout)
        self.kill()  # the group: children that outlived the server go too

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
