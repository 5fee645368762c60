"""A local MLflow tracking server for the quick start: start, wait, seed, stop.

The server is a child process on SQLite under a state folder (`.state/mlflow/`), so its
registered models, versions and aliases survive restarts: a promotion made in one demo
session is still in force in the next. Seeding is idempotent for the same reason: it
creates what is missing and never moves an alias that already exists.

This runs in the demo's own process, never in the gateway's data plane.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from gateway.controlplane.registry.binding import ENDPOINT_TAG, PROTOCOL_TAG
from gateway.controlplane.registry.client import MlflowRegistry, RegistryNotFound


@dataclass(frozen=True)
class SeedVersion:
    """A demo model version: where its artifacts are, who serves it, its lineage."""

    source: str
    endpoint: str
    aliases: tuple[str, ...]
    lineage: Mapping[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Serving tags for the gateway plus the lineage tags."""
        return {ENDPOINT_TAG: self.endpoint, PROTOCOL_TAG: "openai", **self.lineage}


@dataclass(frozen=True)
class SeedModel:
    """A demo registered model and its versions, oldest first."""

    name: str
    description: str
    versions: tuple[SeedVersion, ...]


def _lineage(run: str, dataset: str, commit: str) -> dict[str, str]:
    return {"training_run_id": run, "training_dataset": dataset, "git_commit_sha": commit}


DEMO_MODELS = (
    SeedModel(
        "chat",
        "Chat model behind the quick start's `chat` route.",
        (
            SeedVersion(
                "s3://switchyard-demo/models/chat/1",
                "http://127.0.0.1:9101",
                ("champion",),
                _lineage(
                    "demo-run-chat-1", "s3://switchyard-demo/data/chat/2026-10.parquet", "3f2c1a7"
                ),
            ),
            SeedVersion(
                "s3://switchyard-demo/models/chat/2",
                "http://127.0.0.1:9102",
                ("challenger",),
                _lineage(
                    "demo-run-chat-2", "s3://switchyard-demo/data/chat/2026-11.parquet", "9b41e0d"
                ),
            ),
        ),
    ),
    SeedModel(
        "embed",
        "Embedding model behind the quick start's `embed` route.",
        (
            SeedVersion(
                "s3://switchyard-demo/models/embed/1",
                "http://127.0.0.1:9101",
                ("champion",),
                _lineage(
                    "demo-run-embed-1", "s3://switchyard-demo/data/embed/2026-09.parquet", "3f2c1a7"
                ),
            ),
        ),
    ),
)


class LocalMlflow:
    """One `mlflow server` child process on SQLite under `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 5000,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.host = host
        self.port = port
        self.uri = f"http://{host}:{port}"
        self._env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's own output goes."""
        return self.state_dir / "server.log"

    def start(self) -> None:
        """Start the server in the background; raises SystemExit with advice if it can't."""
        if importlib.util.find_spec("mlflow") is None:
            raise SystemExit(
                "MLflow is not installed: pip install -e '.[registry]' (make run does), "
                "or run the demo without a registry: switchyard demo --no-registry"
            )
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise SystemExit(
                    f"port {self.port} is in use; pass --registry-port, or --registry-uri to "
                    "use an MLflow server that is already running"
                )
        artifacts = self.state_dir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a", encoding="utf-8")
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
            "--default-artifact-root", str(artifacts),
            "--host", self.host, "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self._env}
        # Its own process group: `mlflow server` starts a uvicorn child of its own, and
        # stop() must end both.
        self._proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0, out: TextIO = sys.stdout) -> None:
        """Poll `/health` until the server answers, printing a dot per second."""
        deadline = time.monotonic() + timeout
        next_dot = time.monotonic() + 1.0
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    out.write("\n")
                    raise SystemExit(f"MLflow server exited; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.uri}/health").status_code == 200:
                        out.write(" ready\n")
                        out.flush()
                        return
                if time.monotonic() >= next_dot:
                    out.write(".")
                    out.flush()
                    next_dot += 1.0
                time.sleep(0.25)
        out.write("\n")
        raise SystemExit(f"MLflow server not ready after {timeout:.0f}s; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (`sig`, then SIGKILL after 10 s)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


async def seed(registry: MlflowRegistry, models: tuple[SeedModel, ...]) -> list[str]:
    """Create the demo models, versions and aliases that are missing.

    Existing aliases are left where they are, so promotions survive demo restarts.
    Returns lines like `chat@champion -> 1` describing the aliases now in force.
    """
    lines: list[str] = []
    for model in models:
        try:
            current = await registry.get_model(model.name)
        except RegistryNotFound:
            current = await registry.create_model(model.name, model.description)
        by_source = {v.source: v for v in await registry.list_versions(model.name)}
        aliases = dict(current.aliases)
        for wanted in model.versions:
            version = by_source.get(wanted.source)
            if version is None:
                version = await registry.create_version(
                    model.name, wanted.source, tags=wanted.tags()
                )
            for alias in wanted.aliases:
                if alias not in aliases:
                    await registry.set_alias(model.name, alias, version.version)
                    aliases[alias] = version.version
        lines.extend(f"{model.name}@{a} -> version {v}" for a, v in sorted(aliases.items()))
    return lines
