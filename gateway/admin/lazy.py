"""The admin listener of a gateway process: bound at start, served from its first connection.

The admin API (uvicorn, Starlette, and the views, drift, rollout and key handlers behind
`/admin/*`) is no part of the data plane, and imports a good share of a worker's memory.
So a gateway binds its admin port at start (its address is printed and a taken port
still refuses the start, as before) but accepts nothing on it: the kernel holds the
first connection in the listen backlog. When one arrives, the admin modules are
imported in a worker thread, so the event loop goes on proxying meanwhile (an import
holds the GIL only in slices; doing it on the loop would stall every request in flight
for the whole import). Then the app is built on the loop, and uvicorn serves the same
sockets, beginning with the connection that was waiting. Only that first admin request
waits for the import; no data-plane request does.

Why on the first connection, not in the background shortly after start: a gateway that
nobody scrapes or asks (a bench worker, a sidecar whose metrics go elsewhere) never pays
for the admin API, and one that is scraped pays at its first scrape, as it would have at
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from gateway.admin.server import AdminServer

log = logging.getLogger("switchyard.admin")

BACKLOG = 2048  # uvicorn's default: the connections the kernel queues before accept


class LazyAdmin:
    """The admin API on `host:port`, its modules imported when its first client connects.

    `build` makes the ASGI app on the event loop; `preload` names the modules it imports,
    which are imported first in a worker thread.
    """

    def __init__(
        self,
        build: Callable[[], ASGIApp],
        host: str,
        port: int,
        *,
        preload: Sequence[str] = (),
    ) -> None:
        self.build = build
        self.host = host
        self.port = port  # the bound one once started (port 0 picks one)
        self.preload = ("gateway.admin.server", *preload)
        self.server: AdminServer | None = None  # uvicorn, once a client connected
        self._sockets: list[socket.socket] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        """Whether the admin API's modules are in (a client has connected)."""
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
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._first_connection)
        return True

    def _first_connection(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
        if self._task is None:
            self._task = loop.create_task(self._serve())

    async def _serve(self) -> None:
        try:
            await asyncio.to_thread(_import, self.preload)
            from gateway.admin.server import AdminServer

            server = AdminServer(self.build(), self.host, self.port)
            self.server = server
            if not await server.start(self._sockets):
                log.error("admin API could not start on %s:%d", self.host, self.port)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The admin port would otherwise hold its clients in the backlog forever.
            log.exception("admin API could not start on %s:%d", self.host, self.port)
            self._close_sockets()

    async def stop(self) -> None:
        """Stop serving (or stop waiting for a first client) and close the sockets."""
        if self.server is not None:
            await self.server.stop()
        elif self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        else:
            loop = asyncio.get_running_loop()
            for sock in self._sockets:
                loop.remove_reader(sock.fileno())
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()


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
