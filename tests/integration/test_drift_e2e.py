"""Drift end to end, with real processes: gateway, drift worker, backend, fake Kubeflow.

Baseline traffic evaluates as no drift; shifted traffic raises the drift metric, saves
the window as Parquet, serves the Evidently report from the admin API and makes exactly
one Kubeflow run request. Killing the drift worker never touches requests: it is
restarted, and the samples taken meanwhile wait for it in the gateway.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS
from gateway.drift.features import describe_text
from gateway.simulate.prompts import baseline_request, shifted_request
from tests.procs import GatewayProc, Simulator, start_gateway, start_simulator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kfp() -> Iterator[Simulator]:
    sim = start_simulator("kfp", kind="kubeflow")
    yield sim
    sim.proc.stop()


def policy(backend: str, kubeflow: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: support
variants:
  - {{name: champion, target: "models:/support/1"}}
backends:
  support/1: {{endpoints: ["{backend}"]}}
drift:
  reference: reference/support.csv
  window: {{size: 200, every: 1s, min_samples: 100}}
  cooldown: 1h
  on_drift:
    kubeflow:
      endpoint: {kubeflow}
      pipeline_id: support-retraining
      pipeline_version_id: v1
"""


@pytest.fixture
def drift_gateway(
    tmp_path: Path, sims: tuple[Simulator, Simulator], kfp: Simulator
) -> Iterator[tuple[GatewayProc, Path]]:
    folder = tmp_path / "policies"
    (folder / "reference").mkdir(parents=True)
    rng = random.Random(1)
    with (folder / "reference" / "support.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(TEXT_DESCRIPTORS))
        writer.writeheader()
        for _ in range(600):
            writer.writerow(describe_text(baseline_request(rng, "support")))
    (folder / "support.yaml").write_text(policy(sims[0].url, kfp.url))
    httpx.post(f"{kfp.url}/kfp-sim/reset", timeout=5)
    drift_dir = tmp_path / "drift"
    gw = start_gateway(folder, "--drift-dir", str(drift_dir))
    try:
        # The worker starts next to the gateway and learns the route from its config.
        wait_for(gw, lambda v: bool(v["worker"].get("up")) and v["reference"] is not None, 30)
        yield gw, drift_dir
    finally:
        gw.proc.stop()


def send(gw: GatewayProc, make: Callable[..., dict[str, Any]], count: int, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for i in range(count):
            reply = client.post(
                "/v1/chat/completions", json=make(rng, "support"), headers={"x-user-id": str(i)}
            )
            assert reply.status_code == 200, reply.text


def wait_for(
    gw: GatewayProc, check: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = httpx.get(f"{gw.admin}/admin/drift/support", timeout=5)
        if reply.status_code == 200:
            view = reply.json()
            if check(view):
                return view
        time.sleep(0.3)
    raise AssertionError(f"condition not met in {timeout}s; last view: {view}")


def version(view: dict[str, Any]) -> dict[str, Any]:
    found = [v for v in view["versions"] if v["version"] == "1"]
    return found[0] if found else {}


def run_requests(kfp: Simulator) -> list[dict[str, Any]]:
    seen = httpx.get(f"{kfp.url}/kfp-sim/requests", timeout=5).json()["requests"]
    return [r for r in seen if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs"]


def test_shifted_traffic_makes_drift_a_window_file_a_report_and_one_run(
    drift_gateway: tuple[GatewayProc, Path], kfp: Simulator
) -> None:
    gw, drift_dir = drift_gateway
    send(gw, baseline_request, 150, seed=2)
    calm = wait_for(gw, lambda v: version(v).get("evaluated_at") is not None, timeout=60)
    assert version(calm)["drifted"] is False and version(calm)["share"] < 0.5
    assert gw.metric("switchyard_drift_detected", route="support", version="1") == 0.0

    send(gw, shifted_request, 200, seed=3)
    drifted = wait_for(gw, lambda v: bool(version(v).get("drifted")), timeout=30)
    window = version(drifted)
    assert window["share"] >= 0.5 and window["window"] == 200
    assert gw.metric("switchyard_drift_detected", route="support", version="1") == 1.0
    assert gw.metric("switchyard_drift_share", route="support", version="1") >= 0.5
    assert gw.metric("switchyard_drift_window_size", route="support", version="1") == 200
    assert gw.metric("switchyard_drift_samples_total", route="support", version="1") == 350
    assert gw.metric("switchyard_drift_column_drifted", column="prompt_chars") == 1.0

    episode = wait_for(gw, lambda v: bool((version(v).get("episode") or {}).get("run_id")), 30)
    window_uri = version(episode)["episode"]["window_uri"]
    saved = Path(window_uri.removeprefix("file://"))
    assert saved.is_file() and saved.is_relative_to(drift_dir / "windows")

    report = httpx.get(gw.admin + version(episode)["report_url"], timeout=10)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert b"<html" in report.content[:2000].lower() or b"<!doctype" in report.content[:200].lower()

    # More drifted traffic and evaluations within the same episode: no second run.
    before = version(episode)["evaluated_at"]
    send(gw, shifted_request, 40, seed=7)
    wait_for(gw, lambda v: version(v).get("evaluated_at", 0) > before, timeout=30)
    runs = run_requests(kfp)
    assert len(runs) == 1
    params = runs[0]["body"]["runtime_config"]["parameters"]
    assert params["model_name"] == "support" and params["model_version"] == "1"
    assert params["window_uri"] == window_uri
    assert gw.metric("switchyard_drift_actions_total", action="kubeflow", outcome="ok") == 1.0


def test_killing_the_worker_never_touches_requests_and_loses_no_samples(
    drift_gateway: tuple[GatewayProc, Path],
) -> None:
    gw, _ = drift_gateway
    view = wait_for(gw, lambda v: bool(v["worker"].get("up")), timeout=30)
    pid = view["worker"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while gone(pid) is False:  # reaped by the gateway: its socket is closed
        assert time.monotonic() < deadline, f"worker {pid} still there"
        time.sleep(0.05)
    send(gw, baseline_request, 120, seed=5)  # all 200 OK (asserted in send)
    restarted = wait_for(
        gw, lambda v: v["worker"].get("generation") == 2 and v["worker"]["up"], timeout=30
    )
    assert restarted["worker"]["pid"] != pid
    assert gw.metric("switchyard_drift_worker_restarts_total") == 1.0
    # The samples taken while no worker listened waited in the gateway's backlog and
    # went to the new worker, its config first: none lost, none counted as dropped.
    wait_for(gw, lambda v: version(v).get("received", 0) == 120, timeout=30)
    send(gw, baseline_request, 20, seed=6)  # the new worker receives again
    wait_for(gw, lambda v: version(v).get("received", 0) == 140, timeout=30)
    assert gw.metric("switchyard_drift_samples_total", route="support") == 140
    assert gw.metric("switchyard_drift_samples_dropped_total") == 0
    assert gw.metric("switchyard_drift_worker_samples_dropped_total") == 0


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
