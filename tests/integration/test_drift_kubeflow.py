"""Kubeflow Pipelines runs from drift, against a protocol-faithful fake KFP on loopback.

The fake (`switchyard simulate kubeflow`) records every request and can fail the first
N run creations (503) or lose the first N responses (created, but 503 answered).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from gateway.controlplane.policy.driftspec import DriftSpec, RetrySpec, WebhookSpec
from gateway.drift.actions import ActionContext, run_actions, send_webhook
from gateway.drift.episodes import Episodes
from gateway.drift.kubeflow import CallFailed, KubeflowClient
from gateway.simulate.exchange import Request, Response
from gateway.simulate.faults import FaultInjector
from gateway.simulate.kubeflow import KubeflowOptions, KubeflowSimulator, start_kubeflow
from gateway.simulate.server import SimServer, start_server
from gateway.simulate.stats import SimStats

KEY = ("fraud", "7")


class Sleeps:
    """Backoff waits, recorded instead of slept."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def kfp() -> AsyncIterator[tuple[SimServer, KubeflowSimulator]]:
    server, sim = await start_kubeflow(KubeflowOptions(token="s3cret"))
    yield server, sim
    await server.close()


def spec(url: str, **retries: Any) -> DriftSpec:
    return DriftSpec.model_validate(
        {
            "reference": "ref.csv",
            "cooldown": "1h",
            "on_drift": {
                "kubeflow": {
                    "endpoint": url,
                    "pipeline_id": "fraud-retrain",
                    "pipeline_version_id": "v3",
                    "experiment_id": "exp-1",
                    "params": {"epochs": 3},
                    "token_env": "KFP_TOKEN",
                    "retries": {"attempts": 4, "backoff": "1s", **retries},
                }
            },
        }
    )


def context(tmp_path: Path, drift: DriftSpec, sleeps: Sleeps) -> ActionContext:
    return ActionContext(
        route="fraud",
        spec=drift,
        base=tmp_path,
        roots=(),
        windows_dir=tmp_path / "windows",
        env={"KFP_TOKEN": "s3cret"},
        sleep=sleeps,
    )


WINDOW = pd.DataFrame({"amount": [1.0, 2.0, 3.0], "country": ["de", "fr", "de"]})


def saved_window(uri: str) -> pd.DataFrame:
    path = Path(uri.removeprefix("file://"))
    assert path.is_file(), uri
    return pd.read_parquet(path)


def creates(sim: KubeflowSimulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["method"] == "POST"]


async def test_one_run_per_episode_with_the_right_body_and_the_cooldown(
    kfp: tuple[SimServer, KubeflowSimulator], tmp_path: Path
) -> None:
    server, sim = kfp
    sleeps = Sleeps()
    ctx = context(tmp_path, spec(server.url), sleeps)
    episodes = Episodes(tmp_path / "episodes.json")
    acted = 0
    # drift, drift, calm, calm (episode over), drift within the cooldown, drift after it
    timeline = [(0, True), (60, True), (120, False), (180, False), (240, True), (3700, True)]
    for now, drifted in timeline:
        verdict, episode = episodes.observe(KEY, drifted, float(now), cooldown=3600, clear_after=2)
        if verdict == "act" and episode is not None:
            episode.summary = {"share": 0.5, "drifted_columns": ["amount"]}
            outcomes = await run_actions(ctx, "7", ["champion"], episode, WINDOW, "fraud-detector")
            acted += "kubeflow" in outcomes
            episodes.acted(KEY, episode, float(now))
    assert acted == 2  # the first episode, and the one after the cooldown
    assert len(sim.runs) == 2 and len(creates(sim)) == 2
    first = creates(sim)[0]
    assert first["authorization"] == "Bearer s3cret"
    body = first["body"]
    assert body["display_name"].startswith("switchyard-drift-fraud-7-")
    assert body["pipeline_version_reference"] == {
        "pipeline_id": "fraud-retrain",
        "pipeline_version_id": "v3",
    }
    assert body["experiment_id"] == "exp-1"
    params = body["runtime_config"]["parameters"]
    assert params["model_name"] == "fraud-detector" and params["model_version"] == "7"
    assert params["epochs"] == 3
    assert json.loads(params["drift_summary"]) == {"share": 0.5, "drifted_columns": ["amount"]}
    assert saved_window(params["window_uri"]).equals(WINDOW)
    assert sleeps.waits == []


async def test_retries_5xx_with_backoff(tmp_path: Path) -> None:
    server, sim = await start_kubeflow(KubeflowOptions(fail_first=2))
    try:
        sleeps = Sleeps()
        kubeflow = spec(server.url).on_drift.kubeflow
        assert kubeflow is not None
        client = KubeflowClient(kubeflow, {"KFP_TOKEN": "x"}, sleep=sleeps)
        run = await client.create_run("switchyard-drift-ep1", {"model_name": "m"}, "d")
        await client.aclose()
        assert run.created and len(sim.runs) == 1 and len(creates(sim)) == 3
        assert sleeps.waits == [1.0, 2.0]  # exponential backoff
    finally:
        await server.close()


async def test_a_lost_response_does_not_make_a_second_run(tmp_path: Path) -> None:
    server, sim = await start_kubeflow(KubeflowOptions(lose_first=1))
    try:
        kubeflow = spec(server.url).on_drift.kubeflow
        assert kubeflow is not None
        client = KubeflowClient(kubeflow, {"KFP_TOKEN": "x"}, sleep=Sleeps())
        run = await client.create_run("switchyard-drift-ep2", {}, "d")
        again = await client.create_run("switchyard-drift-ep2", {}, "d")  # a restarted worker
        await client.aclose()
        assert len(sim.runs) == 1 and len(creates(sim)) == 1
        assert not run.created and run.run_id == sim.runs[0]["run_id"] == again.run_id
    finally:
        await server.close()


async def test_gives_up_after_the_attempts_and_on_4xx(tmp_path: Path) -> None:
    server, sim = await start_kubeflow(KubeflowOptions(fail_first=10, token="right"))
    try:
        kubeflow = spec(server.url, attempts=3).on_drift.kubeflow
        assert kubeflow is not None
        wrong = KubeflowClient(kubeflow, {"KFP_TOKEN": "wrong"}, sleep=Sleeps())
        with pytest.raises(CallFailed, match="401"):
            await wrong.create_run("x", {}, "d")
        await wrong.aclose()
        assert len([r for r in sim.requests if r["path"].startswith("/apis")]) == 1  # no retry
        sleeps = Sleeps()
        right = KubeflowClient(kubeflow, {"KFP_TOKEN": "right"}, sleep=sleeps)
        with pytest.raises(CallFailed, match="gave up after 3 attempts"):
            await right.create_run("x", {}, "d")
        await right.aclose()
        assert sleeps.waits == [1.0, 2.0] and sim.runs == []
    finally:
        await server.close()


async def test_failed_actions_are_counted_and_retried_next_time(tmp_path: Path) -> None:
    server, sim = await start_kubeflow(KubeflowOptions(fail_first=4))
    try:
        ctx = context(tmp_path, spec(server.url), Sleeps())
        episodes = Episodes(None)
        _, episode = episodes.observe(KEY, True, 0.0, cooldown=0, clear_after=1)
        assert episode is not None
        first = await run_actions(ctx, "7", ["champion"], episode, WINDOW, "fraud")
        assert first == {"save_window": "ok", "kubeflow": "failed"}
        second = await run_actions(ctx, "7", ["champion"], episode, WINDOW, "fraud")
        assert second == {"kubeflow": "ok"}  # the window is not saved twice
        assert len(sim.runs) == 1 and episode.run_id == sim.runs[0]["run_id"]
    finally:
        await server.close()


async def test_webhook_is_hmac_signed_and_retried() -> None:
    received: list[Request] = []

    def hook(request: Request) -> Response:
        received.append(request)
        return Response(503 if len(received) == 1 else 204, b"")

    server = await start_server(hook, stats=SimStats(), faults=FaultInjector())
    try:
        webhook = WebhookSpec(
            url=server.url + "/hook", secret_env="HOOK_SECRET", retries=RetrySpec(backoff=0.01)
        )
        sleeps = Sleeps()
        event = {"event": "drift", "route": "fraud"}
        await send_webhook(webhook, event, "ep-webhook", {"HOOK_SECRET": "k"}, sleep=sleeps)
        assert len(received) == 2 and sleeps.waits == [0.01]
        last = received[-1]
        timestamp = last.headers["x-switchyard-timestamp"]
        expected = hmac.new(b"k", timestamp.encode() + b"." + last.body, hashlib.sha256)
        assert last.headers["x-switchyard-signature"] == "sha256=" + expected.hexdigest()
        assert last.headers["idempotency-key"] == "ep-webhook"
        assert json.loads(last.body) == event
    finally:
        await server.close()


async def test_a_relative_windows_folder_gives_the_run_an_absolute_file_uri(
    kfp: tuple[SimServer, KubeflowSimulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quick start's drift folder is relative (.state/drift): a relative path has no
    # file:// URI, and the run was created with window_uri "" (retrain on nothing).
    server, sim = kfp
    monkeypatch.chdir(tmp_path)
    ctx = context(tmp_path, spec(server.url), Sleeps())
    ctx.windows_dir = Path("state/drift/windows")
    episodes = Episodes(None)
    _, episode = episodes.observe(KEY, True, 0.0, cooldown=0, clear_after=1)
    assert episode is not None
    outcomes = await run_actions(ctx, "7", ["champion"], episode, WINDOW, "fraud")
    assert outcomes == {"save_window": "ok", "kubeflow": "ok"}
    [run] = sim.runs
    uri = run["runtime_config"]["parameters"]["window_uri"]
    assert uri == episode.window_uri and uri.startswith("file:///")
    assert Path(uri.removeprefix("file://")).is_relative_to(tmp_path / "state/drift/windows")
    assert saved_window(uri).equals(WINDOW)


async def test_no_run_is_started_without_its_window(
    kfp: tuple[SimServer, KubeflowSimulator], tmp_path: Path
) -> None:
    server, sim = kfp
    ctx = context(tmp_path, spec(server.url), Sleeps())
    ctx.windows_dir = tmp_path / "blocked"
    ctx.windows_dir.write_text("a file where the windows folder should be")
    episodes = Episodes(None)
    _, episode = episodes.observe(KEY, True, 0.0, cooldown=0, clear_after=1)
    assert episode is not None
    first = await run_actions(ctx, "7", ["champion"], episode, WINDOW, "fraud")
    assert first == {"save_window": "failed", "kubeflow": "skipped"}
    assert sim.runs == [] and creates(sim) == []  # not even tried: no run on nothing
    ctx.windows_dir.unlink()  # fixed: the next evaluation of the episode saves, then runs
    second = await run_actions(ctx, "7", ["champion"], episode, WINDOW, "fraud")
    assert second == {"save_window": "ok", "kubeflow": "ok"}
    [run] = sim.runs
    assert run["runtime_config"]["parameters"]["window_uri"] == episode.window_uri
    assert saved_window(episode.window_uri or "").equals(WINDOW)
