"""A serving process never loads prometheus-client, not even once `/metrics` is scraped.

prometheus-client's package `__init__` imports its own HTTP server and push gateway
(http.server, urllib.request...): megabytes a worker would keep for its whole life
(issue 18: RSS per worker). The gateway renders `/metrics` itself
(`gateway.observability.exposition`). This runs `python -m gateway serve` as a user
does, through a launcher that prints the process's `sys.modules` as it exits, sends it
traffic, scrapes both formats, stops it and reads what it had loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gateway.observability.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT
from tests.procs import Simulator, spawn

# sqlite3: only the `sqlite:` feedback claims store loads it (this gateway has memory claims).
NEVER = ("prometheus_client", "http.server", "urllib.request", "sqlite3", "_sqlite3")

# `python -m gateway`, run by runpy as `-m` runs it, and at exit (SIGTERM drains and
# returns from main) the modules the process holds.
LAUNCHER = """\
import atexit
import runpy
import sys

atexit.register(lambda: print("modules:", " ".join(sorted(sys.modules)), flush=True))
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""
_LISTENING = re.compile(r"switchyard listening on (http://\S+) admin (http://\S+)")
_MODULES = re.compile(r"^modules: (.*)$", re.M)


def test_a_scraped_gateway_never_imports_prometheus_client(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "chat.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: chat\n"
        f'variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]\n'
    )
    (tmp_path / "launch_serve.py").write_text(LAUNCHER)
    args = ["serve", "--port", "0", "--admin-port", "0", "--grpc-port", "-1"]
    proc = spawn(
        [*args, "--policies", str(policies)],
        env={"PYTHONPATH": str(tmp_path)},
        module="launch_serve",
    )
    try:
        url, admin = proc.wait_for(_LISTENING).groups()
        body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
        for _ in range(3):
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
            assert reply.status_code == 200, reply.text
        text = httpx.get(f"{admin}/metrics", timeout=30)
        om = httpx.get(
            f"{admin}/metrics",
            headers={"accept": "application/openmetrics-text; version=1.0.0"},
            timeout=10,
        )
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
    assert text.headers["content-type"] == CONTENT_TYPE_TEXT
    assert om.headers["content-type"] == CONTENT_TYPE_OPENMETRICS
    served = [
        (s.labels["status_class"], s.value)
        for f in parse_text(text.text)
        if f.name == "switchyard_requests"
        for s in f.samples
        if s.name == "switchyard_requests_total"
    ]
    assert served == [("2xx", 3.0)]
    assert any(f.name == "switchyard_request_duration_seconds" for f in parse_openmetrics(om.text))
    found = _MODULES.search(proc.output())
    assert found is not None, proc.output()[-3000:]
    modules = set(found.group(1).split())
    # The admin API and its renderer were loaded (the scrape did): the list is complete.
    assert {"gateway.admin.app", "gateway.observability.exposition"} <= modules
    assert [m for m in NEVER if m in modules] == []
    assert [m for m in modules if m.startswith("prometheus_client")] == []
