"""A real Triton server (pytriton's tritonserver, CPU) as a child process of the tests.

Triton lives in its own environment (.venv-triton, made by install.sh) because
nvidia-pytriton pins numpy<2; this module runs in the gateway's environment and only
starts triton_server.py with that environment's interpreter. Nothing is downloaded: the
models are the tiny logistic ones in fraud_model.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.backends.triton.fraud_model import CHALLENGER, CHAMPION, STREAM

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = Path(os.environ.get("SWITCHYARD_TRITON_VENV", str(REPO / ".venv-triton")))
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed-stamp"
MODELS = (CHAMPION, CHALLENGER, STREAM)
# Model readiness takes ~8 s on 2 idle cores; the bound leaves room for a loaded CI
# machine and still ends a hung start long before the test timeout.
START_TIMEOUT_S = 90.0


def environment_problem() -> str | None:
    """Why the Triton environment cannot be used, or None when install.sh completed it."""
    if not STAMP.is_file() or not PYTHON.exists():
        return (
            f"the Triton environment {VENV} is missing or incomplete: "
            "run `make triton-env` (bash tests/backends/triton/install.sh)"
        )
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class TritonServer:
    """triton_server.py on 127.0.0.1: fraud-champion, fraud-challenger and fraud-stream.

    The server runs in its own process group: pytriton starts tritonserver, which starts
    one Python backend stub per model instance, and a kill that reached only the script
    would leave them running. Its workspace and PYTRITON_HOME live under `work`, so
    nothing is left in ~/.cache/pytriton whatever way it ends.
    """

    work: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # seconds the last start took, for the stage's report

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_hostport(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_hostport(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.work / "triton.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
        env.update(PYTRITON_HOME=str(self.work / "pytriton-home"), PYTHONUNBUFFERED="1")
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait (bounded) until every model answers ready."""
        begun = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        command = [
            str(PYTHON),
            str(HERE / "triton_server.py"),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--workspace",
            str(self.work / "workspace"),
        ]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                command,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(begun + timeout)
        except BaseException:
            self.kill()
            raise
        self.started_s = time.monotonic() - begun

    def _wait_ready(self, deadline: float) -> None:
        pending = list(MODELS)
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"Triton exited during start-up:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):  # not listening yet
                    pending = [
                        name
                        for name in pending
                        if client.get(f"{self.url}/v2/models/{name}/ready").status_code != 200
                    ]
                if not pending:
                    return
                time.sleep(0.5)
        raise RuntimeError(
            f"Triton models {pending} not ready within the bound:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ensure_running(self) -> None:
        """Restart the server if a test killed it (keeps test order free)."""
        if not self.alive():
            self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would, and drop its files."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self._clean()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (pytriton stops tritonserver, cleans its workspace), then SIGKILL the rest."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()

    def _clean(self) -> None:
        # A SIGKILLed pytriton cannot clean up: its workspace (model store, sockets and a
        # copy of tritonserver) would stay behind.
        for leftover in (self.work / "workspace", self.work / "pytriton-home"):
            shutil.rmtree(leftover, ignore_errors=True)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
