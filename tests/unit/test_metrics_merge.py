"""Merging workers' /metrics: counts add up, per-process views of one fact do not."""

from __future__ import annotations

from gateway.admin.aggregate import merge_expositions


def worker(requests: int, queue: int, running: int, probe_down: int) -> str:
    return (
        "# HELP switchyard_requests_total Requests.\n"
        "# TYPE switchyard_requests_total counter\n"
        f'switchyard_requests_total{{route="r"}} {requests}.0\n'
        "# HELP switchyard_backend_queue_depth Queued.\n"
        "# TYPE switchyard_backend_queue_depth gauge\n"
        f'switchyard_backend_queue_depth{{backend="b:1"}} {queue}.0\n'
        "# HELP switchyard_backend_running Running.\n"
        "# TYPE switchyard_backend_running gauge\n"
        f'switchyard_backend_running{{backend="b:1"}} {running}.0\n'
        "# HELP switchyard_backend_probe_down Down.\n"
        "# TYPE switchyard_backend_probe_down gauge\n"
        f'switchyard_backend_probe_down{{backend="b:1"}} {probe_down}.0\n'
    )


def test_backend_reports_are_not_multiplied_by_workers() -> None:
    # Both workers scraped the same backend: 7 queued, 3 running; one saw it down.
    merged = merge_expositions([worker(10, 7, 3, 0), worker(5, 7, 3, 1)])
    assert 'switchyard_requests_total{route="r"} 15.0' in merged
    assert 'switchyard_backend_queue_depth{backend="b:1"} 7.0' in merged
    assert 'switchyard_backend_running{backend="b:1"} 3.0' in merged
    assert 'switchyard_backend_probe_down{backend="b:1"} 1.0' in merged
