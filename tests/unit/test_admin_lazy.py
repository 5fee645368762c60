"""The admin API is loaded by its first client, and `serve` loads nothing it does not use.

A serving process keeps every module it imports for its whole life (issue 18: RSS per
worker), so `switchyard serve` must not import the admin API, httpx, the ConfigMap
watcher or the other commands' modules before something asks for them; and the admin
port must still be bound at start and answer its first request.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin.lazy import LazyAdmin

REPO = Path(__file__).resolve().parents[2]

# Imported only when needed: the admin API (first admin request), httpx (a registry
# target, tracing, backend probes, webhooks...), the ConfigMap watcher and the other
# subcommands (never, in `serve`).
NOT_AT_START = (
    "httpx",
    "uvicorn",
    "starlette",
    "gateway.admin.app",
    "gateway.admin.server",
    "gateway.controlplane.k8s.configmap",
    "gateway.simulate.cli",
    "gateway.quickstart.demo",
    "gateway.drift.cli",
)


def test_serve_imports_neither_the_admin_api_nor_an_http_client() -> None:
    # What `python -m gateway serve` imports before it runs: the serve parser, gateway.app
    # and the modules its Gateway builds with a policy like the bench's.
    script = (
        "import sys\n"
        "from gateway.cli import build_parser\n"
        "from gateway.app import Gateway, settings_from_args\n"
        "args = build_parser('serve').parse_args(['serve', '--port', '0'])\n"
        "Gateway(settings_from_args(args))\n"
        f"print(','.join(m for m in {NOT_AT_START!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == ""


class App:
    """An admin app that counts how often it was built."""

    def __init__(self) -> None:
        self.built = 0

    def build(self) -> Starlette:
        self.built += 1

        async def livez(_: Request) -> Response:
            return JSONResponse({"status": "alive"})

        return Starlette(routes=[Route("/livez", livez)])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_the_admin_api_is_built_by_its_first_client_and_then_serves() -> None:
    app = App()
    admin = LazyAdmin(app.build, "127.0.0.1", 0, preload=("json",))
    assert await admin.start()
    assert admin.port != 0
    await asyncio.sleep(0.05)
    assert app.built == 0 and not admin.loaded  # bound and listening, nothing loaded
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
        first = await client.get("/livez")  # waits in the backlog while the app loads
        assert first.status_code == 200 and first.json() == {"status": "alive"}
        assert (await client.get("/livez")).status_code == 200
    assert app.built == 1 and admin.loaded
    await admin.stop()
    assert _refused(admin.port)


async def test_first_clients_at_once_are_all_answered() -> None:
    app = App()
    admin = LazyAdmin(app.build, "127.0.0.1", 0)
    assert await admin.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
        replies = await asyncio.gather(*(client.get("/livez") for _ in range(8)))
    assert [r.status_code for r in replies] == [200] * 8
    assert app.built == 1
    await admin.stop()


async def test_a_port_it_cannot_bind_fails_the_start_and_stop_frees_an_unused_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not await LazyAdmin(App().build, "127.0.0.1", port).start()
    assert f"error while attempting to bind on address ('127.0.0.1', {port})" in caplog.text
    app = App()
    admin = LazyAdmin(app.build, "127.0.0.1", 0)
    assert await admin.start()
    await admin.stop()  # no client ever came: nothing was loaded, the port is closed
    assert app.built == 0 and _refused(admin.port)


async def test_an_admin_app_that_cannot_load_closes_the_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = LazyAdmin(App().build, "127.0.0.1", 0, preload=("gateway.no_such_module",))
    assert await admin.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
    # Closed, not held in the backlog forever: the waiting client sees the end.
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        answer = b""
    assert answer == b""
    writer.close()
    assert "admin API could not start" in caplog.text
    assert _refused(admin.port)
    await admin.stop()
