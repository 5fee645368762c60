"""Issue 15's acceptance: one gateway made of three replicas of `serve --workers 2`.

Every replica is its own process tree on its own loopback ports, configured as the
Kubernetes deployment configures its pods: one fleet secret, feedback claims in one real
Redis, statistics from one real Prometheus scraping the three admin ports, rollout state
in one real MLflow registry, and one writer lock (here the shared rollout folder's flock;
a Lease in a cluster). The tests check the issue's "done when" on that fleet:

- 1,000 requests spread over the replicas, each followed by its feedback sent to another
  replica on a new connection: 1,000 recorded, none lost, every duplicate rejected
  wherever it arrives; the experiment's counts from every replica's admin API equal the
  ground truth exactly;
- a rollout whose challenger fails only behind one replica (one the writer does not run
  in) rolls back; a healthy one promotes once, with one move of the registry alias.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.integration.registry.conftest import serving_tags
from tests.integration.test_rollout import Traffic, events, rollout_state, wait_rollout
from tests.procs import GatewayProc, Simulator, canary_policy, poll, start_gateway
from tests.promrig import Prometheus, free_port
from tests.redisrig import running_redis

REPLICAS = 3
WORKERS = 2
REQUESTS = 1000
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Fleet:
    replicas: list[GatewayProc]
    prom: Prometheus
    rollout_dir: Path
    model: str

    def replica_of_writer(self) -> int:
        """Which replica's process holds the rollout writer lock (its pid's parent is
        that replica's supervisor)."""
        holder = (self.rollout_dir / "writer.lock").read_text().strip()
        pid = int(holder.rsplit("-", 1)[1])
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        (index,) = [i for i, gw in enumerate(self.replicas) if gw.proc.popen.pid == parent]
        return index


def alias_route(route: str, model: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - {{name: champion, weight: 90, target: "models:/{model}@champion"}}
  - {{name: challenger, weight: 10, target: "models:/{model}@challenger"}}
rollout:
  steps: [50, 100]
  analysis: {{interval: 0.5s, min_requests: 20, max_error_rate: 0.05}}
  on_success: promote
"""


@pytest.fixture(scope="module")
def fleet(
    sims: tuple[Simulator, Simulator],
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    a, b = sims
    root = tmp_path_factory.mktemp("fleet")
    model = f"fleet-{os.getpid()}"
    mlflow_client.create_registered_model(model)
    for url in (a.url, b.url):
        mlflow_client.create_model_version(model, source=f"s3://b/{model}", tags=serving_tags(url))
    mlflow_client.set_registered_model_alias(model, "champion", "1")
    mlflow_client.set_registered_model_alias(model, "challenger", "2")
    rollback = """rollout:
  steps: [50, 100]
  analysis: {interval: 0.5s, min_requests: 20, max_error_rate: 0.05}
  on_success: hold
"""
    policies = root / "policies"
    policies.mkdir()
    (policies / "ab.yaml").write_text(
        canary_policy("ab", a.url, b.url, (50, 50), "experiment: {}\n")
    )
    (policies / "rb.yaml").write_text(canary_policy("rb", a.url, b.url, (50, 50), rollback))
    (policies / "promo.yaml").write_text(alias_route("promo", model))
    secret = root / "fleet-secret"
    secret.write_text(os.urandom(32).hex())
    admin_ports = [free_port() for _ in range(REPLICAS)]
    prom = Prometheus(root / "prometheus", [f"127.0.0.1:{p}" for p in admin_ports])
    with ExitStack() as stack, running_redis(root / "redis") as redis:
        args = [
            "--workers",
            str(WORKERS),
            "--fleet-secret-file",
            str(secret),
            "--feedback-store",
            redis.url,
            "--stats-source",
            "prometheus",
            "--prometheus-url",
            prom.url,
            "--registry-uri",
            mlflow_server.uri,
            "--registry-poll-interval",
            "0.5",
            "--rollout-dir",
            str(root / "rollouts"),
        ]

        def start(port: int) -> GatewayProc:
            return start_gateway(policies, *args, "--admin-port", str(port))

        with ThreadPoolExecutor(REPLICAS) as pool:
            replicas = list(pool.map(start, admin_ports))
        for gw in replicas:
            stack.callback(gw.proc.stop)
        prom.start()
        stack.callback(prom.stop)
        prom.wait_up()
        yield Fleet(replicas, prom, root / "rollouts", model)
        for gw in replicas:
            assert "Traceback" not in gw.proc.output(), gw.proc.output()[-3000:]


# 1,000 request/feedback pairs through nine gateway processes on two shared cores: well
# within a minute alone, but CI runs it beside the rest of the suite.
@pytest.mark.timeout(300)
def test_feedback_through_any_replica_counts_once_and_every_replica_reports_the_fleet(
    fleet: Fleet,
) -> None:
    replicas = fleet.replicas
    rng = random.Random(15)
    outcomes = [rng.random() < 0.3 for _ in range(REQUESTS)]

    local = threading.local()
    clients: list[httpx.Client] = []

    def one(i: int) -> tuple[str, str, int]:
        """Request i through replica i % 3, its feedback through the next replica, each
        on a new connection (`connection: close`; one client per thread, so no client
        set-up per call); (variant, feedback id, feedback status)."""
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30, headers={"connection": "close"})
            clients.append(client)
        served = client.post(
            f"{replicas[i % REPLICAS].url}/v1/chat/completions", json={"model": "ab", **CHAT}
        )
        assert served.status_code == 200, served.text
        fid = served.headers["x-request-id"]
        assert fid == served.headers["x-switchyard-feedback-id"]
        answer = client.post(
            f"{replicas[(i + 1) % REPLICAS].url}/v1/feedback",
            json={"request_id": fid, "outcome": outcomes[i]},
        )
        return served.headers["x-switchyard-variant"], fid, answer.status_code

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    for client in clients:
        client.close()
    assert Counter(status for _, _, status in results) == {200: REQUESTS}
    truth_served = Counter(variant for variant, _, _ in results)
    truth_conversions = Counter(v for (v, _, _), won in zip(results, outcomes, strict=True) if won)
    assert set(truth_served) == {"champion", "challenger"}

    # A duplicate is a duplicate wherever it arrives: on the third replica, and again on
    # the one that recorded it.
    for i in range(0, REQUESTS, 20):
        _, fid, _ = results[i]
        for target in ((i + 2) % REPLICAS, (i + 1) % REPLICAS):
            again = httpx.post(
                f"{replicas[target].url}/v1/feedback",
                json={"request_id": fid, "outcome": True},
                timeout=30,
            )
            assert again.status_code == 409, again.text
    # An id this fleet did not sign is unknown everywhere.
    _, fid, _ = results[0]
    head, payload, mac = fid.split(".")
    forged = f"{head}.{payload}.{'A' * len(mac)}"
    for gw in replicas:
        refused = httpx.post(
            f"{gw.url}/v1/feedback", json={"request_id": forged, "outcome": True}, timeout=30
        )
        assert refused.status_code == 404 and "signature" in refused.text

    def report(gw: GatewayProc) -> dict[str, Any] | None:
        got = httpx.get(f"{gw.admin}/admin/experiments/ab", timeout=10)
        if got.status_code != 200:
            return None
        data: dict[str, Any] = got.json()
        rows = {row["variant"]: row for row in data["variants"]}
        served = Counter({name: row["served"] for name, row in rows.items() if row["served"]})
        outcomes_seen = sum(row["outcomes"] for row in rows.values())
        # Every replica's latest scrape in (a slow /metrics under load can miss one).
        covered = data["source"]["processes"] == REPLICAS
        return data if covered and served == truth_served and outcomes_seen == REQUESTS else None

    reports = [
        poll(f"{gw.admin} reports the fleet", partial(report, gw), timeout=60, interval=0.2)
        for gw in replicas
    ]
    for data in reports:
        assert data["source"]["kind"] == "prometheus"
        assert data["source"]["processes"] == REPLICAS  # each supervisor merges its workers
        conversions = {row["variant"]: row["conversions"] for row in data["variants"]}
        assert conversions == {v: truth_conversions[v] for v in conversions}
        assert data["variants"] == reports[0]["variants"]

    # Each supervisor's merged /metrics counts what its workers answered; the fleet sums.
    def counted(result: str) -> float:
        return sum(
            gw.metric("switchyard_feedback_requests_total", result=result) for gw in replicas
        )

    assert counted("recorded") == REQUESTS
    assert counted("duplicate") == 2 * (REQUESTS // 20)
    assert counted("unknown") == REPLICAS


def test_a_challenger_failing_behind_one_replica_rolls_back_the_fleet(fleet: Fleet) -> None:
    replicas = fleet.replicas
    lock = fleet.rollout_dir / "writer.lock"
    poll(
        "a rollout writer",
        lambda: lock.exists() and lock.read_text().strip(),
        timeout=60,
        interval=0.2,
    )
    writer = fleet.replica_of_writer()
    failing = replicas[(writer + 1) % REPLICAS]  # a replica the writer does not run in
    healthy = [gw for gw in replicas if gw is not failing]
    status = "progressing"
    with httpx.Client(timeout=30) as client:
        # Until the writer decides (bounded): the challenger (x-cohort: beta) answers 500
        # behind the failing replica only; everything through the others is healthy.
        for i in range(600):
            failed = client.post(
                f"{failing.url}/v1/chat/completions",
                json={"model": "rb", **CHAT},
                headers={"x-cohort": "beta", "x-sim-status": "500"},
            )
            assert failed.status_code >= 500
            for gw in healthy:
                ok = client.post(f"{gw.url}/v1/chat/completions", json={"model": "rb", **CHAT})
                assert ok.status_code == 200
            if i % 10 == 9:
                status = rollout_state(replicas[writer], "rb")["state"]["status"]
                if status != "progressing":
                    break
    assert status == "rolled_back"
    view = wait_rollout(replicas[writer], "rb", lambda s: s["status"] == "rolled_back")
    # Healthy traffic may carry the first step before the failures are scraped; the
    # failing challenger never completes and is rolled back.
    assert events(view)[0] == "started" and events(view)[-1] == "rollback"
    assert "completed" not in events(view)
    assert "gate error_rate failed" in view["state"]["history"][-1]["reason"]
    # Nothing failed in the writer's replica: only the fleet's numbers explain it.
    assert replicas[writer].metric("switchyard_upstream_failed_attempts_total", route="rb") == 0
    assert failing.metric("switchyard_upstream_failed_attempts_total", route="rb") > 0
    for gw in replicas:  # every replica follows the stored state
        wait_rollout(gw, "rb", lambda s: s["status"] == "rolled_back", timeout=30)


def test_a_healthy_challenger_is_promoted_once_with_one_alias_move(
    fleet: Fleet, mlflow_client: MlflowClient
) -> None:
    replicas = fleet.replicas
    with ExitStack() as stack:
        for gw in replicas:  # traffic through every replica
            stack.enter_context(Traffic(gw.url, "promo", threads=1, limit=4000))
        view = wait_rollout(
            replicas[0], "promo", lambda s: s["status"] != "progressing", timeout=120
        )
    assert view["state"]["status"] == "promoted", view
    assert events(view) == ["started", "step", "promoted"]
    assert mlflow_client.get_model_version_by_alias(fleet.model, "champion").version == "2"
    # One promotion in the whole fleet: the registry's alias moved once, by one writer.
    promoted = sum(
        gw.metric("switchyard_rollout_events_total", route="promo", event="promoted")
        for gw in replicas
    )
    assert promoted == 1
    for gw in replicas:
        wait_rollout(gw, "promo", lambda s: s["status"] == "promoted", timeout=30)
