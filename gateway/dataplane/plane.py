"""The data plane of one process: listener, fronts, upstream pool and what they share.

`DataPlane` is the top of the request path's layers and the one object that owns them:
it extends `ProxyPlane` (the shadow mirror and `proxy`, which the fronts call), itself
a `RequestHandler` (what the connections call) over `SharedState` (what every request
reads). Nothing below imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, cast

from gateway.dataplane.auth import ApiKeys, AuthRejected
from gateway.dataplane.fronts import Front, OllamaFront, OpenAIFront
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.wire import Request
from gateway.dataplane.kserve import KServeFront
from gateway.dataplane.proxy import ProxyPlane
from gateway.dataplane.services import ServicesFront
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.tap import Tap
from gateway.errors import GatewayError, InternalError, NotFound
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing.accesslog import AccessLog
from gateway.observability.tracing.tracer import Tracer
from gateway.settings import Settings

TICK = 0.1  # seconds between deadline checks: the precision of every timeout
SWEEP_EVERY = 50  # ticks between closing idle upstream connections

errlog = logging.getLogger("switchyard.dataplane")


class DataPlane(ProxyPlane):
    """Everything the request path needs, built once per process and passed in."""

    def __init__(
        self,
        settings: Settings,
        ref: SnapshotRef,
        metrics: GatewayMetrics,
        health: HealthRegistry,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random | None = None,
        tap: Tap | None = None,
        auth: ApiKeys | None = None,
        tracer: Tracer | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        super().__init__(settings, ref, metrics, loop, rng, tap, tracer, access_log)
        self.health = health
        # Client API keys (--api-keys); None: open, and the request path tests only that.
        self.auth = auth
        self.connections: set[ClientConnection] = set()
        self._fronts: list[tuple[bytes, Front]] = [
            (b"/v1/", OpenAIFront(self)),
            (b"/api/", OllamaFront(self)),
            (b"/v2", KServeFront(self)),  # `GET /v2` itself is server metadata
            (b"/services/", ServicesFront(self)),
        ]
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._ticks = 0

    # Serving ------------------------------------------------------------------------

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start accepting clients; returns the bound port (useful with port 0).

        With `reuse_port`, several worker processes bind the same port and the kernel
        spreads new connections across them (SO_REUSEPORT).
        """
        factory: Callable[[], Any] = lambda: ClientConnection(self)  # noqa: E731
        self._server = await self.loop.create_server(
            factory,
            host,
            port,
            backlog=4096,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._ticker = self.loop.call_later(TICK, self._tick)
        # uvloop's Server.sockets is a list where typeshed says tuple; the compiled module
        # checks declared types at run time, so do not let it believe the stub.
        sock = cast(Any, self._server).sockets[0]
        bound: int = sock.getsockname()[1]
        return bound

    def handle(self, conn: ClientConnection, request: Request) -> None:
        path = request.path
        for prefix, front in self._fronts:
            if path.startswith(prefix):
                try:
                    if self.auth is not None:
                        self.auth.check(request, self.now)
                    front.handle(conn, request)
                except AuthRejected as err:  # counted by the key checker, by key name
                    conn.respond_error(err, front.style, extra=err.extra)
                except GatewayError as err:
                    self.metrics.refused(err.code, err.status, err.route)
                    conn.respond_error(err, front.style)
                except Exception:
                    errlog.exception("request %s failed inside the gateway", request.request_id)
                    if conn.exchange is None and conn.current is request:
                        conn.respond_error(
                            InternalError("internal gateway error; see the gateway log"),
                            front.style,
                        )
                    else:
                        conn.close_now()
                return
        missing = NotFound(
            f"no front serves {path.decode('utf-8', 'replace')[:200]}; "
            "OpenAI clients use /v1/ (e.g. POST /v1/chat/completions)"
        )
        self.metrics.refused(missing.code, missing.status, None)
        conn.respond_error(missing, self.default_style)

    # Connections and drain ----------------------------------------------------------

    def connection_opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        if self.draining:
            conn.close_after_write()

    def connection_closed(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections_open -= 1

    def _tick(self) -> None:
        """Enforce every connection's and exchange's deadline; release what saturated
        pools have room for again (or, draining, answer their queues 503); sweep idle
        upstreams."""
        now = self.now = time.monotonic()
        for conn in list(self.connections):
            if conn.deadline <= now:
                conn.on_deadline()
            exchange = conn.exchange
            if exchange is not None and exchange.deadline <= now:
                exchange.on_deadline(now)
        flows = self.health.flows
        if flows.queues:  # routes with flow control: room the load watcher reported
            flows.tick(now, self.draining)
        self._ticks += 1
        if self._ticks % SWEEP_EVERY == 0:
            self.pool.sweep()
        self._ticker = self.loop.call_later(TICK, self._tick)

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> int:
        """Stop accepting, let in-flight work finish up to `timeout`; returns those cut."""
        self.draining = True
        self.stop_listening()
        self.health.flows.tick(time.monotonic(), True)  # requests still waiting: 503 now
        for conn in list(self.connections):
            if conn.exchange is None and not conn.pending:
                conn.close_after_write()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            c.exchange is not None or c.pending for c in self.connections
        ):
            await asyncio.sleep(0.05)
        cut = 0
        for conn in list(self.connections):
            if conn.exchange is not None:
                cut += 1
            conn.close_now()
        if self._ticker is not None:
            self._ticker.cancel()
        await self.shadow.aclose()
        self.pool.close()
        return cut
