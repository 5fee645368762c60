"""A real BentoML service (`bentoml serve`) as a child process of the tests.

BentoML lives in its own environment (.venv-bentoml, made by install.sh) because its
pins clash with the gateway's; this module runs in the gateway's environment and only
starts `bentoml serve` from that one, around fraud_service.py. Nothing is downloaded:
the classifier is trained at start-up on synthetic data, and usage tracking is off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from tests.backends import proc
from tests.backends.proc import BackendServer, child_env, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = Path(os.environ.get("SWITCHYARD_BENTOML_VENV", str(REPO / ".venv-bentoml")))
BENTOML = VENV / "bin" / "bentoml"
# /readyz answers in ~5 s on 2 idle cores (import, train, start one worker); the bound
# leaves room for a loaded CI machine.
START_TIMEOUT_S = 60.0


def environment_problem() -> str | None:
    """Why the BentoML environment cannot be used, or None when install.sh completed it."""
    return proc.environment_problem(VENV, BENTOML, "BentoML", "bentoml")


@dataclass
class BentoService(BackendServer):
    """`bentoml serve fraud_service:FraudDetectionService` on 127.0.0.1, one model version.

    `version` is what /classify answers name (FRAUD_VERSION); `seed` picks the training
    set, so two services with different seeds are two model versions. `variant` names
    its log file. `bentoml serve` supervises a worker process; the process group
    (BackendServer) takes it down with the parent.
    """

    name: ClassVar[str] = "BentoML"
    start_timeout_s: ClassVar[float] = START_TIMEOUT_S
    stop_timeout_s: ClassVar[float] = 20.0  # SIGTERM: BentoML drains and stops its worker
    poll_s: ClassVar[float] = 0.25

    variant: str
    version: str
    seed: int
    work: Path
    port: int = field(default_factory=free_port)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.work / f"bentoml-{self.variant}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return child_env(
            BENTOML_DO_NOT_TRACK="true",  # BentoML otherwise reports usage over the internet
            BENTOML_HOME=str(self.work / "bentoml-home"),  # not ~/bentoml
            FRAUD_VERSION=self.version,
            FRAUD_SEED=str(self.seed),
        )

    def command(self) -> list[str]:
        return [
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

    def waiting_for(self, client: httpx.Client) -> str | None:
        return None if client.get(f"{self.url}/readyz").status_code == 200 else "/readyz"
