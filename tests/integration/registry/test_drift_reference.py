"""Drift reference data as an artifact of a registry model version (real MLflow).

How an ML engineer logs it (the README's recipe): the training run logs
`reference.parquet`, the version is registered with that run's id, and the policy says
`reference: models:/NAME@ALIAS`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from gateway.controlplane.policy.driftspec import DriftSpec
from gateway.controlplane.registry.client import RegistryConfig
from gateway.drift.refdata import REFERENCE_TAG, ReferenceError, load_reference
from gateway.quickstart.mlflow_server import LocalMlflow


def model_with_reference(
    client: MlflowClient, tmp_path: Path, name: str, frame: pd.DataFrame, artifact: str
) -> str:
    experiment = client.get_experiment_by_name("Default")
    assert experiment is not None
    run = client.create_run(experiment.experiment_id)
    local = tmp_path / Path(artifact).name
    frame.to_parquet(local, index=False)
    client.log_artifact(
        run.info.run_id,
        str(local),
        artifact_path=str(Path(artifact).parent) if "/" in artifact else None,
    )
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "champion", str(version.version))
    return str(version.version)


async def test_reference_follows_the_alias_to_the_runs_artifact(
    mlflow_server: LocalMlflow, mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    frame = pd.DataFrame({"amount": [1.0, 2.5, 4.0], "country": ["de", "fr", "es"]})
    name = f"drift-ref-{int(time.time() * 1000)}"
    version = model_with_reference(mlflow_client, tmp_path, name, frame, "reference.parquet")
    spec = DriftSpec(reference=f"models:/{name}@champion")
    config = RegistryConfig(uri=mlflow_server.uri)
    loaded = await load_reference(spec, tmp_path, (), config, 1.0)
    assert loaded.frame.equals(frame) and loaded.registry
    assert f"models:/{name}/{version}" in loaded.origin

    # A version tag may point at another artifact of the run.
    other = frame.assign(amount=frame["amount"] * 10)
    other_path = tmp_path / "other.parquet"
    other.to_parquet(other_path, index=False)
    mv = mlflow_client.get_model_version(name, version)
    mlflow_client.log_artifact(mv.run_id, str(other_path), artifact_path="data")
    mlflow_client.set_model_version_tag(name, version, REFERENCE_TAG, "data/other.parquet")
    again = await load_reference(spec, tmp_path, (), config, 2.0)
    assert again.frame.equals(other)


async def test_a_version_without_a_run_says_how_to_fix_it(
    mlflow_server: LocalMlflow, mlflow_client: MlflowClient
) -> None:
    name = f"drift-norun-{int(time.time() * 1000)}"
    mlflow_client.create_registered_model(name)
    mv = mlflow_client.create_model_version(name, source="s3://bucket/model")
    spec = DriftSpec(reference=f"models:/{name}/{mv.version}")
    with pytest.raises(ReferenceError, match="has no run"):
        await load_reference(spec, Path("."), (), RegistryConfig(uri=mlflow_server.uri), 1.0)
