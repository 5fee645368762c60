"""The admin API's HTTP server: uvicorn in the background of a gateway or supervisor.

One class for both: a gateway process serves `gateway.admin.app`, the supervisor of
`--workers N` serves `gateway.admin.fleet`, each on `--admin-host`/`--admin-port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator, Sequence

import uvicorn
from starlette.types import ASGIApp


class AdminServer(uvicorn.Server):
    """uvicorn for the admin app, minus its signal handling: the process owns SIGTERM
    (drain), SIGINT and SIGHUP (reload, or pass on to the workers), and uvicorn's
    handlers would replace ours."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        self.host = host
        self.port = port  # the bound one once started (port 0 picks one)
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> bool:
        """Serve in the background; True once listening, False if it cannot (logged).
        `sockets`: already listening ones to serve (`gateway.admin.lazy`), instead of
        binding host and port."""
        self._task = asyncio.get_running_loop().create_task(self._serve_quietly(sockets))
        while not self.started:
            if self._task.done():
                return False
            await asyncio.sleep(0.01)
        for server in self.servers:
            for sock in server.sockets:
                self.port = sock.getsockname()[1]
        return True

    async def _serve_quietly(self, sockets: Sequence[socket.socket] | None) -> None:
        # uvicorn logs why it cannot bind, then calls sys.exit: the caller decides.
        with contextlib.suppress(SystemExit):
            await self.serve(sockets=list(sockets) if sockets is not None else None)

    async def stop(self) -> None:
        """Stop serving and wait until the server has closed."""
        self.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def connection_protocol(self) -> asyncio.Protocol:
        """uvicorn's protocol for a connection accepted elsewhere (`gateway.admin.lazy`
        hands it the connection whose request loaded the admin API): what uvicorn's own
        listener makes for each connection it accepts."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        return protocol
