"""List, then watch: keep an in-memory copy of some Kubernetes objects current.

The protocol (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
list once and remember the list's resourceVersion; watch from it; every event (and every
BOOKMARK, which carries nothing but a newer resourceVersion) moves it forward, so a
watch that ends (the server's timeout, a dropped connection, a restarted API server)
resumes exactly where it stopped. When the server has compacted that history it
answers 410 Gone, as an HTTP status or as an ERROR event: the only correct recovery is
to list again, which also catches deletions the gap would have hidden. Other failures
are retried with jittered exponential backoff, resuming from the last version.

The watch uses `kubernetes.aio.watch.Watch` of the official client, always with a
server-side `timeout_seconds`: then the client never retries on its own (its retry of
a 410 reuses the same stale version), and this loop owns every reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.controlplane.k8s.client import Backoff, status_of
from gateway.observability.metrics import GatewayMetrics

Obj = dict[str, Any]  # a Kubernetes object as the API serves it (camelCase JSON)
OnChange = Callable[[Mapping[str, Obj]], Awaitable[None]]
ListCall = Callable[..., Awaitable[Any]]

WATCH_TIMEOUT = 240  # seconds a watch request lasts before the server ends it (< 5 min)


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def version_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class ListWatch:
    """The objects one list call selects, kept current by a watch, keyed by name.

    `on_change` runs after the first list, after every relist and after every event
    that changed an object; it gets a read-only view of all objects. Bookmarks only
    move the resourceVersion.
    """

    def __init__(
        self,
        list_call: ListCall,
        serialize: Callable[[Any], Any],
        *,
        resource: str,
        namespace: str,
        on_change: OnChange,
        metrics: GatewayMetrics,
        logger: logging.Logger,
        field_selector: str | None = None,
        label_selector: str | None = None,
        backoff: Backoff | None = None,
        watch_timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self.resource = resource
        self.objects: dict[str, Obj] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self._list_call = list_call
        self._serialize = serialize
        self._namespace = namespace
        self._selectors: dict[str, str] = {}
        if field_selector:
            self._selectors["field_selector"] = field_selector
        if label_selector:
            self._selectors["label_selector"] = label_selector
        self._on_change = on_change
        self._metrics = metrics
        self._log = logger
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout
        self._needs_list = True
        self._mark(False)

    async def sync(self) -> None:
        """List now (once); raises what the API raised, for callers that must know."""
        await self._list()

    async def run(self) -> None:
        """List (unless `sync` did) and watch until cancelled; never raises otherwise."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                if self._needs_list:
                    await self._list()
                await self._watch()
                self._restart("closed")
                # A server that ends watches at once must not turn this into a busy loop.
                delay = self._backoff.next() if loop.time() - started < 1.0 else 0.0
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if status_of(exc) == 410:
                    # Compacted history: a resume is impossible, only a fresh list is right.
                    # The first relist is immediate; a server that keeps answering 410
                    # gets the backoff like any other failure.
                    self._restart("gone")
                    self._needs_list = True
                    self._log.info("%s: watch expired (410 Gone); listing again", self.resource)
                    if self._backoff.attempt == 0:
                        delay, self._backoff.attempt = 0.0, 1
                    else:
                        delay = self._backoff.next()
                else:
                    self._restart("error")
                    delay = self._backoff.next()
                    self._log.warning(
                        "%s: watch failed (%s); retrying in %.2fs", self.resource, _why(exc), delay
                    )
                self._mark(False)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        listed = await self._list_call(self._namespace, _request_timeout=30.0, **self._selectors)
        data = self._serialize(listed)
        self.objects = {name_of(o): o for o in data.get("items") or ()}
        self.resource_version = str((data.get("metadata") or {}).get("resourceVersion", ""))
        self._needs_list = False
        self._mark(True)
        self.synced.set()
        await self._on_change(self.objects)

    async def _watch(self) -> None:
        from kubernetes.aio import watch

        stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            events = stream.stream(  # type: ignore[no-untyped-call]
                self._list_call,
                self._namespace,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                # The client-side limit only catches a connection that died silently.
                _request_timeout=float(self._watch_timeout + 30),
                **self._selectors,
            )
            async for event in events:
                self._mark(True)
                self._backoff.reset()
                await self._apply(str(event["type"]), event["raw_object"])
        finally:
            await stream.close()  # type: ignore[no-untyped-call]

    async def _apply(self, kind: str, obj: Obj) -> None:
        version = version_of(obj)
        if version:
            self.resource_version = version
        if kind == "BOOKMARK":
            return
        name = name_of(obj)
        if kind == "DELETED":
            if self.objects.pop(name, None) is None:
                return
        elif kind in ("ADDED", "MODIFIED"):
            self.objects[name] = obj
        else:
            return
        await self._on_change(self.objects)

    def _mark(self, synced: bool) -> None:
        self._metrics.kube_synced[self.resource] = synced

    def _restart(self, reason: str) -> None:
        key = (self.resource, reason)
        self._metrics.kube_watch_restarts[key] = self._metrics.kube_watch_restarts.get(key, 0) + 1

    def forget(self) -> None:
        """Drop this watch's metric series (the resource is no longer watched)."""
        self._metrics.kube_synced.pop(self.resource, None)
        for key in [k for k in self._metrics.kube_watch_restarts if k[0] == self.resource]:
            del self._metrics.kube_watch_restarts[key]


def _why(exc: BaseException) -> str:
    status = status_of(exc)
    if status is not None:
        reason = getattr(exc, "reason", "") or ""
        return f"HTTP {status} {reason}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
