"""A real BentoML service (`bentoml serve`) as a child process of the tests.

BentoML lives in its own environment (.venv-bentoml, made by install.sh) because its
pins clash with the gateway's; this module runs in the gateway's environment and only
starts `bentoml serve` from that one, around fraud_service.py. Nothing is downloaded:
the classifier is trained at start-up on synthetic data, and usage tracking is off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = Path(os.environ.get("SWITCHYARD_BENTOML_VENV", str(REPO / ".venv-bentoml")))
BENTOML = VENV / "bin" / "bentoml"
STAMP = VENV / ".installed-stamp"
# /readyz answers in ~5 s on 2 idle cores (import, train, start one worker); the bound
# leaves room for a loaded CI machine.
START_TIMEOUT_S = 60.0


def environment_problem() -> str | None:
    """Why the BentoML environment cannot be used, or None when install.sh completed it."""
    if not STAMP.is_file() or not BENTOML.exists():
        return (
            f"the BentoML environment {VENV} is missing or incomplete: "
            "run `make bentoml-env` (bash tests/backends/bentoml/install.sh)"
        )
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BentoService:
    """`bentoml serve fraud_service:FraudDetectionService` on 127.0.0.1, one model version.

    `version` is what /classify answers name (FRAUD_VERSION); `seed` picks the training
    set, so two services with different seeds are two model versions. `variant` names
    its log file. Its own process group: `bentoml serve` supervises a worker process
    that a kill of the parent alone would leave running.
    """

    variant: str
    version: str
    seed: int
    work: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0  # seconds the last start took, for the stage's report

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work / f"bentoml-{self.variant}.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
        env.update(
            BENTOML_DO_NOT_TRACK="true",  # BentoML otherwise reports usage over the internet
            BENTOML_HOME=str(self.work / "bentoml-home"),  # not ~/bentoml
            FRAUD_VERSION=self.version,
            FRAUD_SEED=str(self.seed),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the service and wait (bounded) until `/readyz` answers 200."""
        begun = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        command = [
            str(BENTOML),
            "serve",
            "fraud_service:FraudDetectionService",
            "--working-dir",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
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
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"bentoml serve exited during start-up:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.25)
        raise RuntimeError(f"BentoML was not ready within the bound:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ensure_running(self) -> None:
        """Restart the service if a test killed it (keeps test order free)."""
        if not self.alive():
            self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (BentoML drains and stops its worker), then SIGKILL whatever is left."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
