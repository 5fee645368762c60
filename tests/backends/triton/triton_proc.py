"""A real Triton server (pytriton's tritonserver, CPU) as a child process of the tests.

Triton lives in its own environment (.venv-triton, made by install.sh) because
nvidia-pytriton pins numpy<2; this module runs in the gateway's environment and only
starts triton_server.py with that environment's interpreter. Nothing is downloaded: the
models are the tiny logistic ones in fraud_model.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from tests.backends import proc
from tests.backends.proc import BackendServer, child_env, free_port
from tests.backends.triton.fraud_model import CHALLENGER, CHAMPION, STREAM

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VENV = Path(os.environ.get("SWITCHYARD_TRITON_VENV", str(REPO / ".venv-triton")))
PYTHON = VENV / "bin" / "python"
MODELS = (CHAMPION, CHALLENGER, STREAM)
# Model readiness takes ~8 s on 2 idle cores; the bound leaves room for a loaded CI
# machine and still ends a hung start long before the test timeout.
START_TIMEOUT_S = 90.0


def environment_problem() -> str | None:
    """Why the Triton environment cannot be used, or None when install.sh completed it."""
    return proc.environment_problem(VENV, PYTHON, "Triton", "triton")


@dataclass
class TritonServer(BackendServer):
    """triton_server.py on 127.0.0.1: fraud-champion, fraud-challenger and fraud-stream.

    pytriton starts tritonserver, which starts one Python backend stub per model
    instance; the process group (BackendServer) takes them all down. Its workspace and
    PYTRITON_HOME live under `work`, so nothing is left in ~/.cache/pytriton whatever
    way it ends.
    """

    name: ClassVar[str] = "Triton"
    start_timeout_s: ClassVar[float] = START_TIMEOUT_S

    work: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.work / "triton.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_hostport(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_hostport(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def env(self) -> dict[str, str]:
        return child_env(PYTRITON_HOME=str(self.work / "pytriton-home"))

    def command(self) -> list[str]:
        return [
            str(PYTHON),
            str(HERE / "triton_server.py"),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--workspace",
            str(self.work / "workspace"),
        ]

    def waiting_for(self, client: httpx.Client) -> str | None:
        pending = [
            name
            for name in MODELS
            if client.get(f"{self.url}/v2/models/{name}/ready").status_code != 200
        ]
        return f"models {pending} to be ready" if pending else None

    def cleanup(self) -> None:
        # A SIGKILLed pytriton cannot clean up: its workspace (model store, sockets and a
        # copy of tritonserver) would stay behind.
        for leftover in (self.work / "workspace", self.work / "pytriton-home"):
            shutil.rmtree(leftover, ignore_errors=True)


def canary_policy(triton: TritonServer, route: str, extra: str = "") -> str:
    """The fraud detector's 90/10 canary on `triton` (champion and challenger models,
    sticky by x-user-id, fallback to the champion); `extra` adds top-level YAML."""
    endpoint = f"http://127.0.0.1:{triton.http_port}"
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
protocol: kserve-v2
variants:
  - name: champion
    weight: 90
    endpoints: [{endpoint}]
    model: {CHAMPION}
    grpc_port: {triton.grpc_port}
  - name: challenger
    weight: 10
    endpoints: [{endpoint}]
    model: {CHALLENGER}
    grpc_port: {triton.grpc_port}
sticky: {{hash_on: "header:x-user-id"}}
fallback: [champion]
{extra}"""
