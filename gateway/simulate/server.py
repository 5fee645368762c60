"""The simulator server: listen, hand each connection to `HttpConnection`, shut down.

`start_server(handler, ...)` runs any `Handler` (see `exchange.py`); the protocol
simulators (`serve_openai`, ...) are thin wrappers that build their handler first.
"""

from __future__ import annotations

import asyncio

from gateway.simulate.connection import HttpConnection, ServerState
from gateway.simulate.exchange import Handler
from gateway.simulate.faults import FaultInjector
from gateway.simulate.stats import SimStats


class SimServer:
    """A running simulator: where it listens, its counters, its fault rules."""

    def __init__(self, server: asyncio.Server, state: ServerState, host: str, port: int) -> None:
        self._server = server
        self._state = state
        self.host = host
        self.port = port

    @property
    def name(self) -> str:
        """The instance name sent in every `x-sim-name` header."""
        return self._state.name

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:8001` (append `/v1` for the OpenAI SDK)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def stats(self) -> SimStats:
        """Live request counters (also served at `GET /sim/stats`)."""
        return self._state.stats

    @property
    def faults(self) -> FaultInjector:
        """Live fault rules (also at `GET/POST /sim/faults`)."""
        return self._state.faults

    async def close(self) -> None:
        """Stop listening, drop every connection and cancel in-flight responses."""
        self._server.close()
        for connection in list(self._state.connections):
            connection.shutdown()
        tasks = list(self._state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_server(
    handler: Handler,
    *,
    stats: SimStats,
    faults: FaultInjector,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
) -> SimServer:
    """Listen on `host:port` (0 picks a free port) and answer with `handler`.

    `name` defaults to `sim-<port>`; `stats` and `faults` are the objects the handler was
    built with, so `/sim/*` and the handler see the same counters and rules.
    """
    state = ServerState(handler, stats, faults)
    if name is not None:
        state.set_name(name)  # a bad name fails before anything listens
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(state), host, port, backlog=4096)
    bound_port = int(server.sockets[0].getsockname()[1])
    if name is None:
        # No await since binding: no connection is served before the name is set.
        state.set_name(f"sim-{bound_port}")
    return SimServer(server, state, host, bound_port)
