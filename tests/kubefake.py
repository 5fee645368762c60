"""A protocol-faithful fake Kubernetes API server on loopback, for the real client.

No real API server can run on these machines, so the tests point the official
`kubernetes.aio` client (and gateway processes) at this one through a kubeconfig. It
speaks the parts of the API protocol Switchyard relies on, the way the real server
does (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- list with `fieldSelector=metadata.name=...` and equality `labelSelector`s; the list's
  `metadata.resourceVersion` is the store's current version;
- watch (`?watch=1`) as chunked JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}`: from `resourceVersion` N it replays every later event, "" or "0"
  starts with synthetic ADDED events, BOOKMARKs come when `allowWatchBookmarks` is set,
  `timeoutSeconds` ends the stream; a version older than the compacted history gets
  410 Gone, as an ERROR event with a Status (or as HTTP 410: `gone_as_http`);
- create (409 AlreadyExists, `generateName`), replace with optimistic concurrency
  (409 Conflict when the body's resourceVersion is stale), JSON merge PATCH, DELETE;
- bearer-token authentication (the token is `user`, by default a ServiceAccount), and
  optionally (`rbac=True`) the RBAC authorizer over the Role, RoleBinding, ClusterRole
  and ClusterRoleBinding objects `apply()`d to it: a Role bound by a RoleBinding grants
  only in their namespace, a ClusterRole only where its binding reaches (a RoleBinding's
  namespace, or every namespace through a ClusterRoleBinding), and any request no rule
  allows is 403 Forbidden with the API server's message. Tests apply the deploy/
  manifests themselves, so they prove those grant enough, in the right namespaces.

Test hooks: `drop_watches()` aborts every open watch connection (a dropped TCP
connection), `compact()` forgets history so resuming watches get 410, and
`hold_reads(path_part, count)` answers the next `count` GETs of a path only once all of
them have arrived, so racing clients are certain to read the same resourceVersion.

It runs on its own event loop in a daemon thread, so both synchronous tests driving
gateway processes and asynchronous tests can use it; its methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.kubeproto import (
    CLUSTER_SCOPED,
    CONFIGMAPS,
    ENDPOINTSLICES,
    EVENTS,
    LEASES,
    RBAC,
    RESOURCES,
    TOKEN,
    Obj,
    authorized,
    configmap,
    conflict_response,
    endpoint_slice,
    forbidden_response,
    merge_patch,
    open_stream,
    pairs,
    resource_of,
    selector_of,
    service_account_user,
    status_body,
    status_response,
    verb_of,
)

__all__ = [
    "CONFIGMAPS",
    "ENDPOINTSLICES",
    "EVENTS",
    "LEASES",
    "RBAC",
    "FakeKube",
    "Request",
    "configmap",
    "endpoint_slice",
    "service_account_user",
]


@dataclass
class _Watcher:
    key: tuple[str, str, str]  # group, plural, namespace
    match: Callable[[Obj], bool]
    queue: asyncio.Queue[Obj | None]
    request: web.Request


@dataclass
class Request:
    """One request the fake served: for assertions on what the client did."""

    method: str
    path: str
    query: dict[str, str]
    status: int = 0


@dataclass
class _ReadBarrier:
    path_part: str
    count: int
    all_here: asyncio.Event
    arrived: int = 0


@dataclass
class FakeKube:
    """The fake API server; `start()` it, `kubeconfig(path)` for clients, `stop()` it."""

    token: str = TOKEN
    user: str = service_account_user("default", "default")  # who `token` authenticates as
    bookmark_every: float = 0.0  # seconds between BOOKMARKs on watches that allow them
    gone_as_http: bool = False  # 410 as an HTTP status instead of an ERROR event
    rbac: bool = False  # authorize with the stored RBAC objects; False: allow everything
    requests: list[Request] = field(default_factory=list)
    _store: dict[tuple[str, str, str, str], Obj] = field(default_factory=dict)
    _history: list[tuple[int, str, tuple[str, str, str], Obj]] = field(default_factory=list)
    _rv: int = 100
    _compacted: int = 0
    _watchers: list[_Watcher] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _held: _ReadBarrier | None = None
    port: int = 0

    # Lifecycle -------------------------------------------------------------------

    def start(self) -> FakeKube:
        ready: Future[int] = Future()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                ready.set_result(self._loop.run_until_complete(self._serve()))
            except BaseException as exc:
                ready.set_exception(exc)
                self._loop.close()
                return
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fake-kube", daemon=True)
        self._thread.start()
        self.port = ready.result(10)
        return self

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig pointing at this server (token auth, plain http)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # Test API (thread-safe) ---------------------------------------------------------

    def apply(self, obj: Obj) -> Obj:
        """Create or replace an object (as `kubectl apply` would); returns it as stored."""
        return self._call(self._apply(copy.deepcopy(obj)))  # type: ignore[no-any-return]

    def delete(self, kind_group: tuple[str, str], namespace: str, name: str) -> None:
        self._call(self._delete(kind_group, namespace, name))

    def get(self, kind_group: tuple[str, str], namespace: str, name: str) -> Obj | None:
        async def read() -> Obj | None:
            return copy.deepcopy(self._store.get((*kind_group, namespace, name)))

        return self._call(read())  # type: ignore[no-any-return]

    def items(self, kind_group: tuple[str, str], namespace: str) -> list[Obj]:
        async def read() -> list[Obj]:
            return [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self._store.items())
                if (g, p, ns) == (*kind_group, namespace)
            ]

        return self._call(read())  # type: ignore[no-any-return]

    def drop_watches(self) -> int:
        """Abort every open watch connection mid-stream; returns how many."""

        async def drop() -> int:
            count = 0
            for watcher in list(self._watchers):
                transport = watcher.request.transport
                if transport is not None:
                    transport.abort()
                    count += 1
                watcher.queue.put_nowait(None)
            return count

        return self._call(drop())  # type: ignore[no-any-return]

    def hold_reads(self, path_part: str, count: int) -> None:
        """Answer the next `count` GETs whose path contains `path_part` only once all
        `count` have arrived (for at most 10 s): they all read the same version."""

        async def hold() -> None:
            self._held = _ReadBarrier(path_part, count, asyncio.Event())

        self._call(hold())

    def compact(self) -> int:
        """Forget the event history: a watch resuming from an older version gets 410."""

        async def compact() -> int:
            self._compacted = self._rv
            self._history.clear()
            return self._rv

        return self._call(compact())  # type: ignore[no-any-return]

    def watch_count(self) -> int:
        async def count() -> int:
            return len(self._watchers)

        return self._call(count())  # type: ignore[no-any-return]

    def served(self, method: str, path_part: str, **query: str) -> list[Request]:
        """Requests whose method matches, path contains `path_part` and query includes `query`."""
        return [
            r
            for r in list(self.requests)
            if r.method == method
            and path_part in r.path
            and all(r.query.get(k) == v for k, v in query.items())
        ]

    # Store ------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _apply(self, obj: Obj) -> Obj:
        group, plural = resource_of(obj)
        meta = obj.setdefault("metadata", {})
        if (group, plural) in CLUSTER_SCOPED:
            meta.pop("namespace", None)  # as the API server: no namespace on these
            key = (group, plural, "", meta["name"])
        else:
            key = (group, plural, meta.get("namespace", "default"), meta["name"])
            meta["namespace"] = key[2]
        existing = self._store.get(key)
        meta["uid"] = existing["metadata"]["uid"] if existing else str(uuid.uuid4())
        meta["resourceVersion"] = self._next_rv()
        self._store[key] = obj
        self._emit("MODIFIED" if existing else "ADDED", key, obj)
        return copy.deepcopy(obj)

    async def _delete(self, kind_group: tuple[str, str], namespace: str, name: str) -> Obj | None:
        key = (*kind_group, namespace, name)
        obj = self._store.pop(key, None)
        if obj is not None:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._emit("DELETED", key, obj)
        return obj

    def _emit(self, kind: str, key: tuple[str, str, str, str], obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self._history.append((rv, kind, key[:3], copy.deepcopy(obj)))
        for watcher in list(self._watchers):
            if watcher.key == key[:3] and watcher.match(obj):
                watcher.queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})

    # HTTP -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = Request(request.method, request.path, dict(request.query))
        self.requests.append(record)
        held = self._held
        if held is not None and request.method == "GET" and held.path_part in request.path:
            held.arrived += 1
            if held.arrived >= held.count:
                self._held = None
                held.all_here.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.all_here.wait(), 10.0)
        response = await self._route(request)
        record.status = response.status
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status_response(401, "Unauthorized", "bearer token missing or wrong")
        parts = [p for p in request.path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            return status_response(404, "NotFound", f"no route {request.path}")
        if len(rest) < 3 or rest[0] != "namespaces" or (group, rest[2]) not in RESOURCES:
            return status_response(404, "NotFound", f"the server could not find {request.path}")
        namespace, plural = rest[1], rest[2]
        name = rest[3] if len(rest) > 3 else None
        verb = verb_of(request, name)
        # A list or watch of one name (fieldSelector metadata.name=N) is authorized as a
        # request for N, as the API server's RequestInfo does: resourceNames rules apply.
        requested = name or pairs(request.query.get("fieldSelector", "")).get("metadata.name")
        if self.rbac and not authorized(
            self._rbac_objects, self.user, verb, group, plural, namespace, requested
        ):
            return forbidden_response(self.user, verb, group, plural, namespace, requested)
        handler = {
            "get": self._get,
            "list": self._list,
            "watch": self._watch,
            "create": self._create,
            "update": self._replace,
            "patch": self._patch,
            "delete": self._remove,
        }[verb]
        return await handler(request, group, plural, namespace, name)

    def _rbac_objects(self, plural: str, namespace: str) -> list[Obj]:
        (group,) = {g for g, p in RBAC if p == plural}
        return [
            o
            for (g, p, ns, _), o in self._store.items()
            if (g, p, ns) == (group, plural, namespace)
        ]

    async def _get(self, request: web.Request, g: str, p: str, ns: str, name: str | None) -> Any:
        obj = self._store.get((g, p, ns, name or ""))
        if obj is None:
            return status_response(404, "NotFound", f'{p} "{name}" not found')
        return web.json_response(obj)

    async def _list(self, request: web.Request, g: str, p: str, ns: str, _: str | None) -> Any:
        match = selector_of(request)
        version, kind = RESOURCES[(g, p)]
        items = [
            o for (gg, pp, n, _), o in sorted(self._store.items()) if (gg, pp, n) == (g, p, ns)
        ]
        return web.json_response(
            {
                "kind": f"{kind}List",
                "apiVersion": f"{g}/{version}" if g else version,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [o for o in items if match(o)],
            }
        )

    async def _watch(self, request: web.Request, g: str, p: str, ns: str, _: str | None) -> Any:
        match = selector_of(request)
        since = request.query.get("resourceVersion", "")
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        if since not in ("", "0") and int(since) < self._compacted:
            message = f"too old resource version: {since} ({self._compacted})"
            if self.gone_as_http:
                return status_response(410, "Expired", message)
            response = await open_stream(request)
            error = {"type": "ERROR", "object": status_body(410, "Expired", message)}
            await response.write(json.dumps(error).encode() + b"\n")
            await response.write_eof()
            return response
        watcher = _Watcher((g, p, ns), match, asyncio.Queue(), request)
        if since in ("", "0"):
            backlog = [
                {"type": "ADDED", "object": copy.deepcopy(o)}
                for (gg, pp, n, _), o in sorted(self._store.items())
                if (gg, pp, n) == (g, p, ns) and match(o)
            ]
        else:
            backlog = [
                {"type": kind, "object": copy.deepcopy(o)}
                for rv, kind, key, o in self._history
                if key == (g, p, ns) and rv > int(since) and match(o)
            ]
        for event in backlog:
            watcher.queue.put_nowait(event)
        self._watchers.append(watcher)
        response = await open_stream(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                wait = min(left, self.bookmark_every) if bookmarks and self.bookmark_every else left
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if loop.time() >= deadline:
                        break
                    event = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": RESOURCES[(g, p)][1],
                            "apiVersion": f"{g}/v1" if g else "v1",
                            "metadata": {"resourceVersion": str(self._rv)},
                        },
                    }
                if event is None:  # dropped or shutting down
                    return response
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away (or the transport was aborted)
        finally:
            self._watchers.remove(watcher)
        return response

    async def _create(self, request: web.Request, g: str, p: str, ns: str, _: str | None) -> Any:
        body = await request.json()
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta["namespace"] = ns
        if (g, p, ns, meta.get("name", "")) in self._store:
            return status_response(409, "AlreadyExists", f'{p} "{meta.get("name")}" already exists')
        version, kind = RESOURCES[(g, p)]
        body.setdefault("kind", kind)
        body.setdefault("apiVersion", f"{g}/{version}" if g else version)
        meta.pop("resourceVersion", None)
        return web.json_response(await self._apply(body), status=201)

    async def _replace(
        self, request: web.Request, g: str, p: str, ns: str, name: str | None
    ) -> Any:
        body = await request.json()
        current = self._store.get((g, p, ns, name or ""))
        if current is None:
            return status_response(404, "NotFound", f'{p} "{name}" not found')
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            return conflict_response(p, name)
        body.setdefault("metadata", {})["name"] = name
        body["metadata"]["namespace"] = ns
        return web.json_response(await self._apply(body))

    async def _patch(self, request: web.Request, g: str, p: str, ns: str, name: str | None) -> Any:
        if "json-patch" in request.content_type:
            return status_response(415, "UnsupportedMediaType", "only merge patches are supported")
        patch = await request.json()
        current = self._store.get((g, p, ns, name or ""))
        if current is None:
            return status_response(404, "NotFound", f'{p} "{name}" not found')
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            return conflict_response(p, name)
        merged = merge_patch(copy.deepcopy(current), patch)
        return web.json_response(await self._apply(merged))

    async def _remove(self, request: web.Request, g: str, p: str, ns: str, name: str | None) -> Any:
        obj = await self._delete((g, p), ns, name or "")
        if obj is None:
            return status_response(404, "NotFound", f'{p} "{name}" not found')
        return web.json_response(obj)
