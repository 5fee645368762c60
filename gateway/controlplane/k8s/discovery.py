"""Backend discovery: `k8s://namespace/service:port` pools from EndpointSlices.

A Service's ready pods are listed in its EndpointSlices (`discovery.k8s.io/v1`,
labelled `kubernetes.io/service-name`). One list+watch per Service keeps them current;
each change that alters a pool's ready endpoints wakes `wait_changed`, and the reloader
compiles a new snapshot in which every pod is its own endpoint: least-in-flight picking,
outlier ejection and the in-flight metric then work per pod, and a pod that is
terminating (ready: false) stops getting new requests as soon as its slice says so.

Reading EndpointSlices needs only `get/list/watch` on them in the Service's namespace,
and no access to the Service: that is why a numeric port is the pods' port (what the
slices carry), while a named port matches the Service port's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.controlplane.k8s.client import Backoff, KubeAccess, KubeUnavailable
from gateway.controlplane.k8s.watch import WATCH_TIMEOUT, ListWatch, Obj
from gateway.controlplane.policy.fields import ServiceRef, format_endpoint, split_service_url
from gateway.observability.metrics import BackendPod, GatewayMetrics

SERVICE_LABEL = "kubernetes.io/service-name"
SliceKey = tuple[str, str]  # (namespace, service)


def ready_endpoints(ref: ServiceRef, slices: Iterable[Obj]) -> dict[str, BackendPod]:
    """http:// URL -> pod of every ready endpoint serving `ref`'s port, in URL order.

    An endpoint without a `ready` condition counts as ready, as the API defines; one
    that is terminating reports ready false and is left out.
    """
    found: dict[str, BackendPod] = {}
    for piece in slices:
        port = _port_of(ref, piece.get("ports") or ())
        if port is None:
            continue
        for endpoint in piece.get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            addresses = endpoint.get("addresses") or ()
            if not addresses:
                continue
            target = endpoint.get("targetRef") or {}
            pod = str(target.get("name", "")) if target.get("kind") == "Pod" else ""
            # Consumers use the first address; the others are the same pod's (dual stack).
            url = format_endpoint(str(addresses[0]), port, ref.base_path)
            found[url] = BackendPod(ref.namespace, ref.service, pod)
    return dict(sorted(found.items()))


def _port_of(ref: ServiceRef, ports: Iterable[Mapping[str, Any]]) -> int | None:
    for port in ports:
        number = port.get("port")
        if not isinstance(number, int) or (port.get("protocol") or "TCP") != "TCP":
            continue
        if ref.port.isdigit() and number == int(ref.port):
            return number
        if not ref.port.isdigit() and port.get("name") == ref.port:
            return number
    return None


def backend_of(url: str) -> str:
    """The `host:port` label the compiler gives an endpoint URL."""
    rest = url.split("://", 1)[1]
    return rest.split("/", 1)[0]


class EndpointDiscovery:
    """Watches the EndpointSlices of every Service the serving policies name."""

    def __init__(
        self,
        access: KubeAccess,
        metrics: GatewayMetrics,
        logger: logging.Logger,
        *,
        sync_timeout: float = 5.0,
        backoff: Callable[[], Backoff] = Backoff,
        watch_timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self._access = access
        self._metrics = metrics
        self._log = logger
        self._sync_timeout = sync_timeout
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._watches: dict[SliceKey, tuple[ListWatch, asyncio.Task[None]]] = {}
        self._slices: dict[SliceKey, list[Obj]] = {}
        self._pools: dict[str, ServiceRef] = {}
        self._view: dict[str, dict[str, BackendPod]] = {}
        self._changed = asyncio.Event()

    async def ensure(self, pools: Iterable[str]) -> str | None:
        """Watch the Services of `pools` (waiting up to `sync_timeout` for their first
        list); the reason as text when the Kubernetes API cannot be reached at all."""
        refs = {pool: split_service_url(pool) for pool in pools}
        new = {ref.slice_key for ref in refs.values()} - self._watches.keys()
        if new:
            try:
                api = await self._access.client()
            except KubeUnavailable as exc:
                return str(exc)
            from kubernetes.aio import client

            slices_api = client.DiscoveryV1Api(api)
            for key in sorted(new):
                self._start(key, slices_api.list_namespaced_endpoint_slice, api)
        self._pools.update(refs)
        self._recompute()
        waiting = [self._watches[key][0].synced.wait() for key in new]
        if waiting:
            try:
                await asyncio.wait_for(asyncio.gather(*waiting), self._sync_timeout)
            except TimeoutError:
                self._log.warning(
                    "EndpointSlices not listed within %.1fs; their pools stay empty until they are",
                    self._sync_timeout,
                )
        return None

    def _start(self, key: SliceKey, list_call: Any, api: Any) -> None:
        namespace, service = key

        async def changed(objects: Mapping[str, Obj]) -> None:
            self._slices[key] = list(objects.values())
            self._recompute()

        watch = ListWatch(
            list_call,
            api.sanitize_for_serialization,
            resource=f"endpointslices/{namespace}/{service}",
            namespace=namespace,
            label_selector=f"{SERVICE_LABEL}={service}",
            on_change=changed,
            metrics=self._metrics,
            logger=self._log,
            backoff=self._backoff(),
            watch_timeout=self._watch_timeout,
        )
        task = asyncio.get_running_loop().create_task(watch.run())
        self._watches[key] = (watch, task)

    def retain(self, pools: Iterable[str]) -> None:
        """Stop the watches no pool in `pools` needs (a reload removed them)."""
        keep = {pool: self._pools.get(pool) or split_service_url(pool) for pool in pools}
        self._pools = keep
        needed = {ref.slice_key for ref in keep.values()}
        for key in [k for k in self._watches if k not in needed]:
            watch, task = self._watches.pop(key)
            task.cancel()
            watch.forget()
            self._slices.pop(key, None)
        self._recompute()

    def view(self) -> dict[str, tuple[str, ...]]:
        return {pool: tuple(pods) for pool, pods in self._view.items()}

    def pods(self) -> dict[str, BackendPod]:
        return {backend_of(url): pod for found in self._view.values() for url, pod in found.items()}

    async def wait_changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    async def aclose(self) -> None:
        tasks = [task for _, task in self._watches.values()]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _recompute(self) -> None:
        view = {
            pool: ready_endpoints(ref, self._slices.get(ref.slice_key, ()))
            for pool, ref in self._pools.items()
        }
        if view != self._view:
            self._view = view
            self._changed.set()
