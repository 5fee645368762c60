"""Progressive rollouts against a real MLflow registry: promotion moves the alias, and the
state lives in registered-model tags, so a restarted gateway resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.integration.registry.conftest import Registered, serving_tags
from tests.integration.test_rollout import (
    Traffic,
    events,
    rollout_state,
    switchyard,
    wait_rollout,
)
from tests.procs import GatewayProc, Simulator


def alias_policy(route: str, model: str, rollout: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - {{name: champion, weight: 90, target: "models:/{model}@champion"}}
  - {{name: challenger, weight: 10, target: "models:/{model}@challenger"}}
{rollout}"""


def registry_args(mlflow: LocalMlflow, folder: Path) -> tuple[str, ...]:
    return (
        "--registry-uri",
        mlflow.uri,
        "--registry-poll-interval",
        "0.5",
        "--rollout-dir",
        str(folder),
    )


def stored_state(client: MlflowClient, model: str, route: str) -> dict[str, Any]:
    tags = client.get_registered_model(model).tags
    found: dict[str, Any] = json.loads(tags[f"switchyard.rollout.{route}"])
    return found


def routes_view(gw: GatewayProc, route: str) -> dict[str, Any]:
    data = httpx.get(f"{gw.admin}/admin/routes", timeout=10).json()
    found: dict[str, Any] = next(r for r in data["routes"] if r["route"] == route)
    return found


def test_a_passing_rollout_ends_with_the_alias_moved(
    sims: tuple[Simulator, Simulator],
    gateway: Callable[..., GatewayProc],
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
    tmp_path: Path,
) -> None:
    a, b = sims
    model = register(
        serving_tags(a.url), serving_tags(b.url), aliases={"champion": 1, "challenger": 2}
    )
    v1, v2 = model.versions
    rollout = """rollout:
  steps: [25, 50, 100]
  analysis: {interval: 0.5s, min_requests: 20, max_error_rate: 0.05, max_p99_latency_ratio: 20}
  on_success: promote
"""
    gw = gateway(
        alias_policy("promo", model.name, rollout),
        extra=registry_args(mlflow_server, tmp_path / "rollouts"),
    )
    with Traffic(gw.url, "promo", limit=5000) as traffic:
        view = wait_rollout(gw, "promo", lambda s: s["status"] == "promoted")
        # The route returns to its policy weights once @champion resolves to version 2.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            route = routes_view(gw, "promo")
            if [(v["weight"], v["version"]) for v in route["variants"]] == [(90, v2), (10, v2)]:
                break
            time.sleep(0.2)
        settled = len(traffic.records)
        traffic.limit = settled + 100
        deadline = time.monotonic() + 30
        while len(traffic.records) < settled + 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert events(view) == ["started", "step", "step", "promoted"]
    promoted = view["state"]["history"][-1]
    assert promoted["reason"] == f"{model.name}@champion: version {v1} -> {v2}"
    assert view["state"]["previous_champion"] == v1
    # The registry says so: alias moved, rollback point recorded, state in a model tag.
    assert mlflow_client.get_model_version_by_alias(model.name, "champion").version == v2
    tags = mlflow_client.get_registered_model(model.name).tags
    assert tags["switchyard.previous.champion"] == v1
    stored = stored_state(mlflow_client, model.name, "promo")
    assert stored["status"] == "promoted" and stored["subject"] == v2
    assert [e["event"] for e in stored["history"]] == ["started", "step", "step", "promoted"]
    assert [(v["weight"], v["version"]) for v in route["variants"]] == [(90, v2), (10, v2)]
    assert {version for _, version, _, _ in traffic.records[settled:]} == {v2}
    assert {status for _, _, status, _ in traffic.records} == {200}
    assert gw.metric("switchyard_rollout_events_total", route="promo", event="promoted") == 1
    # `switchyard registry rollback` undoes the promotion with the recorded tag.
    rolled = switchyard("registry", "rollback", model.name, "--registry-uri", mlflow_server.uri)
    assert rolled.returncode == 0, rolled.stderr
    assert mlflow_client.get_model_version_by_alias(model.name, "champion").version == v1


def test_restart_resumes_from_the_registry_tag(
    sims: tuple[Simulator, Simulator],
    gateway: Callable[..., GatewayProc],
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
    tmp_path: Path,
) -> None:
    a, b = sims
    model = register(
        serving_tags(a.url), serving_tags(b.url), aliases={"champion": 1, "challenger": 2}
    )
    rollout = """rollout:
  steps: [10, 20, 30, 60, 100]
  analysis: {interval: 0.5s, min_requests: 15, max_error_rate: 0.05}
"""
    policy = alias_policy("resume", model.name, rollout)
    first = gateway(policy, extra=registry_args(mlflow_server, tmp_path / "first"))
    with Traffic(first.url, "resume", limit=4000):
        wait_rollout(first, "resume", lambda s: s["step"] >= 2)
    paused = switchyard("rollout", "pause", "resume", "--admin", first.admin)
    assert paused.returncode == 0, paused.stderr
    before = stored_state(mlflow_client, model.name, "resume")
    assert before["status"] == "paused" and before["step"] >= 1  # 0-based in the tag
    first.proc.stop()

    # A new process with an empty rollout folder: only the registry knows the rollout.
    second = gateway(policy, extra=registry_args(mlflow_server, tmp_path / "second"))
    view = wait_rollout(second, "resume", lambda s: s["status"] == "paused", timeout=30)
    assert view["state"]["step"] == before["step"] + 1
    assert "registry tag switchyard.rollout" in view["store"]
    assert events(view) == [e["event"] for e in before["history"]]
    # Traffic follows the stored step, not the policy's 90/10.
    percent = view["state"]["percent"]
    share = {v["name"]: v["share"] for v in routes_view(second, "resume")["variants"]}
    assert abs(share["challenger"] * 100 - percent) < 1e-6
    resumed = switchyard("rollout", "resume", "resume", "--admin", second.admin)
    assert resumed.returncode == 0, resumed.stderr
    with Traffic(second.url, "resume", limit=4000):
        moved = wait_rollout(second, "resume", lambda s: s["step"] > view["state"]["step"])
    history = events(moved)
    assert history.count("started") == 1 and history[-2:] == ["resumed", "step"]
    aborted = switchyard("rollout", "abort", "resume", "--admin", second.admin)
    assert aborted.returncode == 0, aborted.stderr
    assert stored_state(mlflow_client, model.name, "resume")["status"] == "aborted"
    assert rollout_state(second, "resume")["state"]["percent"] == 0
    # The alias never moved: nothing was promoted.
    assert mlflow_client.get_model_version_by_alias(model.name, "champion").version == "1"
