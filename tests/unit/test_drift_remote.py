"""A drift worker on another machine: its HTTP API (status, metrics, reports), and the
gateway's admin drift endpoints reading it, with a 503 when it does not answer."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.admin.drift import drift_handlers
from gateway.drift.api import worker_app
from gateway.drift.channel import UdpAddress
from gateway.drift.feed import DriftFeed
from gateway.drift.remote import HttpWorker
from gateway.drift.status import STATUS_FILE, report_path, write_json
from gateway.observability.drift_metrics import DriftCounters
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings


def status() -> dict[str, Any]:
    return {
        "pid": 4242,
        "generation": 2,
        "heartbeat": time.time() - 3600,  # the worker's clock: another machine's
        "listen": "udp://0.0.0.0:9300",
        "http": "http://0.0.0.0:9301",
        "dropped": [{"route": "", "version": "", "reason": "lost", "samples": 12}],
        "senders": {
            "live": 6,
            "datagrams": {"received": 900, "lost": 3, "late": 0, "duplicate": 0},
            "rows_lost": 12,
            "by_sender": {},
        },
        "routes": {
            "support": {
                "sample": 1.0,
                "actions": {"kubeflow": {"ok": 1}},
                "versions": {
                    "1": {
                        "window": 100,
                        "received": 300,
                        "evaluated_at": 1700000000.0,
                        "share": 1.0,
                        "drifted": True,
                        "episodes": 1,
                        "episode": {"id": "ep1", "run_id": "run-1"},
                        "evaluations": {"ok": 3, "error": 0},
                        "report": "reports/support/1.html",
                    }
                },
                # The labeled window of version 1, with its concept drift report.
                "labels": {"1": {"window": 50, "report": "reports/support/1.labels.html"}},
            },
            "elsewhere": {"versions": {}},  # another fleet's route on the same worker
        },
    }


@pytest.fixture
def drift_dir(tmp_path: Path) -> Path:
    report = report_path(tmp_path, "support", "1")
    report.parent.mkdir(parents=True)
    report.write_text("<html>the report</html>")
    report_path(tmp_path, "support", "1", "labels").write_text("<html>concept drift</html>")
    return tmp_path


@pytest.fixture
async def worker(drift_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = worker_app(status, drift_dir, "s3cret")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://drift"
    ) as client:
        yield client


async def test_the_worker_serves_its_status_metrics_and_reports(
    worker: httpx.AsyncClient,
) -> None:
    reply = await worker.get("/status")
    assert reply.status_code == 200 and reply.json()["senders"]["live"] == 6
    metrics = (await worker.get("/metrics")).text
    assert 'switchyard_drift_share{route="support",version="1"} 1.0' in metrics
    assert "switchyard_drift_worker_datagrams_lost_total 3.0" in metrics
    assert "switchyard_drift_worker_datagrams_received_total 900.0" in metrics
    assert "switchyard_drift_worker_senders 6.0" in metrics
    assert 'reason="lost"' in metrics
    assert "switchyard_drift_samples_total" not in metrics  # the gateways' own counters
    # The report shows the data: it needs the admin token.
    query = {"route": "support", "version": "1"}
    assert (await worker.get("/report", params=query)).status_code == 401
    bearer = {"authorization": "Bearer s3cret"}
    reply = await worker.get("/report", params=query, headers=bearer)
    assert reply.status_code == 200 and reply.text == "<html>the report</html>"
    missing = await worker.get("/report", params={**query, "version": "2"}, headers=bearer)
    assert missing.status_code == 404
    labels = await worker.get("/report", params={**query, "kind": "labels"}, headers=bearer)
    assert labels.status_code == 200 and labels.text == "<html>concept drift</html>"
    bogus = await worker.get("/report", params={**query, "kind": "x"}, headers=bearer)
    assert bogus.status_code == 400
    assert bogus.json() == {"error": "kind must be one of data, labels, not 'x'"}
    assert (await worker.get("/livez")).json() == {"status": "alive"}


def admin_app(counters: DriftCounters, drift_dir: Path) -> Starlette:
    handlers = drift_handlers(drift_dir, counters)
    return Starlette(
        routes=[
            Route("/admin/drift", handlers["drift"]),
            Route("/admin/drift/{route:path}/report.html", handlers["drift_report"]),
            Route("/admin/drift/{route:path}", handlers["drift_route"]),
        ]
    )


async def test_the_admin_api_reads_a_remote_worker(drift_dir: Path, tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=worker_app(status, drift_dir, "s3cret"))
    remote = HttpWorker(
        "http://drift:9301", lambda: ["support"], token="s3cret", transport=transport
    )
    counters = DriftCounters(sent={("support", "1"): 50}, remote=remote)
    empty = tmp_path / "gateway-drift"  # this gateway's own folder has nothing
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=admin_app(counters, empty)), base_url="http://gw"
    ) as admin:
        overview = (await admin.get("/admin/drift")).json()
        assert list(overview["routes"]) == ["support"]  # not another fleet's route
        assert overview["worker"]["up"] is True  # it answered now, whatever its clock
        assert overview["worker"]["listen"] == "udp://0.0.0.0:9300"
        view = (await admin.get("/admin/drift/support")).json()
        [version] = view["versions"]
        assert version["episode"] == {"id": "ep1", "run_id": "run-1"}
        assert view["this_process"]["sent"] == {"1": 50}
        report = await admin.get(version["report_url"])
        assert report.status_code == 200 and report.text == "<html>the report</html>"
        assert report.headers["content-type"].startswith("text/html")
        # The labeled window's concept drift report, through the same proxy.
        labels_url = view["labels"]["1"]["report_url"]
        assert labels_url == "/admin/drift/support/report.html?version=1&kind=labels"
        concept = await admin.get(labels_url)
        assert concept.status_code == 200 and concept.text == "<html>concept drift</html>"
        unknown = await admin.get("/admin/drift/support/report.html?version=2&kind=labels")
        assert unknown.status_code == 404
    await remote.aclose()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


async def test_an_unreachable_worker_is_a_clear_503(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    remote = HttpWorker(url, lambda: ["support"], timeout=1.0)
    counters = DriftCounters(remote=remote)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=admin_app(counters, tmp_path)), base_url="http://gw"
    ) as admin:
        for path in ("/admin/drift", "/admin/drift/support", "/admin/drift/support/report.html"):
            reply = await admin.get(path)
            assert reply.status_code == 503, path
            assert reply.json()["error"].startswith(f"drift worker at {url} unreachable")
    await remote.aclose()


def test_gateways_leave_a_remote_workers_metrics_to_its_own_scrape(tmp_path: Path) -> None:
    # R replicas repeating one worker's counters would make sums over pods R times too
    # large: with a remote worker a gateway exports only what it sampled and sent, and
    # starts no worker of its own.
    write_json(tmp_path / STATUS_FILE, status())  # even with a status file lying around
    settings = Settings(
        drift_dir=str(tmp_path),
        drift_worker_address="udp://127.0.0.1:9300",
        drift_status_url="http://127.0.0.1:9301",
    )
    metrics = GatewayMetrics()
    feed = DriftFeed(settings, metrics, lambda: [])
    try:
        assert feed.manager is None and feed.sender.address == UdpAddress("127.0.0.1", 9300)
        assert metrics.drift.remote is feed.remote and metrics.drift.status is None
        metrics.drift.sent[("support", "1")] = 5
        samples = [
            line
            for line in generate_latest(metrics.registry()).decode().splitlines()
            if line.startswith("switchyard_drift")
        ]
        assert samples == ['switchyard_drift_samples_total{route="support",version="1"} 5.0']
    finally:
        feed.sender.close()
    local = DriftFeed(Settings(drift_dir=str(tmp_path)), GatewayMetrics(), lambda: [])
    assert local.manager is not None and local.remote is None  # one machine: as before
    local.sender.close()
