"""Experiments, shadow counts and rollout gates judged on the whole fleet's traffic.

Two gateway processes serve the same policies as replicas (separate processes, one
policy folder, one rollout folder: their flock picks one rollout writer), with
`--stats-source prometheus` against a real Prometheus scraping both admin ports every
second (tests/promrig.py). Every replica reports the fleet's counts; the writer judges
traffic it never served; with Prometheus gone the answers are 503s and the gates wait,
and they come back by themselves. One `--workers 2` gateway without Prometheus shows the
same through its supervisor's merged /metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.settings import Settings
from tests.integration.test_rollout import Traffic, events, rollout_state, wait_rollout
from tests.kustomize import build
from tests.procs import REPO, GatewayProc, Simulator, canary_policy, poll, start_gateway
from tests.promrig import Prometheus, free_port

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def chat(client: httpx.Client, gw: GatewayProc, route: str, **headers: str) -> httpx.Response:
    return client.post(
        f"{gw.url}/v1/chat/completions", json={"model": route, **CHAT}, headers=headers
    )


class Fleet:
    """Two replicas of one gateway and the Prometheus that scrapes them."""

    def __init__(self, a: GatewayProc, b: GatewayProc, prom: Prometheus) -> None:
        self.a, self.b, self.prom = a, b, prom

    @property
    def both(self) -> tuple[GatewayProc, GatewayProc]:
        return self.a, self.b

    def writer(self, route: str) -> tuple[GatewayProc, GatewayProc]:
        """(writer, follower) of `route`'s rollout, once the writer has its step's start
        counts from Prometheus (so traffic sent from now on falls into the step)."""

        def ready() -> tuple[GatewayProc, GatewayProc] | None:
            for gw, other in ((self.a, self.b), (self.b, self.a)):
                view = rollout_state(gw, route)
                reason = (view.get("analysis") or {}).get("reason", "")
                if view["writer"] and reason.startswith("waiting for traffic"):
                    return gw, other
            return None

        found: tuple[GatewayProc, GatewayProc] = poll(f"a writer judging {route}", ready)
        return found


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Callable[[str], Fleet]]:
    stack = ExitStack()

    def make(policy: str) -> Fleet:
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "p.yaml").write_text(policy)
        prom = Prometheus(tmp_path / "prometheus", [], port=free_port())
        args = (
            "--rollout-dir",
            str(tmp_path / "rollouts"),  # one folder: the replicas share the writer lock
            "--stats-source",
            "prometheus",
            "--prometheus-url",
            prom.url,
        )
        with ThreadPoolExecutor(2) as pool:
            started = list(pool.map(lambda _: start_gateway(policies, *args), range(2)))
        for gw in started:
            stack.callback(gw.proc.stop)
        prom.targets = [gw.admin.removeprefix("http://") for gw in started]
        prom.start()
        stack.callback(prom.stop)
        prom.wait_up()
        return Fleet(started[0], started[1], prom)

    yield make
    stack.close()


def experiment(gw: GatewayProc, route: str) -> httpx.Response:
    return httpx.get(f"{gw.admin}/admin/experiments/{route}", timeout=10)


def test_every_replica_reports_the_fleets_counts_and_waits_without_prometheus(
    fleet: Callable[[str], Fleet], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    rollout = """rollout:
  steps: [50]
  analysis: {interval: 0.5s, min_requests: 10, max_error_rate: 0.05}
  on_success: hold
"""
    mirror = f'experiment: {{}}\nshadow: [{{name: next, endpoints: ["{b.url}"], sample: 1.0}}]\n'
    policy = (
        canary_policy("ab", a.url, b.url, (50, 50), mirror)
        + "---\n"
        + canary_policy("ro", a.url, b.url, (50, 50), rollout)
    )
    f = fleet(policy)
    writer, _ = f.writer("ro")  # its step counts from here (Prometheus is up)

    # 60 requests, split across the replicas; the ground truth from the answers.
    truth: Counter[str] = Counter()
    served: dict[str, list[str]] = {f.a.admin: [], f.b.admin: []}
    with httpx.Client(timeout=10) as client:
        for i in range(60):
            gw = f.both[i % 2]
            reply = chat(client, gw, "ab")
            assert reply.status_code == 200, reply.text
            truth[reply.headers["x-switchyard-variant"]] += 1
            served[gw.admin].append(reply.headers["x-request-id"])
        # Feedback where each request was served: 10 conversions on A, 10 misses on B.
        for gw, outcome in ((f.a, True), (f.b, False)):
            for rid in served[gw.admin][:10]:
                answer = client.post(
                    f"{gw.url}/v1/feedback", json={"request_id": rid, "outcome": outcome}
                )
                assert answer.status_code == 200, answer.text
    assert set(truth) == {"champion", "challenger"}

    def counted(gw: GatewayProc) -> dict[str, Any] | None:
        report = experiment(gw, "ab").json()
        rows = {row["variant"]: row for row in report["variants"]}
        got = Counter({name: row["served"] for name, row in rows.items() if row["served"]})
        outcomes = sum(row["outcomes"] for row in rows.values())
        return report if got == truth and outcomes == 20 else None

    reports = [poll(f"{gw.admin} reports the fleet", lambda gw=gw: counted(gw)) for gw in f.both]
    for report in reports:
        assert report["source"]["kind"] == "prometheus"
        assert report["source"]["url"] == f.prom.url and report["source"]["processes"] == 2
        assert report["source"]["oldest_scrape_age_s"] < 10
        assert sum(row["conversions"] for row in report["variants"]) == 10
    # Every replica reading the same Prometheus gives the same answer.
    assert reports[0]["variants"] == reports[1]["variants"]
    assert reports[0]["comparisons"] == reports[1]["comparisons"]

    # The shadow's copies and comparisons too: each replica mirrored its own 30.
    def mirrored(gw: GatewayProc) -> dict[str, Any] | None:
        (entry,) = httpx.get(f"{gw.admin}/admin/shadow/ab", timeout=10).json()["shadows"]
        judged = entry["agreement"]
        compared = judged["agreed"] + judged["disagreed"] + judged["uncomparable"]
        return entry if entry["sent"] == 60 and compared == 60 else None

    shadows = [poll(f"{gw.admin} counts every copy", lambda gw=gw: mirrored(gw)) for gw in f.both]
    assert shadows[0]["agreement"] == shadows[1]["agreement"]
    assert shadows[0]["similarity"]["n"] <= 30  # kept by the answering process only

    # Prometheus gone: a clear 503, never a hang; the gates wait.
    f.prom.kill()
    gone = experiment(f.b, "ab")
    assert gone.status_code == 503
    error = gone.json()["error"]
    assert error.startswith(f"evidence unavailable from prometheus at {f.prom.url}: "), error
    assert gone.json()["source"]["kind"] == "prometheus"
    assert httpx.get(f"{f.b.admin}/admin/shadow", timeout=10).status_code == 503
    with httpx.Client(timeout=10) as client:
        for i in range(40):  # more than the step needs: judged, it would complete
            assert chat(client, f.both[i % 2], "ro").status_code == 200

    def waiting(since: float) -> dict[str, Any] | None:
        view = rollout_state(writer, "ro")
        analysis = view.get("analysis") or {}
        unavailable = analysis.get("reason", "").startswith("evidence unavailable from")
        return view if unavailable and analysis["at"] > since else None

    first = poll("the gate waits for evidence", lambda: waiting(0.0))
    # Two more intervals judged on nothing: still waiting, nothing stepped.
    view = poll("another analysis", lambda: waiting(first["analysis"]["at"] + 1.0))
    assert view["state"]["status"] == "progressing" and events(view) == ["started"]
    assert f"prometheus at {f.prom.url}" in view["analysis"]["reason"]
    assert view["analysis"]["source"]["error"]
    assert view["statistics"]["up"] is False and view["statistics"]["errors"] >= 1
    assert writer.metric("switchyard_stats_source_up", source="prometheus") == 0
    assert writer.metric("switchyard_stats_source_errors_total", source="prometheus") >= 1

    # Back: the answers return and the step is judged on the traffic it missed.
    f.prom.restart()
    f.prom.wait_up()
    poll("the report is back", lambda: experiment(f.a, "ab").status_code == 200)
    done = wait_rollout(writer, "ro", lambda s: s["status"] != "progressing", timeout=30)
    assert events(done) == ["started", "completed"]
    assert done["state"]["history"][-1]["details"]["challenger_requests"] >= 10
    assert writer.metric("switchyard_stats_source_up", source="prometheus") == 1


def test_the_writer_rolls_back_on_failures_only_another_replica_saw(
    fleet: Callable[[str], Fleet], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    rollout = """rollout:
  steps: [50, 100]
  analysis: {interval: 0.5s, min_requests: 20, max_error_rate: 0.05}
  on_success: hold
"""
    f = fleet(canary_policy("rb", a.url, b.url, (50, 50), rollout))
    writer, follower = f.writer("rb")
    with httpx.Client(timeout=10) as client:
        # Through the follower only: the challenger (x-cohort: beta) answers 500.
        for _ in range(20):
            failed = chat(client, follower, "rb", **{"x-cohort": "beta", "x-sim-status": "500"})
            assert failed.status_code >= 500
        # Prometheus has those failures before the writer sees any traffic of its own.
        failures = 'sum(switchyard_upstream_failed_attempts_total{route="rb"})'
        poll(
            "failures scraped",
            lambda: sum(float(r["value"][1]) for r in f.prom.query(failures)) >= 20,
        )
        for _ in range(60):  # healthy, through the writer: half of it to the challenger
            assert chat(client, writer, "rb").status_code == 200
    view = wait_rollout(writer, "rb", lambda s: s["status"] != "progressing", timeout=30)
    assert view["state"]["status"] == "rolled_back" and events(view) == ["started", "rollback"]
    rollback = view["state"]["history"][-1]
    assert "gate error_rate failed" in rollback["reason"]
    assert rollback["details"]["challenger_requests"] >= 20
    assert view["analysis"]["source"]["kind"] == "prometheus"
    # The writer itself saw no failure: only the fleet's numbers explain the rollback.
    assert writer.metric("switchyard_upstream_failed_attempts_total", route="rb") == 0
    assert follower.metric("switchyard_upstream_failed_attempts_total", route="rb") >= 20
    # The follower applies the stored state: the challenger is out everywhere.
    wait_rollout(follower, "rb", lambda s: s["status"] == "rolled_back", timeout=15)


def test_traffic_only_through_the_follower_promotes_exactly_once(
    fleet: Callable[[str], Fleet], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    rollout = """rollout:
  steps: [50, 100]
  analysis: {interval: 0.5s, min_requests: 15, max_error_rate: 0.05}
  on_success: hold
"""
    f = fleet(canary_policy("pr", a.url, b.url, (50, 50), rollout))
    writer, follower = f.writer("pr")
    # The writer serves nothing: judged on its own counters it would wait forever.
    with Traffic(follower.url, "pr", threads=1, limit=20000):
        view = wait_rollout(writer, "pr", lambda s: s["status"] != "progressing", timeout=40)
    assert events(view) == ["started", "step", "completed"]
    assert writer.metric("switchyard_requests_total", route="pr") == 0
    completed = view["state"]["history"][-1]
    assert completed["details"]["challenger_requests"] >= 15
    # One completion in the fleet: only the writer changes the state.
    followed = wait_rollout(follower, "pr", lambda s: s["status"] == "completed", timeout=15)
    assert events(followed) == events(view)
    total = sum(
        gw.metric("switchyard_rollout_events_total", route="pr", event="completed") for gw in f.both
    )
    assert total == 1


def test_workers_report_every_workers_traffic_through_their_supervisor(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    gw = gateway(
        canary_policy("ab", a.url, b.url, (50, 50), "experiment: {}\n"), extra=("--workers", "2")
    )
    truth: Counter[str] = Counter()
    for _ in range(60):  # a new connection each time: the kernel spreads them
        reply = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "ab", **CHAT})
        assert reply.status_code == 200
        truth[reply.headers["x-switchyard-variant"]] += 1
    # One worker answers (fleet "one"), for both: its statistics are the supervisor's.
    report = experiment(gw, "ab").json()
    served = Counter({row["variant"]: row["served"] for row in report["variants"]})
    assert served == truth and sum(served.values()) == 60
    assert report["source"]["kind"] == "supervisor"
    assert report["source"]["url"].startswith("http://127.0.0.1:")
    assert gw.metric("switchyard_stats_source_up", source="supervisor") == 1


def test_the_shipped_scrape_job_keeps_only_the_gateways_admin_ports(tmp_path: Path) -> None:
    """deploy/monitoring's scrape job, run by a real Prometheus: its relabeling keeps the
    gateway's pods (as deploy/base labels them) on their admin port, and nothing else.

    Debian's Prometheus is built without Kubernetes discovery, so the pods come as static
    targets carrying the labels that discovery would give them."""
    deploy = REPO / "deploy"
    (config_map,) = [
        o
        for o in build(deploy / "monitoring")
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "switchyard-prometheus-scrape"
    ]
    (shipped,) = yaml.safe_load(config_map["data"]["prometheus.yml"])["scrape_configs"]
    assert shipped["job_name"] == "switchyard" and shipped["metrics_path"] == "/metrics"
    assert shipped["kubernetes_sd_configs"] == [{"role": "pod"}]
    (deployment,) = [
        o
        for o in build(deploy / "base")
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "switchyard"
    ]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert ports["admin"] == Settings().admin_port

    meta = "__meta_kubernetes_pod_"
    gateway = {
        f"{meta}label_app_kubernetes_io_name": labels["app.kubernetes.io/name"],
        f"{meta}label_app_kubernetes_io_component": labels["app.kubernetes.io/component"],
        f"{meta}name": "switchyard-7d9f-abcde",
        "__meta_kubernetes_namespace": "prod",
    }
    backend = {**gateway, f"{meta}label_app_kubernetes_io_name": "vllm"}
    job = {k: v for k, v in shipped.items() if k != "kubernetes_sd_configs"}
    job["static_configs"] = [
        {"targets": [f"10.9.0.1:{port}"], "labels": {**gateway, f"{meta}container_port_name": name}}
        for name, port in ports.items()
    ] + [
        {"targets": ["10.9.0.2:8000"], "labels": {**backend, f"{meta}container_port_name": "http"}}
    ]
    prom = Prometheus(tmp_path / "prometheus", [], job="rig", extra_scrape_configs=[job])
    prom.start()
    try:
        kept = poll(
            "the scrape job's targets",
            lambda: [t for t in prom.active_targets() if t["labels"]["job"] == "switchyard"],
        )
        dropped = prom.dropped_targets()
    finally:
        prom.stop()
    (target,) = kept
    assert target["labels"]["instance"] == f"10.9.0.1:{ports['admin']}"
    assert (target["labels"]["namespace"], target["labels"]["pod"]) == (
        "prod",
        "switchyard-7d9f-abcde",
    )
    assert target["scrapeUrl"].endswith(f":{ports['admin']}/metrics")
    assert len(dropped) == len(ports)  # the gateway's other ports, and the backend
