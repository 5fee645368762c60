"""The admin listener of a gateway process: bound at start, the admin API loaded on demand.

The admin API (uvicorn, Starlette, and the views, drift, rollout and key handlers behind
`/admin/*`) is no part of the data plane, and imports a good share of a worker's memory
(~6 MB, issue 18). So a gateway binds its admin port at start (its address is printed
and a taken port still refuses the start, as before) and accepts its connections with a
small server of its own, which answers the open endpoints that hit a worker all its
life: Prometheus's `/metrics` and the kubelet's `/livez` and `/readyz`
(`gateway.admin.probes`). The first request for anything else loads the admin API: its
modules are imported in a worker thread, so the event loop goes on proxying meanwhile
(an import holds the GIL only in slices; doing it on the loop would stall every request
in flight for the whole import), the app is built on the loop, and uvicorn serves the
listening sockets from then on. The connection that asked, its request bytes included,
is handed to uvicorn as if uvicorn had accepted it; only that first admin request
waits for the import, no data-plane request and no scrape does.

A worker that is only scraped and probed (every production worker, most of its life)
never pays for the admin API; one an operator asks pays at that first question.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from gateway.admin.probes import ProbeReply
    from gateway.admin.server import AdminServer

log = logging.getLogger("switchyard.admin")

BACKLOG = 2048  # uvicorn's default: the connections the kernel queues before accept
MAX_HEAD = 16384  # bytes of request line and headers a probe request may have
IDLE_TIMEOUT = 75.0  # seconds a kept-alive probe connection may idle (nginx's default)
_REASONS = {200: "OK", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}

# path (no query) and Accept header -> the reply, or None: not a probe path.
Answer = Callable[[str, str], "ProbeReply | None"]


class LazyAdmin:
    """The admin API on `host:port`, its modules imported when a request needs them.

    `build` makes the ASGI app on the event loop; `preload` names the modules it imports,
    which are imported first in a worker thread. `probes` answers GET and HEAD of the
    paths it knows (None: every request loads the admin API).
    """

    def __init__(
        self,
        build: Callable[[], ASGIApp],
        host: str,
        port: int,
        *,
        preload: Sequence[str] = (),
        probes: Answer | None = None,
    ) -> None:
        self.build = build
        self.host = host
        self.port = port  # the bound one once started (port 0 picks one)
        self.preload = ("gateway.admin.server", *preload)
        self.probes = probes
        self.server: AdminServer | None = None  # uvicorn, once the admin API is loaded
        self.failed: str | None = None  # why the admin API could not load, if it could not
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.AbstractServer] = []
        self._connections: set[_ProbeConnection] = set()
        self._loading: asyncio.Task[AdminServer | None] | None = None

    @property
    def loaded(self) -> bool:
        """Whether the admin API's modules are in (a request needed them)."""
        return self.server is not None

    async def start(self) -> bool:
        """Bind and listen; True once listening, False if it cannot (logged)."""
        try:
            self._sockets = _bind(self.host, self.port)
        except OSError as exc:
            log.error("%s", exc)
            return False
        self.port = self._sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        # Each acceptor owns a duplicate of its listening socket, so closing it when
        # uvicorn takes over leaves the socket listening (what waits in the backlog
        # then is uvicorn's).
        for sock in self._sockets:
            acceptor = await loop.create_server(
                lambda: _ProbeConnection(self), sock=sock.dup(), backlog=BACKLOG
            )
            self._acceptors.append(acceptor)
        return True

    async def load(self) -> AdminServer | None:
        """The admin API's server, loading it on first use; None if it cannot load."""
        if self.server is not None:
            return self.server
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())
        return await asyncio.shield(self._loading)

    async def _load(self) -> AdminServer | None:
        try:
            await asyncio.to_thread(_import, self.preload)
            from gateway.admin.server import AdminServer

            server = AdminServer(self.build(), self.host, self.port)
            if not await server.start(self._sockets):
                raise RuntimeError("uvicorn did not start")
            for acceptor in self._acceptors:
                acceptor.close()  # new connections are uvicorn's from here on
            self._acceptors = []
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Probes go on being answered; each admin request is told why it cannot be.
            log.exception("admin API could not start on %s:%d", self.host, self.port)
            self.failed = f"{type(exc).__name__}: {exc}"
            return None
        self.server = server
        return server

    async def stop(self) -> None:
        """Stop serving, close the connections this listener holds and its sockets."""
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors = []
        for connection in list(self._connections):
            connection.close()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        if self.server is not None:
            await self.server.stop()
        for sock in self._sockets:
            sock.close()


class _ProbeConnection(asyncio.Protocol):
    """One client of the admin port before uvicorn serves it: probe requests are
    answered here; at the first other request, the connection is handed to uvicorn with
    the bytes of that request and of everything after it."""

    def __init__(self, admin: LazyAdmin) -> None:
        self._admin = admin
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._done = False  # closing, or handed over: nothing more is answered here
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: uvloop's transports are not subclasses of asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        self._admin._connections.add(self)
        self._reset_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._admin._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._done:
            self._serve()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _reset_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(IDLE_TIMEOUT, self.close)

    def _serve(self) -> None:
        """Answer every whole probe request in the buffer, in order; hand the
        connection over at the first request that is not one."""
        while self._transport is not None and not self._done:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._write(431, "text/plain", b"request head too large\n", keep=False)
                return
            probe = _probe_request(bytes(self._buffer[:end]))
            answer = self._admin.probes
            reply = answer(probe.path, probe.accept) if probe and answer else None
            if probe is None or reply is None:
                self._hand_over()
                return
            del self._buffer[: end + 4]
            body = b"" if probe.head_only else reply.body
            self._write(reply.status, reply.content_type, body, probe.keep, len(reply.body))
            self._reset_idle()

    def _write(
        self, status: int, content_type: str, body: bytes, keep: bool, length: int = -1
    ) -> None:
        """One response; `length` is the body's where `body` is left out (HEAD)."""
        assert self._transport is not None
        persistence = "connection: keep-alive\r\n" if keep else "connection: close\r\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"content-type: {content_type}\r\n"
            f"content-length: {len(body) if length < 0 else length}\r\n"
            f"{persistence}\r\n"
        )
        self._transport.write(head.encode("latin-1") + body)
        if not keep:
            self._done = True
            self._transport.close()

    def _hand_over(self) -> None:
        assert self._transport is not None
        self._done = True
        self._transport.pause_reading()
        if self._idle is not None:
            self._idle.cancel()
        self._task = asyncio.get_running_loop().create_task(self._to_uvicorn())

    async def _to_uvicorn(self) -> None:
        server = await self._admin.load()
        transport = self._transport
        if transport is None:  # the client went away meanwhile
            return
        if server is None:
            reason = f"the admin API could not load: {self._admin.failed}\n"
            self._write(503, "text/plain; charset=utf-8", reason.encode(), keep=False)
            return
        # The same connection, as uvicorn's own: a duplicate of its descriptor outlives
        # this transport, whose close then ends nothing (no FIN, nothing unread lost:
        # reading was paused, and what was read goes to uvicorn first).
        sock = transport.get_extra_info("socket")
        handed = socket.socket(fileno=os.dup(sock.fileno()))
        handed.setblocking(False)
        pending = bytes(self._buffer)
        self._buffer.clear()
        transport.abort()
        loop = asyncio.get_running_loop()
        protocol = server.connection_protocol()
        try:
            await loop.connect_accepted_socket(lambda: _Primed(protocol, pending), handed)
        except OSError:
            handed.close()


class _Primed(asyncio.Protocol):
    """Gives `inner` the connection, and the bytes read before it had it, before any
    byte read after: the rest of a request can arrive in the meantime, and must follow
    its head, not precede it. Then steps aside (`set_protocol`)."""

    def __init__(self, inner: asyncio.Protocol, pending: bytes) -> None:
        self._inner = inner
        self._pending = pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)
        if self._pending:
            self._inner.data_received(self._pending)


class _ProbeRequest:
    __slots__ = ("accept", "head_only", "keep", "path")

    def __init__(self, path: str, accept: str, keep: bool, head_only: bool) -> None:
        self.path = path
        self.accept = accept
        self.keep = keep
        self.head_only = head_only


def _probe_request(head: bytes) -> _ProbeRequest | None:
    """The GET or HEAD without a body that `head` asks, or None: anything else (another
    method, a body, a head this does not read) is the admin API's to answer."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] not in ("GET", "HEAD") or not parts[1].startswith("/"):
        return None
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    accept = connection = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or name != name.strip():
            return None
        name = name.lower()
        if name in ("content-length", "transfer-encoding"):
            if name == "transfer-encoding" or value.strip() != "0":
                return None
        elif name == "accept":
            accept = value.strip()
        elif name == "connection":
            connection = value.strip().lower()
    # HTTP/1.1 keeps the connection unless told not to; HTTP/1.0 only when asked to.
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return _ProbeRequest(target.partition("?")[0], accept, keep, method == "HEAD")


def _import(modules: Sequence[str]) -> None:
    for name in modules:
        importlib.import_module(name)


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, as asyncio's `create_server` (which
    uvicorn used) makes them; with port 0, all share the port the first one got."""
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {why}"
                ) from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
