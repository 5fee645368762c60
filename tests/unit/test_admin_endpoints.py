"""One admin API for both modes: a gateway process and the supervisor of `--workers N`
serve the same endpoint table, with the same token checks, on the same server class.

The supervisor's forwarding is checked against real HTTP "workers" (small Starlette apps
on loopback that record what reached them); the process side needs no network.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin.app import build_admin_app
from gateway.admin.endpoints import ENDPOINTS, build_app, features, served
from gateway.admin.fleet import build_fleet_app
from gateway.admin.server import AdminServer
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.stats.sources import LocalSource

TOKEN = "t0ken"


def process_app(settings: Settings, token: str | None = TOKEN) -> Starlette:
    """What `Gateway.run` builds; the handlers are never called, so the parts are stubs."""
    plane: Any = SimpleNamespace(metrics=GatewayMetrics(), ref=None)
    reloader: Any = SimpleNamespace()
    # Gateway.run always has a rollout controller, and with it a statistics source.
    rollouts: Any = SimpleNamespace(stats=LocalSource(plane.metrics))
    return build_admin_app(plane, reloader, token, drift_dir=settings.drift_dir, rollouts=rollouts)


@dataclass
class FakeSupervisor:
    urls: list[str] = field(default_factory=list)
    stopping: bool = False
    count: int = 2

    @property
    def workers(self) -> Sequence[object]:
        return range(self.count)

    def admins(self) -> list[str]:
        return list(self.urls)


def fleet_app(settings: Settings, sup: FakeSupervisor, token: str | None = TOKEN) -> Starlette:
    """What `Supervisor.run` builds."""
    enabled = features(drift_dir=settings.drift_dir, rollouts=True)
    return build_fleet_app(sup, token, enabled=enabled)


def table(app: Starlette) -> list[tuple[str, list[str]]]:
    return [(r.path, sorted(r.methods or ())) for r in app.routes if isinstance(r, Route)]


def concrete(path: str) -> str:
    return path.replace("{route:path}", "r").replace("{action:str}", "pause")


@pytest.mark.parametrize("drift_dir", [".state/drift", ""])
def test_both_modes_serve_the_same_route_table(drift_dir: str) -> None:
    settings = replace(Settings(), drift_dir=drift_dir)
    one = table(process_app(settings))
    fleet = table(fleet_app(settings, FakeSupervisor()))
    assert one == fleet
    expected = served(features(drift_dir=drift_dir, rollouts=True))
    assert [path for path, _ in one] == [e.path for e in expected]
    assert any(path.startswith("/admin/drift") for path, _ in one) == bool(drift_dir)


async def test_both_modes_check_the_token_on_the_same_endpoints() -> None:
    settings = Settings()
    apps = {
        "process": process_app(settings),
        "fleet": fleet_app(settings, FakeSupervisor(["http://127.0.0.1:9"], count=1)),
    }
    guarded = [e for e in served(features(drift_dir="d", rollouts=True)) if e.access == "token"]
    assert {e.name for e in guarded} >= {"reload", "snapshot", "shadow_route", "rollout_command"}
    for mode, app in apps.items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            for e in guarded:
                for headers in ({}, {"authorization": "Bearer wrong"}):
                    reply = await client.request(e.methods[0], concrete(e.path), headers=headers)
                    assert reply.status_code == 401, (mode, e.name)
                    assert reply.headers["www-authenticate"] == "Bearer"
            # Probes stay open in both modes.
            assert (await client.get("/livez")).status_code == 200, mode


def test_the_factory_refuses_a_table_and_handlers_that_disagree() -> None:
    async def handler(_: Request) -> Response:
        return JSONResponse({})

    every = {e.name: handler for e in ENDPOINTS}
    enabled = features(drift_dir="d", rollouts=True)
    assert len(build_app(every, None, enabled=enabled).routes) == len(ENDPOINTS)
    with pytest.raises(ValueError, match="'snapshot' has no handler"):
        build_app({k: v for k, v in every.items() if k != "snapshot"}, None, enabled=enabled)
    with pytest.raises(ValueError, match="no admin endpoint is named 'extra'"):
        build_app({**every, "extra": handler}, None, enabled=enabled)
    with pytest.raises(ValueError, match="'drift' is not served here"):
        build_app(every, None, enabled=features(drift_dir=None, rollouts=True))


# -- The supervisor's answers, from workers over HTTP -----------------------------------


@dataclass
class Worker:
    seen: list[dict[str, Any]] = field(default_factory=list)
    server: AdminServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"


def worker_app(worker: Worker) -> Starlette:
    async def record(request: Request) -> Response:
        seen = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "body": (await request.body()).decode(),
            "headers": dict(request.headers),
        }
        worker.seen.append(seen)
        if request.url.path == "/metrics":
            return Response("# TYPE switchyard_x counter\nswitchyard_x_total 2.0\n")
        return JSONResponse({"outcome": "success", "query": seen["query"]})

    return Starlette(routes=[Route("/{rest:path}", record, methods=["GET", "POST"])])


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    started = [Worker(), Worker()]
    for worker in started:
        worker.server = AdminServer(worker_app(worker), "127.0.0.1", 0)
        assert await worker.server.start()
    yield started
    for worker in started:
        assert worker.server is not None
        await worker.server.stop()


async def test_the_supervisor_answers_from_its_workers(workers: list[Worker]) -> None:
    sup = FakeSupervisor([w.url for w in workers])
    app = fleet_app(Settings(), sup)
    auth = {"authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        metrics = (await client.get("/metrics")).text
        assert "switchyard_x_total 4.0" in metrics and "switchyard_workers 2.0" in metrics
        assert (await client.get("/readyz")).json() == {"status": "ready", "workers": 2}

        # `each`: every worker, the query string and the token passed on.
        reply = await client.post("/admin/reload?remove=a,b", headers=auth)
        assert reply.status_code == 200
        assert [w["result"]["query"] for w in reply.json()["workers"]] == ["remove=a,b"] * 2
        for worker in workers:
            (seen,) = worker.seen[-1:]
            assert seen["path"] == "/admin/reload" and seen["query"] == "remove=a,b"
            assert seen["headers"]["authorization"] == auth["authorization"]
        hook = await client.post(
            "/admin/registry/webhook",
            content=b"{}",
            headers={"x-mlflow-signature": "v1,x", "content-type": "application/json"},
        )
        assert hook.status_code == 200 and len(hook.json()["workers"]) == 2
        assert all(w.seen[-1]["headers"]["x-mlflow-signature"] == "v1,x" for w in workers)

        # `one`: the first worker, with its query and the operator's name.
        before = len(workers[1].seen)
        report = await client.get("/admin/drift/r/report.html?version=2", headers=auth)
        assert report.json()["query"] == "version=2"
        command = await client.post(
            "/admin/rollouts/r/pause", headers={**auth, "x-switchyard-operator": "ana"}
        )
        assert command.status_code == 200
        assert workers[0].seen[-1]["headers"]["x-switchyard-operator"] == "ana"
        assert len(workers[1].seen) == before

        # A worker that is gone: `each` says which, `one` answers 502, not a crash.
        sup.urls.append("http://127.0.0.1:9")
        partial = await client.post("/admin/reload", headers=auth)
        assert partial.status_code == 502
        assert "error" in partial.json()["workers"][2]
        sup.urls[:] = ["http://127.0.0.1:9"]
        assert (await client.get("/admin/snapshot", headers=auth)).status_code == 502
        sup.urls.clear()
        assert (await client.get("/admin/snapshot", headers=auth)).status_code == 503
        assert (await client.get("/readyz")).status_code == 503


# -- The one server class --------------------------------------------------------------


async def test_the_admin_server_reports_its_port_and_a_port_it_cannot_bind() -> None:
    app = Starlette(routes=[Route("/livez", lambda _: JSONResponse({"status": "alive"}))])
    server = AdminServer(app, "127.0.0.1", 0)
    assert await server.start()
    assert server.port != 0
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/livez")).status_code == 200
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # uvicorn exits the process when it cannot bind; the caller must get False instead.
        assert not await AdminServer(app, "127.0.0.1", taken.getsockname()[1]).start()
    await server.stop()
