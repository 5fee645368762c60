"""A drift worker on another machine, read over HTTP by a gateway's admin API.

With `--drift-status-url URL` (SWITCHYARD_DRIFT_STATUS_URL) the admin drift endpoints
ask the worker's HTTP API (`gateway.drift.api`) at each request, instead of reading the
status and report files of the local drift folder. Nothing here runs on the request
path: only an admin request waits for it, at most `timeout` seconds, and a worker that
does not answer makes that request a 503 (`WorkerUnreachable`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.drift.channel import AddressError
from gateway.importing import import_off_loop

if TYPE_CHECKING:
    import httpx

TIMEOUT = 2.0  # seconds an admin request waits for the worker


class WorkerUnreachable(Exception):
    """The drift worker did not answer (or not with its status)."""


def parse_status_url(text: str) -> str:
    """`http(s)://HOST[:PORT][/PREFIX]`, without a trailing slash; AddressError if not."""
    example = "http://HOST:PORT, such as http://switchyard-drift:9301"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"drift status URL {text!r}: expected {example} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressError(f"drift status URL {text!r}: expected {example}")
    if parts.query or parts.fragment or parts.username or parts.password or port == 0:
        raise AddressError(f"drift status URL {text!r}: expected {example} (host and port only)")
    return text.strip().rstrip("/")


class HttpWorker:
    """The drift worker at `url`, its status limited to the routes this process samples
    (the worker may serve other gateways too)."""

    def __init__(
        self,
        url: str,
        routes: Callable[[], Collection[str]],
        *,
        token: str | None = None,
        timeout: float = TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = parse_status_url(url)
        self._routes = routes
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return self._url

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, on the loop that serves the admin API; httpx is imported
        # then too, not by every gateway that has a --drift-status-url.
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=self._timeout, headers=self._headers, transport=self._transport
            )
        return self._client

    async def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx  # what _http loads anyway; named here for the except clause

        try:
            return await self._http().get(f"{self._url}{path}", params=params)
        except httpx.HTTPError as exc:
            raise WorkerUnreachable(
                f"drift worker at {self._url} unreachable: {type(exc).__name__}: {exc}"
            ) from None

    async def status(self) -> dict[str, Any]:
        reply = await self._get("/status")
        try:
            data = reply.json() if reply.status_code == 200 else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise WorkerUnreachable(
                f"drift worker at {self._url} answered /status with HTTP {reply.status_code}"
            )
        routes = set(self._routes())
        kept = {r: e for r, e in (data.get("routes") or {}).items() if r in routes}
        # It answered now: that is its heartbeat (comparing the clocks of two machines
        # would be the alternative).
        return {**data, "routes": kept, "heartbeat": time.time()}

    async def report(self, route: str, version: str, kind: str = "data") -> bytes | None:
        reply = await self._get("/report", {"route": route, "version": version, "kind": kind})
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise WorkerUnreachable(
                f"drift worker at {self._url} answered /report with HTTP {reply.status_code}"
            )
        return reply.content

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
