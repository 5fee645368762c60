"""A real MLflow tracking server on SQLite for the registry tests, started once.

The server is the one the quick start runs (`gateway.quickstart.mlflow_server.LocalMlflow`), on a
free port under a temporary folder, with webhooks allowed to reach loopback over plain
HTTP (MLflow's defaults demand https and a public address). Models get unique names
per test, so tests share the server without seeing each other's aliases.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gateway.quickstart.mlflow_server import LocalMlflow

WEBHOOK_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    # MLflow caches who subscribes to an event for 60 s; a test adds webhooks at once.
    "MLFLOW_WEBHOOK_CACHE_TTL": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_mlflow(state: Path, **env: str) -> LocalMlflow:
    """Start a server and wait (bounded) until it answers; stopped by the caller."""
    server = LocalMlflow(state, port=free_port(), env={**WEBHOOK_ENV, **env})
    server.start()
    try:
        server.wait_ready(timeout=120)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflow]:
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_client(mlflow_server: LocalMlflow) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)


@dataclass
class Registered:
    """A registered model made for one test: its name and versions (1-based)."""

    name: str
    versions: list[str]


_names = itertools.count(1)


@pytest.fixture
def register(
    mlflow_client: MlflowClient, request: pytest.FixtureRequest
) -> Callable[..., Registered]:
    """Register a model whose versions have the given tags; aliases as {alias: index}."""

    def make(*version_tags: dict[str, str], aliases: dict[str, int] | None = None) -> Registered:
        name = f"{request.node.name[:40].replace('[', '-').strip(']')}-{next(_names)}"
        mlflow_client.create_registered_model(name)
        versions = []
        for i, tags in enumerate(version_tags, start=1):
            # No run: a version registered straight from an artifact URI.
            mv = mlflow_client.create_model_version(
                name, source=f"s3://bucket/{name}/{i}", tags=tags
            )
            versions.append(str(mv.version))
        for alias, index in (aliases or {}).items():
            mlflow_client.set_registered_model_alias(name, alias, versions[index - 1])
        return Registered(name, versions)

    return make


def serving_tags(url: str, protocol: str = "openai") -> dict[str, str]:
    return {"switchyard.endpoint": url, "switchyard.protocol": protocol}
