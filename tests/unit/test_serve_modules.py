"""A serving process never loads prometheus-client, not even once `/metrics` is scraped;
scrapes and probes do not load the admin API either.

prometheus-client's package `__init__` imports its own HTTP server and push gateway
(http.server, urllib.request...): megabytes a worker would keep for its whole life
(issue 18: RSS per worker). The gateway renders `/metrics` itself
(`gateway.observability.exposition`). This runs `python -m gateway serve` as a user
does, through a launcher that prints the process's `sys.modules` as it exits, sends it
traffic, scrapes both formats, stops it and reads what it had loaded.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gateway.observability.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT
from tests.procs import Proc, Simulator, spawn

# sqlite3: only the `sqlite:` feedback claims store loads it (this gateway has memory claims).
NEVER = ("prometheus_client", "http.server", "urllib.request", "sqlite3", "_sqlite3")

# `python -m gateway`, run by runpy as `-m` runs it, and the modules the process holds:
# at exit (SIGTERM drains and returns from main), and when sent SIGUSR1 (which the
# gateway does not use).
LAUNCHER = """\
import atexit
import runpy
import signal
import sys

def modules(when):
    print(f"modules {when}:", " ".join(sorted(sys.modules)), flush=True)

atexit.register(modules, "at exit")
signal.signal(signal.SIGUSR1, lambda *_: modules("now"))
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""
_LISTENING = re.compile(r"switchyard listening on (http://\S+) admin (http://\S+)")
_MODULES = re.compile(r"^modules at exit: (.*)$", re.M)
_MODULES_NOW = re.compile(r"^modules now: (.*)$")


def _modules_now(proc: Proc) -> set[str]:
    proc.signal(signal.SIGUSR1)
    return set(proc.wait_for(_MODULES_NOW, timeout=10).group(1).split())


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
        ready = httpx.get(f"{admin}/readyz", timeout=10)
        alive = httpx.get(f"{admin}/livez", timeout=10)
        scraped = _modules_now(proc)  # scraped and probed: the admin API is not loaded
        routes = httpx.get(f"{admin}/admin/routes", timeout=30)  # now it is
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
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert alive.json() == {"status": "alive"}
    assert routes.status_code == 200 and "chat" in routes.text
    # Probes and scrapes are answered by the admin listener itself (gateway.admin.probes):
    # what keeps hitting a production worker loads neither uvicorn nor Starlette.
    assert "gateway.observability.exposition" in scraped
    assert [m for m in ("gateway.admin.app", "uvicorn", "starlette") if m in scraped] == []
    found = _MODULES.search(proc.output())
    assert found is not None, proc.output()[-3000:]
    modules = set(found.group(1).split())
    # The admin API was loaded (the admin request did): the list is complete.
    assert "gateway.admin.app" in modules
    assert [m for m in NEVER if m in modules] == []
    assert [m for m in modules if m.startswith("prometheus_client")] == []
