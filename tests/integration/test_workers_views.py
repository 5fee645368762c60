"""`serve --workers 2`: the supervisor's admin answers are the ones a process gives.

- An OpenMetrics scrape of the supervisor carries the workers' trace-id exemplars (the
  newest per bucket) with the same values as its classic scrape.
- The rollout views come from the rollout writer, the only worker that keeps the last
  analysis, whichever worker it is.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar

from tests.otlp_receiver import Receiver, otlp_receiver
from tests.procs import GatewayProc, Simulator, start_gateway

OPENMETRICS = {"accept": "application/openmetrics-text; version=1.0.0"}
BUCKET = "switchyard_request_duration_seconds_bucket"
Key = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as found:
        yield found


@pytest.fixture
def started() -> Iterator[list[GatewayProc]]:
    procs: list[GatewayProc] = []
    yield procs
    for gw in procs:
        gw.proc.stop()
        assert "Traceback" not in gw.proc.output(), gw.proc.output()[-3000:]


def serve(
    started: list[GatewayProc], folder: Path, policy: str, *extra: str, env: dict[str, str]
) -> GatewayProc:
    folder.mkdir()
    (folder / "routes.yaml").write_text(policy)
    gw = start_gateway(folder, "--workers", "2", *extra, env=env)
    started.append(gw)
    deadline = time.monotonic() + 60
    while httpx.get(f"{gw.admin}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the workers did not get ready"
        time.sleep(0.2)
    return gw


def worker_admins(gw: GatewayProc) -> list[str]:
    """The workers' own admin URLs, in the supervisor's order (a reload lists them)."""
    reply = httpx.post(f"{gw.admin}/admin/reload", timeout=30)
    assert reply.status_code == 200, reply.text
    return [w["worker"] for w in reply.json()["workers"]]


def requests_served(admin: str) -> float:
    text = httpx.get(f"{admin}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "switchyard_requests_total"
    )


def openmetrics_samples(text: str) -> dict[Key, tuple[float, Exemplar | None]]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): (s.value, s.exemplar)
        for family in openmetrics_families(text)
        for s in family.samples
    }


def classic_samples(text: str) -> dict[Key, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_openmetrics_scrapes_of_the_supervisor_link_latency_to_traces(
    sims: tuple[Simulator, Simulator],
    receiver: Receiver,
    started: list[GatewayProc],
    tmp_path: Path,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gw-workers",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    policy = f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
"""
    gw = serve(started, tmp_path / "policies", policy, env=env)
    admins = worker_admins(gw)
    assert len(admins) == 2
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    sent: set[str] = set()
    # New connections until both workers served some (the kernel spreads them).
    for _ in range(20):
        for _ in range(10):
            trace = f"{time.time_ns():032x}"[-32:]
            headers = {"traceparent": f"00-{trace}-{'1' * 16}-01"}
            assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers)
            sent.add(trace)
        if all(requests_served(a) > 0 for a in admins):
            break
    assert all(requests_served(a) > 0 for a in admins), "one worker served everything"
    spans = receiver.wait_for(lambda spans: sent <= {s.trace_id for s in spans}, timeout=30)
    exported = {s.trace_id for s in spans}

    scraped = httpx.get(f"{gw.admin}/metrics", headers=OPENMETRICS, timeout=10)
    classic = httpx.get(f"{gw.admin}/metrics", timeout=10)
    workers = [
        openmetrics_samples(httpx.get(f"{a}/metrics", headers=OPENMETRICS, timeout=10).text)
        for a in admins
    ]

    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert scraped.text.endswith("# EOF\n")
    merged = openmetrics_samples(scraped.text)
    exemplars = {k: e for k, (_, e) in merged.items() if k[0] == BUCKET and e is not None}
    assert exemplars, "no exemplar in the supervisor's OpenMetrics scrape"
    for key, exemplar in exemplars.items():
        trace_id = exemplar.labels["trace_id"]
        assert trace_id in sent and trace_id in exported
        # The newest any worker has on that bucket.
        theirs = [w[key][1] for w in workers if key in w and w[key][1] is not None]
        newest = max(theirs, key=lambda e: float(e.timestamp or 0))
        assert trace_id == newest.labels["trace_id"]
    # Every bucket a worker has an exemplar on has one in the merge.
    assert {k for w in workers for k, (_, e) in w.items() if k[0] == BUCKET and e} == set(exemplars)
    # The same values as the classic scrape: the request path's, sample for sample
    # (nothing was served between the two scrapes), and the same series throughout.
    values = classic_samples(classic.text)
    assert set(values) == set(merged)
    # (The span exporter's counters and the loop's task count may move meanwhile.)
    moving = ("switchyard_trace_", "switchyard_event_loop_tasks")
    for key, (value, _) in merged.items():
        assert key[0].startswith(moving) or values[key] == value, key
    duration = [k for k in values if k[0] == BUCKET and ("le", "+Inf") in k[1]]
    assert sum(values[k] for k in duration) == len(sent)
    assert values["switchyard_workers", ()] == 2
    # The classic scrape is as it was: no exemplars, no end marker.
    assert classic.headers["content-type"].startswith("text/plain")
    assert "# EOF" not in classic.text and "trace_id" not in classic.text


def rollouts(url: str, route: str | None = None) -> httpx.Response:
    path = "/admin/rollouts" if route is None else f"/admin/rollouts/{route}"
    return httpx.get(f"{url}{path}", timeout=10)


def writer_of(admins: list[str]) -> tuple[int, dict[str, Any]] | None:
    """The index of the worker that holds the writer lock, and its view."""
    for i, admin in enumerate(admins):
        view: dict[str, Any] = rollouts(admin).json()
        if view["writer"]:
            return i, view
    return None


def test_the_supervisor_shows_the_rollout_writers_analysis(
    sims: tuple[Simulator, Simulator], started: list[GatewayProc], tmp_path: Path
) -> None:
    a, b = sims
    # No traffic: the rollout stays at its first step, the writer's gates waiting.
    policy = f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: rv
variants:
  - {{name: champion, weight: 90, endpoints: ["{a.url}"]}}
  - {{name: challenger, weight: 10, endpoints: ["{b.url}"]}}
rollout:
  steps: [20, 50, 100]
  analysis: {{interval: 0.5s, min_requests: 1000, max_error_rate: 0.01}}
  on_success: hold
"""
    folder = tmp_path / "rollouts"
    gw = serve(started, tmp_path / "policies", policy, "--rollout-dir", str(folder), env={})
    # Make the writer a worker other than the first (the one `fleet="one"` would ask):
    # kill the first while it writes; the other takes the lock, the first comes back.
    for _ in range(3):
        admins = worker_admins(gw)
        deadline = time.monotonic() + 30
        while (found := writer_of(admins)) is None:
            assert time.monotonic() < deadline, "no worker took the writer lock"
            time.sleep(0.2)
        index, view = found
        if index != 0:
            break
        os.kill(int(view["holder"].rsplit("-", 1)[1]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        time.sleep(0.5)  # the supervisor sees the exit within its watch
        while httpx.get(f"{gw.admin}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the killed worker did not come back"
            time.sleep(0.2)
    assert index != 0, "the first worker kept the writer lock"
    writer = admins[index]
    assert rollouts(admins[0], "rv").json()["analysis"] is None  # a follower keeps none

    deadline = time.monotonic() + 30
    while (reply := rollouts(gw.admin, "rv").json())["analysis"] is None:
        assert time.monotonic() < deadline, f"no analysis through the supervisor: {reply}"
        time.sleep(0.2)
    for _ in range(20):
        reply = rollouts(gw.admin, "rv")
        assert reply.status_code == 200 and reply.headers["x-switchyard-worker"] == writer
        view = reply.json()
        assert view["writer"] is True and view["worker"] == writer
        assert view["analysis"]["outcome"] == "wait" and view["analysis"]["reason"]
        assert view["state"]["status"] == "progressing"
        every = rollouts(gw.admin).json()
        assert every["writer"] is True and every["worker"] == writer
        assert [r["route"] for r in every["rollouts"]] == ["rv"]
        assert every["rollouts"][0]["analysis"] is not None
    # A route without a rollout is still every worker's 404.
    missing = rollouts(gw.admin, "nope")
    assert missing.status_code == 404 and "has no rollout" in missing.json()["error"]
