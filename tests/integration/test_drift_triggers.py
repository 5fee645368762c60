"""Ground truth closes the loop: a real drift worker process (`switchyard drift-worker
--listen udp://... --http ...`) fed labels over the real drift channel, against the
Kubeflow fake on loopback.

- N labels of a version start exactly one data-threshold run with the labeled window;
- a challenger whose labels go wrong trips the accuracy SLO: one run per episode;
- a schedule of every 2 seconds fires on time, each time with its window;
- the worker's /metrics and /status equal a hand computation on the test's labels;
- a rollout whose challenger's labels go wrong rolls back on the accuracy gate (which
  waits while there are no labels), and the accuracy SLO starts one retraining run;
- the whole loop through a real gateway: labels posted to /v1/feedback, the rollback,
  one run whose window is joined with the requests' features.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from gateway.drift.channel import Stream, encode_config, encode_labels
from gateway.drift.labeled import LabeledRecord
from gateway.simulate.kubeflow import KubeflowOptions, KubeflowSimulator, start_kubeflow
from gateway.simulate.server import SimServer
from tests.integration.test_rollout import Traffic, rollout_state, wait_rollout
from tests.procs import GatewayProc, Proc, poll, spawn, start_simulator

_LISTENING = re.compile(r"switchyard drift-worker listening on udp://\S+:(\d+) http (http://\S+)")


@pytest.fixture
async def kfp() -> AsyncIterator[tuple[SimServer, KubeflowSimulator]]:
    server, sim = await start_kubeflow(KubeflowOptions())
    yield server, sim
    await server.close()


class Worker:
    """The worker process, and one gateway process's numbered datagrams to it."""

    def __init__(self, drift_dir: Path) -> None:
        self.proc: Proc = spawn(
            [
                "drift-worker",
                "--listen",
                "udp://127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--drift-dir",
                str(drift_dir),
            ]
        )
        found = self.proc.wait_for(_LISTENING, 60)
        self.port, self.url = int(found.group(1)), found.group(2)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stream = Stream()

    def send(self, payload: bytes, rows: int = 0) -> None:
        self.sock.sendto(self.stream.datagram(payload, rows), ("127.0.0.1", self.port))

    def labels(self, records: list[LabeledRecord]) -> None:
        for payload, _ in encode_labels(records):
            self.send(payload)

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"{self.url}{path}")

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.get("/status")).json()
        return result

    def close(self) -> None:
        self.sock.close()
        self.proc.stop()


async def until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll an async or plain check until it is true (the event loop keeps serving
    the Kubeflow fake meanwhile)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def block(kfp_url: str, **triggers: Any) -> dict[str, Any]:
    return {
        "reference": "reference.csv",  # never read: no rows are sent in these tests
        "cooldown": "1h",
        "labels": {"size": 20, "every": "200ms", "min_samples": 10},
        "triggers": triggers,
        "on_drift": {
            "kubeflow": {
                "endpoint": kfp_url,
                "pipeline_id": "fraud-retraining",
                "pipeline_version_id": "v1",
                "retries": {"attempts": 2, "backoff": "100ms"},
            }
        },
    }


def config(tmp_path: Path, routes: dict[str, dict[str, Any]]) -> bytes:
    entries = [
        {"route": r, "protocol": "json", "base": str(tmp_path), "drift": d}
        for r, d in sorted(routes.items())
    ]
    return encode_config(entries)


def labeled(version: str, variant: str, pairs: str, scores: list[float]) -> list[LabeledRecord]:
    """Records from "PL PL ..." (predicted, label) pairs."""
    now = time.time()
    return [
        LabeledRecord(
            "fraud", variant, version, pair[0], s, pair[1], now - 5, now, f"{version}-{i}"
        )
        for i, (pair, s) in enumerate(zip(pairs.split(), scores, strict=True))
    ]


def runs_for(
    sim: KubeflowSimulator, reason: str, version: str | None = None
) -> list[dict[str, Any]]:
    out = []
    for run in sim.runs:
        params = run["runtime_config"]["parameters"]
        if params["reason"] == reason and version in (None, params["model_version"]):
            out.append(run)
    return out


def window_of(run: dict[str, Any]) -> pd.DataFrame:
    uri = run["runtime_config"]["parameters"]["window_uri"]
    return pd.read_parquet(Path(uri.removeprefix("file://")))


# Champion (version 7), 20 labels: 18 correct; predicted 1 eleven times, 10 of them
# right (TP 10, FP 1); label 1 eleven times (FN 1): precision 10/11, recall 10/11.
CHAMPION = " ".join(["11"] * 10 + ["10"] + ["01"] + ["00"] * 8)
CHAMPION_SCORES = [0.9] * 10 + [0.8] + [0.3] + [0.1] * 8
# Challenger (version 8), its labels gone wrong: 10 labels, 3 correct (accuracy 0.3).
CHALLENGER = " ".join(["11"] * 2 + ["00"] + ["10"] * 4 + ["01"] * 3)
CHALLENGER_SCORES = [0.6] * 10


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            inside = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(inside.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_threshold_and_accuracy_slo_start_one_run_each_with_the_labeled_window(
    kfp: tuple[SimServer, KubeflowSimulator], tmp_path: Path
) -> None:
    server, sim = kfp
    worker = Worker(tmp_path / "drift")
    try:
        routes = {
            "fraud": block(
                server.url, labeled_samples=20, accuracy={"min": 0.85, "min_samples": 10}
            )
        }
        worker.send(config(tmp_path, routes))
        worker.labels(labeled("7", "champion", CHAMPION, CHAMPION_SCORES)[:19])
        await until(
            "19 labels at the worker",
            lambda: _received(worker, "7", 19),
        )
        await asyncio.sleep(0.5)  # a few evaluations: 19 < 20 labels start nothing
        assert sim.runs == []
        worker.labels(labeled("7", "champion", CHAMPION, CHAMPION_SCORES)[19:])
        await until("the data-threshold run", lambda: runs_for(sim, "labeled_samples", "7"))
        # The challenger's wrong labels: the SLO (0.3 < 0.85 on 10 labels) trips.
        worker.labels(labeled("8", "canary", CHALLENGER, CHALLENGER_SCORES))
        await until("the accuracy run", lambda: runs_for(sim, "accuracy", "8"))
        # More wrong labels: the same episode, no second run (window 20, 6 correct).
        worker.labels(labeled("8", "canary", CHALLENGER, CHALLENGER_SCORES))
        await until("20 challenger labels", lambda: _received(worker, "8", 20))
        # 20 labels of version 8 also make its data-threshold run.
        await until("the challenger's threshold run", lambda: runs_for(sim, "labeled_samples", "8"))
        await asyncio.sleep(1.0)  # evaluations go on; nothing more may start
        assert len(runs_for(sim, "labeled_samples", "7")) == 1
        assert len(runs_for(sim, "labeled_samples", "8")) == 1
        assert len(runs_for(sim, "accuracy")) == 1 and len(sim.runs) == 3

        threshold = runs_for(sim, "labeled_samples", "7")[0]
        params = threshold["runtime_config"]["parameters"]
        assert params["model_version"] == "7" and params["model_name"] == "fraud"
        assert threshold["display_name"].startswith("switchyard-labeled-samples-fraud-7-")
        window = window_of(threshold)
        assert len(window) == 20 and int(window["correct"].sum()) == 18
        assert set(window["key"]) == {f"7-{i}" for i in range(20)}
        accuracy = runs_for(sim, "accuracy", "8")[0]["runtime_config"]["parameters"]
        assert json.loads(accuracy["drift_summary"]) == {
            "accuracy": 0.3,
            "min_accuracy": 0.85,
            "labels": 10,
            "correct": 3,
        }
        assert len(window_of(runs_for(sim, "accuracy", "8")[0])) == 10

        # Metrics and status against the hand computation.
        text = (await worker.get("/metrics")).text
        assert metric(text, "switchyard_model_accuracy", route="fraud", version="7") == 0.9
        assert metric(text, "switchyard_model_precision", route="fraud", version="7") == (
            pytest.approx(10 / 11)
        )
        assert metric(text, "switchyard_model_recall", route="fraud", version="7") == (
            pytest.approx(10 / 11)
        )
        assert metric(text, "switchyard_model_f1", route="fraud", version="7") == (
            pytest.approx(10 / 11)
        )
        # AUC, version 7: positives (label 1) score 0.9 x10 and 0.3; negatives 0.8 and
        # 0.1 x8. 0.9 beats all 9 negatives (90 pairs); 0.3 beats the eight 0.1s (8).
        assert metric(text, "switchyard_model_auc", route="fraud", version="7") == (
            pytest.approx(98 / 99)
        )
        assert metric(text, "switchyard_model_accuracy", route="fraud", version="8") == 0.3
        assert (
            metric(text, "switchyard_model_labeled_window_size", route="fraud", version="8") == 20
        )
        assert (
            metric(
                text,
                "switchyard_retrain_triggers_total",
                route="fraud",
                version="8",
                reason="accuracy",
            )
            == 1
        )
        status = (await worker.status())["routes"]["fraud"]
        challenger = status["labels"]["8"]
        assert challenger["accuracy_breached"] is True
        assert challenger["metrics"]["correct"] == 6 and challenger["metrics"]["samples"] == 20
        assert challenger["episodes"]["accuracy"]["count"] == 1
        assert status["triggers"]["fires"] == {"labeled_samples": 2, "accuracy": 1}

        # The full window's concept drift report (against the version's reference), over
        # the worker's HTTP like the data drift reports.
        await until("version 8's concept drift report", lambda: _has_report(worker, "8"))
        report = await worker.get("/report?route=fraud&version=8&kind=labels")
        assert report.status_code == 200, report.text
        assert report.headers["content-type"].startswith("text/html")
        assert b"<html" in report.content[:1000].lower()
        bogus = await worker.get("/report?route=fraud&version=8&kind=bogus")
        assert bogus.status_code == 400
        assert bogus.json() == {"error": "kind must be one of data, labels, not 'bogus'"}
        none = await worker.get("/report?route=fraud&version=8")  # no data drift report
        assert none.status_code == 404
    finally:
        worker.close()


async def _has_report(worker: Worker, version: str) -> bool:
    labels = (await worker.status())["routes"].get("fraud", {}).get("labels", {})
    return bool(labels.get(version, {}).get("report"))


async def _received(worker: Worker, version: str, n: int) -> bool:
    labels = (await worker.status())["routes"].get("fraud", {}).get("labels", {})
    return bool(labels.get(version, {}).get("received", 0) >= n)


async def test_a_schedule_of_every_two_seconds_fires_on_time(
    kfp: tuple[SimServer, KubeflowSimulator], tmp_path: Path
) -> None:
    server, sim = kfp
    worker = Worker(tmp_path / "drift")
    try:
        worker.send(config(tmp_path, {"fraud": block(server.url, schedule="*/2 * * * * *")}))
        worker.labels(labeled("7", "champion", CHAMPION, CHAMPION_SCORES))
        started = time.time()
        await until("two scheduled runs", lambda: len(runs_for(sim, "schedule")) >= 2, 15)
        runs = runs_for(sim, "schedule")
        stamps = []
        for run in runs:
            uri = run["runtime_config"]["parameters"]["window_uri"]
            # The window's file is named for the second its episode began: the
            # schedule's time that came due, however late the worker's tick.
            found = re.search(r"/(\d{8}T\d{6})Z-[0-9a-f]{16}\.parquet$", uri)
            assert found is not None, uri
            stamps.append(calendar.timegm(time.strptime(found.group(1), "%Y%m%dT%H%M%S")))
        # On the schedule's times: even seconds.
        assert all(int(s) % 2 == 0 for s in stamps), stamps
        assert stamps[0] >= int(started) - 1 and stamps[1] - stamps[0] >= 2
        assert len({r["display_name"] for r in runs}) == len(runs)  # one run per time
        assert len(window_of(runs[-1])) == 20
    finally:
        worker.close()


def rollout_policy(champion: str, challenger: str, kfp_url: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
variants:
  - {{name: champion, weight: 90, endpoints: ["{champion}"]}}
  - {{name: challenger, weight: 10, endpoints: ["{challenger}"]}}
drift:
  reference: reference.csv
  features: [{{descriptor: prompt_chars}}]
  cooldown: 1h
  labels: {{size: 20, every: 200ms, min_samples: 10}}
  triggers: {{accuracy: {{min: 0.85, min_samples: 10}}}}
  on_drift:
    kubeflow: {{endpoint: "{kfp_url}", pipeline_id: fraud-retraining, pipeline_version_id: v1}}
rollout:
  steps: [20, 50, 100]
  analysis:
    interval: 0.5s
    min_requests: 20
    max_error_rate: 0.05
    min_accuracy: 0.85
    min_labels: 10
  on_success: hold
"""


def test_a_challenger_whose_labels_go_wrong_is_rolled_back_and_retrained_once(
    gateway: Callable[..., GatewayProc], tmp_path: Path
) -> None:
    kfp = start_simulator("kfp", kind="kubeflow")
    champion = start_simulator("acc-champion", "--latency-ms", "2")
    challenger = start_simulator("acc-challenger", "--latency-ms", "2")
    worker = Worker(tmp_path / "drift")
    try:
        gw = gateway(
            rollout_policy(champion.url, challenger.url, kfp.url),
            extra=(
                "--rollout-dir",
                str(tmp_path / "rollouts"),
                "--drift-worker-address",
                f"udp://127.0.0.1:{worker.port}",
                "--drift-status-url",
                worker.url,
                "--drift-dir",
                str(tmp_path / "gateway-drift"),
            ),
        )
        poll(
            "the gateway configures the worker",
            lambda: "fraud" in httpx.get(f"{worker.url}/status", timeout=5).json()["routes"],
        )
        with Traffic(gw.url, "fraud", limit=20000):
            # Traffic enough for the step, no labels yet: the gate waits, nothing steps.
            poll(
                "the accuracy gate waiting for labels",
                lambda: "gate accuracy" in str(rollout_state(gw, "fraud").get("analysis")),
            )
            held = rollout_state(gw, "fraud")["state"]
            assert held["percent"] == 20.0 and len(held["history"]) == 1, held
            # Endpoint variants have no version: their windows are per variant.
            worker.labels(labeled("", "champion", CHAMPION, CHAMPION_SCORES))
            worker.labels(labeled("", "challenger", CHALLENGER, CHALLENGER_SCORES))
            view = wait_rollout(gw, "fraud", lambda s: s["status"] != "progressing")
        state = view["state"]
        assert state["status"] == "rolled_back", state
        rollback = state["history"][-1]
        assert "gate accuracy failed: 3 of 10 labeled predictions correct" in rollback["reason"]
        gates = {g["gate"]: g for g in rollback["details"]["gates"]}
        assert gates["accuracy"]["value"] == 0.3 and gates["accuracy"]["limit"] == 0.85

        def accuracy_runs() -> list[dict[str, Any]]:
            found = httpx.get(f"{kfp.url}/kfp-sim/requests", timeout=5).json()["runs"]
            return [r for r in found if r["runtime_config"]["parameters"]["reason"] == "accuracy"]

        runs = poll("the accuracy run", accuracy_runs)
        time.sleep(1.0)  # more evaluations: the same episode starts nothing more
        runs = accuracy_runs()
        assert len(runs) == 1
        params = runs[0]["runtime_config"]["parameters"]
        assert params["model_version"] == "variant:challenger"
        window = window_of(runs[0])
        assert len(window) == 10 and int(window["correct"].sum()) == 3
        assert set(window["variant"]) == {"challenger"}
        # The champion's window is fine: no episode, no run for it.
        status = httpx.get(f"{worker.url}/status", timeout=5).json()["routes"]["fraud"]
        assert status["labels"]["variant:champion"]["metrics"]["accuracy"] == 0.9
        assert status["labels"]["variant:champion"]["accuracy_breached"] is False
        assert status["triggers"]["fires"] == {"accuracy": 1}
        # The gateway's admin API shows the worker's numbers (--drift-status-url).
        admin = httpx.get(f"{gw.admin}/admin/drift/fraud", timeout=5).json()
        challenger_window = admin["labels"]["variant:challenger"]
        assert challenger_window["metrics"]["accuracy"] == 0.3
        assert challenger_window["metrics"]["correct"] == 3
        assert challenger_window["metrics"]["samples"] == 10
        assert admin["labels"]["variant:champion"]["metrics"]["precision"] == 10 / 11
        assert admin["triggers"]["fires"] == {"accuracy": 1}
    finally:
        worker.close()
        for sim in (kfp, champion, challenger):
            sim.proc.stop()


def loop_policy(champion: str, challenger: str, kfp_url: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: json
variants:
  - {{name: champion, weight: 90, target: "models:/fraud/1"}}
  - {{name: challenger, weight: 10, target: "models:/fraud/2"}}
backends:
  fraud/1: {{endpoints: ["{champion}"]}}
  fraud/2: {{endpoints: ["{challenger}"]}}
ground_truth:
  prediction: label
  score: probability
  positive: fraud
  classes: [legit, fraud]
  max_label_delay: 1h
drift:
  reference: reference.csv
  features: [{{name: f0, path: 'features[0]'}}, {{name: f1, path: 'features[1]'}}]
  cooldown: 1h
  labels: {{size: 20, every: 200ms, min_samples: 10, positive: fraud}}
  triggers: {{accuracy: {{min: 0.85, min_samples: 10}}}}
  on_drift:
    kubeflow: {{endpoint: "{kfp_url}", pipeline_id: fraud-retraining, pipeline_version_id: v1}}
rollout:
  steps: [20, 100]
  analysis: {{interval: 0.5s, min_requests: 10, max_error_rate: 0.05, min_accuracy: 0.85,
              min_labels: 10}}
  on_success: hold
"""


def test_the_loop_closes_from_feedback_labels_to_rollback_and_one_retraining_run(
    gateway: Callable[..., GatewayProc], tmp_path: Path
) -> None:
    """The whole loop through a real gateway: predictions served, their true labels
    posted to /v1/feedback (the challenger's all wrong), the worker's windows, the
    rollout's accuracy gate, the accuracy SLO's one Kubeflow run with the labeled
    window joined to the requests' features."""
    kfp = start_simulator("loop-kfp", kind="kubeflow")
    champion = start_simulator("loop-champion", kind="bentoml")
    challenger = start_simulator("loop-challenger", "--model-version", "2", kind="bentoml")
    worker = Worker(tmp_path / "drift")
    try:
        gw = gateway(
            loop_policy(champion.url, challenger.url, kfp.url),
            extra=(
                "--rollout-dir",
                str(tmp_path / "rollouts"),
                "--drift-worker-address",
                f"udp://127.0.0.1:{worker.port}",
                "--drift-status-url",
                worker.url,
                "--drift-dir",
                str(tmp_path / "gateway-drift"),
            ),
        )
        poll(
            "the gateway configures the worker",
            lambda: "fraud" in httpx.get(f"{worker.url}/status", timeout=5).json()["routes"],
        )
        sent: dict[str, list[tuple[str, str]]] = {"1": [], "2": []}  # (predicted, label)
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=10) as client:
            for i in range(2000):
                state = rollout_state(gw, "fraud")["state"]
                if state["status"] != "progressing" or time.monotonic() > deadline:
                    break
                features = [(i % 10) / 10, 1.0, 0.0, -1.0]
                r = client.post(f"{gw.url}/services/fraud/classify", json={"features": features})
                assert r.status_code == 200, r.text
                predicted, version = r.json()["label"], r.headers["x-switchyard-version"]
                truth = predicted
                if version == "2":  # the challenger: its labels all go wrong
                    truth = "legit" if predicted == "fraud" else "fraud"
                fid = r.headers["x-switchyard-feedback-id"]
                answer = client.post(
                    f"{gw.url}/v1/feedback", json={"request_id": fid, "label": truth}
                )
                assert answer.status_code == 200, answer.text
                sent[version].append((predicted, truth))
        assert state["status"] == "rolled_back", state
        assert "gate accuracy failed: 0 of " in state["history"][-1]["reason"]

        def accuracy_runs() -> list[dict[str, Any]]:
            found = httpx.get(f"{kfp.url}/kfp-sim/requests", timeout=5).json()["runs"]
            return [r for r in found if r["runtime_config"]["parameters"]["reason"] == "accuracy"]

        poll("the accuracy run", accuracy_runs)
        time.sleep(1.0)  # more evaluations: the same episode starts nothing more
        (run,) = accuracy_runs()
        assert run["runtime_config"]["parameters"]["model_version"] == "2"
        window = window_of(run)
        assert 10 <= len(window) <= 20 and not window["correct"].any()
        assert {"f0", "f1"} <= set(window.columns)  # joined with the requests' features
        assert window["f0"].notna().all() and window["f1"].eq(1.0).all()

        # The worker's numbers against the test's own labels (the newest 20 a version).
        def hand(version: str) -> float:
            newest = sent[version][-20:]
            return sum(p == t for p, t in newest) / len(newest)

        def settled() -> bool:
            labels = httpx.get(f"{worker.url}/status", timeout=5).json()["routes"]["fraud"]
            windows = labels["labels"]
            return all(
                windows.get(v, {}).get("received") == len(sent[v])
                and windows[v]["evaluated_at"] is not None
                and windows[v]["metrics"]["samples"] == min(20, len(sent[v]))
                for v in ("1", "2")
            )

        poll("every label at the worker", settled)
        time.sleep(0.5)  # one more evaluation after the last label
        text = httpx.get(f"{worker.url}/metrics", timeout=5).text
        assert metric(text, "switchyard_model_accuracy", route="fraud", version="1") == hand("1")
        assert metric(text, "switchyard_model_accuracy", route="fraud", version="2") == hand("2")
        admin = httpx.get(f"{gw.admin}/admin/drift/fraud", timeout=5).json()
        assert admin["labels"]["2"]["metrics"]["accuracy"] == hand("2") == 0.0
        assert admin["labels"]["1"]["metrics"]["accuracy"] == hand("1") == 1.0
    finally:
        worker.close()
        for sim in (kfp, champion, challenger):
            sim.proc.stop()
