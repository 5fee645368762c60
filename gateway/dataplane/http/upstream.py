"""Pooled keep-alive HTTP/1.1 connections to backends, on asyncio Protocols.

This module is the only place where socket errors become gateway errors
(`UpstreamConnectError`, ...); response parsing is delegated to the exchange that owns
the connection for one request, which creates its own `HttpResponseParser` (parser reuse
measured no faster) so the parser's callbacks land directly on the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gateway.dataplane.snapshot import Endpoint
from gateway.errors import UpstreamConnectError, UpstreamOverflow, UpstreamTimeout
from gateway.settings import UpstreamSettings

if TYPE_CHECKING:
    from gateway.observability.metrics import GatewayMetrics


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange that is using it."""

    def feed(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class UpstreamConnection:
    """One TCP connection to a backend; serves one exchange at a time.

    An asyncio protocol by its methods, not by inheritance: compiled, a subclass of
    asyncio.Protocol (an interpreted class) would keep its attributes in a dict.
    """

    __slots__ = ("closed", "endpoint_key", "idle_since", "pool", "served", "sink", "transport")

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.endpoint_key = pool.key
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.served = 0  # responses completed on this connection (0 = fresh)
        self.idle_since = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.feed(data)
        else:
            # Bytes with no request outstanding: the backend is not speaking HTTP/1.1
            # as we understand it, so the connection cannot be trusted for reuse.
            self.close()

    def eof_received(self) -> bool | None:
        return False  # let connection_lost report it; a half-closed backend is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_paused(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, e.g. to cancel backend work for a gone client."""
        self.sink = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class EndpointPool:
    """Idle and active connections to one endpoint (host, port)."""

    __slots__ = ("active", "host", "idle", "key", "port", "settings")

    def __init__(self, host: str, port: int, settings: UpstreamSettings) -> None:
        self.host = host
        self.port = port
        self.key = f"{host}:{port}"
        self.settings = settings
        self.idle: deque[UpstreamConnection] = deque()
        self.active = 0  # connections open or opening, idle ones included

    def take_idle(self, now: float) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # most recently used first: warmest, least likely closed
            if not conn.closed and now - conn.idle_since < self.settings.idle_timeout:
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conn.sink = None
        conn.served += 1
        if conn.closed:
            return
        if len(self.idle) >= self.settings.max_idle:
            conn.close()
            return
        conn.idle_since = now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.active -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def sweep(self, now: float) -> None:
        limit = self.settings.idle_timeout
        while self.idle and now - self.idle[0].idle_since >= limit:
            self.idle.popleft().close()


class UpstreamPool:
    """All endpoint pools of the process, keyed by "host:port", shared by snapshots."""

    def __init__(
        self,
        settings: UpstreamSettings,
        metrics: GatewayMetrics,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._loop = loop
        self._pools: dict[str, EndpointPool] = {}

    def _pool(self, endpoint: Endpoint) -> EndpointPool:
        pool = self._pools.get(endpoint.backend)
        if pool is None:
            pool = self._pools[endpoint.backend] = EndpointPool(
                endpoint.host, endpoint.port, self.settings
            )
        return pool

    def take_idle(self, endpoint: Endpoint, now: float) -> UpstreamConnection | None:
        """An idle keep-alive connection, or None: the plain path needs no await."""
        return self._pool(endpoint).take_idle(now)

    async def connect(self, endpoint: Endpoint, timeout: float) -> UpstreamConnection:
        """Open a new connection, translating every socket failure into a gateway error."""
        pool = self._pool(endpoint)
        if pool.active >= self.settings.max_connections:
            self.metrics.overflow += 1
            raise UpstreamOverflow(
                f"backend {endpoint.backend} has {pool.active} connections open, "
                f"the limit (upstream max_connections={self.settings.max_connections})"
            )
        loop = self._loop or asyncio.get_running_loop()
        pool.active += 1
        factory: Callable[[], Any] = lambda: UpstreamConnection(pool)  # noqa: E731
        try:
            _, opened = await asyncio.wait_for(
                loop.create_connection(factory, pool.host, pool.port), timeout
            )
        except TimeoutError:
            pool.active -= 1
            raise UpstreamTimeout(
                f"connecting to backend {endpoint.backend} took longer than {timeout:g}s"
            ) from None
        except OSError as exc:
            pool.active -= 1
            reason = exc.strerror or type(exc).__name__
            raise UpstreamConnectError(
                f"cannot connect to backend {endpoint.backend}: {reason}"
            ) from None
        except BaseException:
            pool.active -= 1
            raise
        conn: UpstreamConnection = opened
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conn.pool.release(conn, now)

    def sweep(self) -> None:
        now = time.monotonic()
        for pool in list(self._pools.values()):
            pool.sweep(now)

    def close(self) -> None:
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()

    def stats(self) -> dict[str, Any]:
        return {
            key: {"open": p.active, "idle": len(p.idle)} for key, p in sorted(self._pools.items())
        }
