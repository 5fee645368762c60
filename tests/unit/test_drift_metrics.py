"""Drift metrics from the worker's status, and their merge across `--workers`."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import generate_latest

from gateway.admin.aggregate import merge_expositions
from gateway.admin.drift import route_view
from gateway.observability.drift_metrics import DriftCounters
from gateway.observability.metrics import GatewayMetrics


def status(heartbeat: float) -> dict[str, Any]:
    return {
        "heartbeat": heartbeat,
        "generation": 3,
        "routes": {
            "chat": {
                "actions": {"kubeflow": {"ok": 1}},
                "versions": {
                    "7": {
                        "window": 120,
                        "received": 500,
                        "episodes": 1,
                        "evaluations": {"ok": 4, "error": 0},
                        "evaluated_at": 1700000000.0,
                        "duration_s": 0.5,
                        "share": 0.5,
                        "drifted": True,
                        "columns": {
                            "a": {"score": 0.01, "drifted": True, "method": "ks"},
                            "b": {"score": 0.4, "drifted": False, "method": "ks"},
                        },
                        "report": "reports/chat/7.html",
                    }
                },
            }
        },
    }


def exposition(counters: DriftCounters) -> str:
    metrics = GatewayMetrics()
    metrics.drift = counters
    return generate_latest(metrics.registry()).decode()


def test_worker_status_becomes_metrics() -> None:
    counters = DriftCounters(sent={("chat", "7"): 10}, buffer_full={("chat", "7"): 2})
    counters.status = lambda: status(time.time())
    text = exposition(counters)
    assert 'switchyard_drift_share{route="chat",version="7"} 0.5' in text
    assert 'switchyard_drift_detected{route="chat",version="7"} 1.0' in text
    assert 'switchyard_drift_column_drifted{column="a",route="chat",version="7"} 1.0' in text
    assert 'method="ks"' in text
    assert 'switchyard_drift_samples_dropped_total{reason="buffer_full"' in text
    assert "switchyard_drift_worker_up 1.0" in text
    assert "switchyard_drift_worker_restarts_total 2.0" in text
    counters.status = lambda: status(time.time() - 60)
    assert "switchyard_drift_worker_up 0.0" in exposition(counters)


def test_workers_merge_sums_own_counters_and_takes_the_worker_facts_once() -> None:
    one = DriftCounters(sent={("chat", "7"): 10})
    two = DriftCounters(sent={("chat", "7"): 5})
    one.status = two.status = lambda: status(time.time())
    merged = merge_expositions([exposition(one), exposition(two)])
    assert 'switchyard_drift_samples_total{route="chat",version="7"} 15.0' in merged
    assert 'switchyard_drift_samples_received_total{route="chat",version="7"} 500.0' in merged
    assert (
        'switchyard_drift_actions_total{action="kubeflow",outcome="ok",route="chat"} 1.0' in merged
    )
    assert 'switchyard_drift_share{route="chat",version="7"} 0.5' in merged


def test_admin_view_of_a_route() -> None:
    counters = DriftCounters(sent={("chat", "7"): 10}, dropped={("chat", "7", "send_failed"): 3})
    view = route_view("chat", status(time.time()), counters)
    assert view is not None
    assert view["worker"]["up"] and view["worker"]["generation"] == 3
    [version] = view["versions"]
    assert version["report_url"] == "/admin/drift/chat/report.html?version=7"
    assert view["this_process"] == {"sent": {"7": 10}, "dropped": {"7": {"send_failed": 3}}}
    assert route_view("other", status(time.time()), counters) is None


def test_the_workers_drops_are_metrics_counted_once_across_processes() -> None:
    def with_drops(heartbeat: float) -> dict[str, Any]:
        found = status(heartbeat)
        found["dropped"] = [
            {"route": "chat", "version": "7", "reason": "unknown_route", "samples": 4},
            {"route": "", "version": "", "reason": "malformed", "samples": 1},
        ]
        return found

    one, two = DriftCounters(), DriftCounters()
    one.status = two.status = lambda: with_drops(time.time())
    name = "switchyard_drift_worker_samples_dropped_total"
    line = f'{name}{{reason="unknown_route",route="chat",version="7"}} 4.0'
    assert line in exposition(one)
    merged = merge_expositions([exposition(one), exposition(two)])
    assert line in merged  # one fact, read by both processes: not 8
    assert f'{name}{{reason="malformed",route="",version=""}} 1.0' in merged
