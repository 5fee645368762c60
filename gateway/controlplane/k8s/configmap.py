"""Policies from a Kubernetes ConfigMap, watched through the API rather than mounted.

Why the API and not a volume: a mounted ConfigMap reaches the pod only after the
kubelet's next sync (up to a minute or more), every replica at a different moment, and
nothing tells the author that an edit was rejected. Watching the object applies an
edit within a round trip, and a rejected edit is reported where `kubectl describe
configmap` shows it: as a Warning Event naming every problem, besides the log line
and `switchyard_policy_reloads_total{outcome="rejected"}`. The last good policies keep
serving, exactly as with files.

Every *.yaml / *.yml key of the ConfigMap's `data` is one policy file, as in a
ConfigMap manifest given to `switchyard policy validate`.

An edit that would remove serving routes is held like a file edit (see `reload.py`):
an emptied or truncated key is held, a key deleted on purpose removes its routes. The
annotation `switchyard.io/remove-routes: "chat, embed"` (or `"*"`) confirms removals
that are not a deleted key, such as a route's document cut from a shared key; a held
edit is reported as a Warning Event (`reason: PolicyHeld`) like a rejected one.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.controlplane.k8s.client import (
    Backoff,
    KubeAccess,
    KubeUnavailable,
    identity,
    split_ref,
)
from gateway.controlplane.k8s.watch import WATCH_TIMEOUT, ListWatch, Obj, version_of
from gateway.controlplane.policy.loader import (
    POLICY_SUFFIXES,
    LoadedPolicy,
    PolicyError,
    PolicyProblem,
    configmap_policies,
)
from gateway.controlplane.policy.reload import ReloadResult
from gateway.observability.metrics import GatewayMetrics

Reload = Callable[[str], Awaitable[ReloadResult]]  # PolicyReloader.reload on the live ref
EVENT_REASON = "PolicyRejected"
HELD_REASON = "PolicyHeld"
# Routes this ConfigMap may drop on its next reloads, comma- or space-separated ("*": any).
REMOVE_ANNOTATION = "switchyard.io/remove-routes"
MAX_EVENT_MESSAGE = 1024  # the API server truncates longer Event messages anyway


class ConfigMapPolicies:
    """A `PolicyDocuments` source holding the last version of one ConfigMap.

    `start` lists it once (bounded, so a gateway without API access fails fast and
    visibly); `follow` then watches it and calls `reload` on every change.
    """

    def __init__(
        self,
        ref: str,
        access: KubeAccess,
        metrics: GatewayMetrics,
        logger: logging.Logger,
        *,
        backoff: Backoff | None = None,
        watch_timeout: int = WATCH_TIMEOUT,
        startup_timeout: float = 30.0,
    ) -> None:
        self.namespace, self.name = split_ref(ref, "--policy-configmap")
        self._access = access
        self._metrics = metrics
        self._log = logger
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout
        self._startup_timeout = startup_timeout
        self._object: Obj | None = None
        self._watch: ListWatch | None = None
        self._reload: Reload | None = None
        self._core: Any = None  # CoreV1Api, built by `start`
        # What the last `read` saw: the policy keys (named as problems name them) and
        # the routes the annotation confirms removing.
        self._files: frozenset[str] = frozenset()
        self._confirmed: frozenset[str] = frozenset()

    @property
    def description(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    @property
    def file(self) -> str:
        """How problems name the ConfigMap: `configmap/NS/NAME:data[KEY]:LINE:COL`."""
        return f"configmap/{self.namespace}/{self.name}"

    def read(self) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
        self._files = self._confirmed = frozenset()
        if self._object is None:
            message = f"ConfigMap {self.namespace}/{self.name} not found (or not readable)"
            return [], [PolicyProblem(self.file, 0, 0, "", message)]
        data = self._object.get("data") or {}
        self._files = frozenset(
            f"{self.file}:data[{key}]" for key in data if str(key).endswith(POLICY_SUFFIXES)
        )
        annotations = (self._object.get("metadata") or {}).get("annotations") or {}
        listed = str(annotations.get(REMOVE_ANNOTATION) or "")
        self._confirmed = frozenset(listed.replace(",", " ").split())
        return configmap_policies(data, self.file)

    def changed(self) -> bool:
        return False  # the watch pushes changes; nothing to poll

    def kept(self, file: str) -> bool:
        return file in self._files

    def confirmed_removals(self) -> frozenset[str]:
        return self._confirmed

    async def start(self) -> None:
        """List the ConfigMap, retrying with backoff for up to `startup_timeout`.

        Raises `PolicyError` when the API cannot be reached in time, so the gateway
        refuses to start (Kubernetes restarts it) instead of serving nothing.
        """
        try:
            api = await self._access.client()
        except KubeUnavailable as exc:
            raise PolicyError([PolicyProblem(self.file, 0, 0, "", str(exc))]) from None
        from kubernetes.aio import client

        self._core = client.CoreV1Api(api)
        self._watch = ListWatch(
            self._core.list_namespaced_config_map,
            api.sanitize_for_serialization,
            resource=f"configmap/{self.namespace}/{self.name}",
            namespace=self.namespace,
            field_selector=f"metadata.name={self.name}",
            on_change=self._changed,
            metrics=self._metrics,
            logger=self._log,
            backoff=self._backoff,
            watch_timeout=self._watch_timeout,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        while True:
            try:
                await self._watch.sync()
                self._backoff.reset()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._backoff.next()
                if loop.time() + delay > deadline:
                    message = f"cannot read {self.description}: {exc}"
                    raise PolicyError([PolicyProblem(self.file, 0, 0, "", message)]) from None
                self._log.warning("%s: list failed (%s); retrying", self.description, exc)
                await asyncio.sleep(delay)

    async def follow(self, reload: Reload) -> None:
        """Watch the ConfigMap and reload on every change; runs until cancelled."""
        if self._watch is None:
            raise RuntimeError("ConfigMapPolicies.follow before start")
        self._reload = reload
        await self._watch.run()

    async def _changed(self, objects: Mapping[str, Obj]) -> None:
        self._object = objects.get(self.name)
        if self._reload is None:
            return  # the initial list: the gateway's first load reads it
        version = version_of(self._object) if self._object else "deleted"
        try:
            result = await self._reload(f"{self.description} resourceVersion {version}")
        except Exception:
            # Not a bad policy (those are results, not errors) but a failure while
            # reloading; the watch itself is fine and must not restart for it.
            self._log.exception("reload for %s failed", self.description)
            return
        if self._object is None:
            return
        if result.outcome == "rejected":
            lines = "; ".join(str(p) for p in result.problems)
            await self._report(
                EVENT_REASON, f"policies rejected, last good policies keep serving: {lines}"
            )
        elif result.held is not None:
            await self._report(HELD_REASON, f"policy reload held: {result.held.message}")

    async def _report(self, reason: str, message: str) -> None:
        """A Warning Event on the ConfigMap; never fails the watch."""
        meta = (self._object or {}).get("metadata") or {}
        if len(message) > MAX_EVENT_MESSAGE:
            message = message[: MAX_EVENT_MESSAGE - 3] + "..."
        from kubernetes.aio import client

        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{self.name}.", namespace=self.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1",
                kind="ConfigMap",
                name=self.name,
                namespace=self.namespace,
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=message,
            type="Warning",
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            source=client.V1EventSource(component="switchyard", host=identity()),
            reporting_component="switchyard",
            reporting_instance=identity(),
        )
        try:
            await self._core.create_namespaced_event(self.namespace, event, _request_timeout=10.0)
            self._metrics.kube_events += 1
        except Exception as exc:
            # RBAC without events:create, or the API is away: the log line still says it.
            self._log.warning("could not record a Kubernetes Event (%s): %s", reason, exc)
