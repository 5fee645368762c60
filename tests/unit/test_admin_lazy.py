"""The admin API is loaded by its first request that is not a probe or a scrape, and `serve`
loads nothing it does not use.

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
import time
from pathlib import Path

import httpx
import pytest
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin.lazy import LazyAdmin
from gateway.admin.probes import ProbeReply

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

        async def echo(request: Request) -> Response:
            return Response(await request.body())

        return Starlette(routes=[Route("/livez", livez), Route("/echo", echo, methods=["POST"])])


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


class Answers:
    """Probe answers as `gateway.admin.probes.Probes.answer` gives them, counted."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def __call__(self, path: str, accept: str) -> ProbeReply | None:
        self.asked.append((path, accept))
        if path == "/metrics":
            return ProbeReply(200, "text/plain; version=0.0.4", b"up 1\n")
        if path == "/livez":
            return ProbeReply(200, "application/json", b'{"status":"probe"}')
        return None


async def test_probes_and_scrapes_are_answered_without_loading_the_admin_api() -> None:
    app, answers = App(), Answers()
    admin = LazyAdmin(app.build, "127.0.0.1", 0, probes=answers)
    assert await admin.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
        scrape = await client.get("/metrics?name=up", headers={"accept": "text/plain"})
        probe = await client.get("/livez")
        head = await client.head("/metrics")
    assert (scrape.status_code, scrape.text) == (200, "up 1\n")
    assert scrape.headers["content-type"] == "text/plain; version=0.0.4"
    assert probe.json() == {"status": "probe"}
    # HEAD: the length of the body it leaves out.
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "5")
    assert answers.asked[0] == ("/metrics", "text/plain")  # the path without its query
    assert app.built == 0 and not admin.loaded
    await admin.stop()
    assert _refused(admin.port)


async def test_the_first_other_request_loads_the_admin_api_on_the_same_connection() -> None:
    app = App()
    admin = LazyAdmin(app.build, "127.0.0.1", 0, probes=Answers())
    assert await admin.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    # Pipelined in one write: a probe, then a request only the admin API answers (here
    # a POST to a probe path: its 405 is Starlette's), then a probe again.
    writer.write(
        b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n"
        b"POST /livez HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
        b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    replies = answer.split(b"HTTP/1.1 ")[1:]
    assert [r.split(b"\r\n", 1)[0] for r in replies] == [
        b"200 OK",
        b"405 Method Not Allowed",
        b"200 OK",
    ]
    assert replies[0].endswith(b'{"status":"probe"}')
    # Once handed over, the connection is uvicorn's: the third reply is the app's.
    assert replies[2].endswith(b'{"status":"alive"}') and b"server: uvicorn" in replies[2]
    assert app.built == 1 and admin.loaded
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
        assert (await client.get("/livez")).json() == {"status": "alive"}  # uvicorn's now
    await admin.stop()
    assert _refused(admin.port)


class SlowApp(App):
    """Takes its time to build, as a real admin API takes to import."""

    def build(self) -> Starlette:
        time.sleep(0.5)
        return super().build()


def _post_in_two_parts(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
        time.sleep(0.2)  # the admin API is loading: the body waits in the kernel
        sock.sendall(b"hello")
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_body_sent_after_its_head_follows_it_to_the_admin_api() -> None:
    # The head alone loads the admin API; the body arrives while it loads and must
    # reach uvicorn after the head that was read before the hand-over, not before it.
    # On uvloop, as a gateway runs: its new transport reads before a caller could
    # pass it anything.
    async def main() -> bytes:
        admin = LazyAdmin(SlowApp().build, "127.0.0.1", 0, probes=Answers())
        assert await admin.start()
        try:
            return await asyncio.to_thread(_post_in_two_parts, admin.port)
        finally:
            await admin.stop()

    answer = uvloop.run(main())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nhello")


async def test_a_probe_connection_kept_alive_is_closed_by_stop() -> None:
    admin = LazyAdmin(App().build, "127.0.0.1", 0, probes=Answers())
    assert await admin.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await reader.readuntil(b'{"status":"probe"}')).startswith(b"HTTP/1.1 200 OK")
    await admin.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # Handed over: a path no probe has, and a probe path with a body (probes have
        # none); the admin API answers both as Starlette does.
        (b"GET /missing HTTP/1.1\r\nhost: x\r\n\r\n", b"404 Not Found"),
        (b"GET /livez HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", None),
        (b"GET /livez HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000, b"431 "),
    ],
    ids=["unknown-path", "body-on-a-probe-path", "head-too-large"],
)
async def test_what_is_not_a_probe_is_the_admin_api_s_or_refused(
    request_bytes: bytes, status: bytes | None
) -> None:
    app = App()
    admin = LazyAdmin(app.build, "127.0.0.1", 0, probes=Answers())
    assert await admin.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(request_bytes)
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    if status == b"431 ":
        assert line.startswith(b"HTTP/1.1 431 ") and app.built == 0
    else:
        # Handed to the admin API, which answers as Starlette does.
        assert app.built == 1
        assert line.startswith(b"HTTP/1.1 " + (status or b"200 OK"))
    await admin.stop()


async def test_an_admin_api_that_cannot_load_says_why_and_probes_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = LazyAdmin(
        App().build, "127.0.0.1", 0, preload=("gateway.no_such_module",), probes=Answers()
    )
    assert await admin.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
        failed = await client.get("/admin/routes")
        assert failed.status_code == 503
        assert "No module named 'gateway.no_such_module'" in failed.text
        assert "admin API could not start" in caplog.text
        # The scrapes and probes a worker lives by are still answered.
        assert (await client.get("/livez")).json() == {"status": "probe"}
        assert (await client.get("/admin/routes")).status_code == 503
    assert not admin.loaded
    await admin.stop()
    assert _refused(admin.port)
