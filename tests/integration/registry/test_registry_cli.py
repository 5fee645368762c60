"""`switchyard registry promote / rollback / describe` against a real MLflow server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

from mlflow import MlflowClient

from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.quickstart.mlflow_server import LocalMlflow, SeedModel, SeedVersion, seed
from tests.integration.registry.conftest import Registered, serving_tags
from tests.procs import REPO


def switchyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_without_a_run_registers_and_resolves(
    mlflow_server: LocalMlflow, mlflow_client: MlflowClient
) -> None:
    mlflow_client.create_registered_model("no-run")
    version = mlflow_client.create_model_version("no-run", source="s3://bucket/x")
    assert (version.version, version.run_id or "") == ("1", "")

    async def read() -> str:
        async with MlflowRegistry(RegistryConfig(mlflow_server.uri)) as registry:
            found = await registry.get_version("no-run", "1")
            return found.source

    assert asyncio.run(read()) == "s3://bucket/x"


def test_promote_then_rollback_moves_champion_and_records_the_previous_version(
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
) -> None:
    model = register(
        serving_tags("http://127.0.0.1:9101"),
        serving_tags("http://127.0.0.1:9102"),
        aliases={"champion": 1, "challenger": 2},
    )
    name, uri = model.name, ("--registry-uri", mlflow_server.uri)

    promoted = switchyard("registry", "promote", name, "challenger", *uri)
    assert promoted.returncode == 0, promoted.stderr
    assert f"{name}@champion: version 1 -> 2 (promoted from @challenger)" in promoted.stdout
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == "2"
    assert mlflow_client.get_registered_model(name).tags["switchyard.previous.champion"] == "1"

    again = switchyard("registry", "promote", name, "challenger", *uri)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    rolled = switchyard("registry", "rollback", name, *uri)
    assert rolled.returncode == 0, rolled.stderr
    assert f"{name}@champion: version 2 -> 1 (rolled back)" in rolled.stdout
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == "1"
    # The version rolled back from is the next rollback point (roll forward again).
    assert mlflow_client.get_registered_model(name).tags["switchyard.previous.champion"] == "2"

    missing = switchyard("registry", "promote", name, "nope", *uri)
    assert missing.returncode == 1
    assert "not found" in missing.stderr and "nope" in missing.stderr


def test_rollback_without_a_promotion_says_so(
    mlflow_server: LocalMlflow, register: Callable[..., Registered]
) -> None:
    model = register(serving_tags("http://127.0.0.1:9101"), aliases={"champion": 1})
    result = switchyard("registry", "rollback", model.name, "--registry-uri", mlflow_server.uri)
    assert result.returncode == 1
    assert "no tag switchyard.previous.champion" in result.stderr


def test_describe_prints_versions_aliases_and_lineage(
    mlflow_server: LocalMlflow, register: Callable[..., Registered]
) -> None:
    lineage = {
        "training_run_id": "run-42",
        "training_dataset": "s3://data/train.parquet",
        "git_commit_sha": "abc1234",
    }
    model = register(
        {**serving_tags("http://127.0.0.1:9101"), **lineage},
        serving_tags("http://127.0.0.1:9102"),
        aliases={"champion": 1, "challenger": 2},
    )
    text = switchyard("registry", "describe", model.name, "--registry-uri", mlflow_server.uri)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "aliases:     @challenger -> 2, @champion -> 1" in out
    assert "version 1  @champion  READY" in out and "version 2  @challenger  READY" in out
    for line in (
        "training run: run-42",
        "dataset:      s3://data/train.parquet",
        "git commit:   abc1234",
        "serving:      http://127.0.0.1:9101 (openai)",
        f"source:       s3://bucket/{model.name}/1",
    ):
        assert line in out, out
    raw = switchyard(
        "registry", "describe", model.name, "--json", "--registry-uri", mlflow_server.uri
    )
    data = json.loads(raw.stdout)
    assert data["aliases"] == {"champion": "1", "challenger": "2"}
    assert [v["version"] for v in data["versions"]] == ["2", "1"]
    assert data["versions"][1]["lineage"]["git_commit_sha"] == "abc1234"


def test_demo_seed_is_idempotent_and_keeps_moved_aliases(
    mlflow_server: LocalMlflow, mlflow_client: MlflowClient
) -> None:
    models = (
        SeedModel(
            "seeded",
            "demo",
            (
                SeedVersion("s3://demo/seeded/1", "http://127.0.0.1:9101", ("champion",)),
                SeedVersion("s3://demo/seeded/2", "http://127.0.0.1:9102", ("challenger",)),
            ),
        ),
    )

    async def run() -> list[str]:
        async with MlflowRegistry(RegistryConfig(mlflow_server.uri)) as registry:
            return await seed(registry, models)

    assert asyncio.run(run()) == ["seeded@challenger -> version 2", "seeded@champion -> version 1"]
    mlflow_client.set_registered_model_alias("seeded", "champion", "2")  # a promotion
    assert asyncio.run(run()) == ["seeded@challenger -> version 2", "seeded@champion -> version 2"]
    versions = mlflow_client.search_model_versions("name='seeded'")
    assert sorted(v.version for v in versions) == ["1", "2"]
