"""Single-writer jobs: a `coordination.k8s.io/v1` Lease with acquire, renew and release.

Gateways are stateless replicas, but some jobs must have exactly one actor at a time:
stepping a progressive rollout's weights, moving a registry alias. Such a job takes a
Lease first. Every write is an update with the resourceVersion that was read
(optimistic concurrency): of two contenders that read the same record, the API server
accepts one write and answers 409 Conflict to the other, so at most one ever holds it.

Expiry is judged the way client-go's leader election judges it, by this process's own
clock: a record that has not changed for `leaseDurationSeconds` since we first saw it
is expired, whatever the holder's clock said when it wrote `renewTime`. Only a record
whose `renewTime` is older than twice its duration by our clock (a holder long dead,
seen by a one-shot command) is taken over without that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.controlplane.k8s.client import KubeAccess, split_ref, status_of


class LeaseUnavailable(Exception):
    """The Lease is held by someone else (named in the message) and did not free up."""


@dataclass(slots=True)
class LeaseHold:
    """A held Lease; `lost` is set if renewing failed and another may now hold it."""

    holder: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)


def _now(clock: Callable[[], float]) -> datetime.datetime:
    moment = datetime.datetime.fromtimestamp(clock(), datetime.UTC)
    # MicroTime needs all six digits; isoformat() drops them when they are zero.
    return moment.replace(microsecond=moment.microsecond or 1)


class LeaseLock:
    """One Lease object, contended for by `identity`.

    `api` is a `kubernetes.aio.client.CoordinationV1Api` (or an awaitable factory of
    one, so the Kubernetes client is built only when the lock is first used).
    """

    def __init__(
        self,
        api: Callable[[], Awaitable[Any]],
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: int = 15,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if duration < 1:
            raise ValueError("lease duration must be at least 1 second")
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self._clock = clock
        self._monotonic = monotonic
        self._log = logger or logging.getLogger("switchyard.lease")
        self._observed: tuple[str, str] | None = None  # (holder, resourceVersion)
        self._observed_at = 0.0
        self.last_holder: str | None = None

    @classmethod
    def from_access(cls, access: KubeAccess, ref: str, identity: str, **options: Any) -> LeaseLock:
        """A lock on the Lease `NAMESPACE/NAME`, through the process's Kubernetes client."""
        namespace, name = split_ref(ref, "lease")

        async def api() -> Any:
            from kubernetes.aio import client

            return client.CoordinationV1Api(await access.client())

        return cls(api, namespace, name, identity, **options)

    async def try_acquire(self) -> bool:
        """Take the Lease if it is free, expired or already ours; False if another holds it."""
        from kubernetes.aio import client

        api = await self._api()
        try:
            lease = await api.read_namespaced_lease(self.name, self.namespace)
        except Exception as exc:
            if status_of(exc) != 404:
                raise
            return await self._create(api, client)
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        self.last_holder = holder or None
        if holder == self.identity:
            return await self._write(api, lease, taking=False)
        if holder and not self._expired(lease):
            return False
        return await self._write(api, lease, taking=True)

    async def renew(self) -> bool:
        """Extend our hold; False if the Lease is no longer ours (we must stop acting)."""
        api = await self._api()
        lease = await api.read_namespaced_lease(self.name, self.namespace)
        holder = (lease.spec.holder_identity if lease.spec else None) or ""
        self.last_holder = holder or None
        if holder != self.identity:
            return False
        return await self._write(api, lease, taking=False)

    async def release(self) -> None:
        """Give the Lease up now, so the next contender need not wait for expiry."""
        api = await self._api()
        lease = await api.read_namespaced_lease(self.name, self.namespace)
        if lease.spec is None or lease.spec.holder_identity != self.identity:
            return
        # As client-go releases: no holder and a 1 s duration; transitions unchanged.
        lease.spec.holder_identity = None
        lease.spec.lease_duration_seconds = 1
        lease.spec.renew_time = _now(self._clock)
        try:
            await api.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as exc:
            if status_of(exc) != 409:  # 409: someone already took it over; fine
                raise

    @contextlib.asynccontextmanager
    async def held(
        self, wait: float = 0.0, *, retry_every: float = 1.0, renew_every: float | None = None
    ) -> AsyncIterator[LeaseHold]:
        """Hold the Lease for the body of an `async with`, renewing it in the background.

        Waits up to `wait` seconds for it, then raises `LeaseUnavailable`. If a renewal
        fails (another process took over), `hold.lost` is set: a job must check it
        before each step that needs exclusivity. The Lease is released on exit.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not await self.try_acquire():
            if loop.time() + retry_every > deadline:
                raise LeaseUnavailable(
                    f"lease {self.namespace}/{self.name} is held by {self.last_holder}"
                )
            await asyncio.sleep(retry_every)
        hold = LeaseHold(self.identity)
        keeper = loop.create_task(self._keep(hold, renew_every or self.duration / 3))
        try:
            yield hold
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not hold.lost.is_set():
                await self.release()

    async def _keep(self, hold: LeaseHold, every: float) -> None:
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await asyncio.sleep(every)
            try:
                if await self.renew():
                    last_ok = loop.time()
                    continue
                self._log.warning(
                    "lease %s/%s lost to %s", self.namespace, self.name, self.last_holder
                )
            except Exception as exc:
                # A blip is survivable while the hold has not run out by our clock.
                if loop.time() - last_ok < self.duration - every:
                    self._log.warning("renewing lease %s failed (%s); retrying", self.name, exc)
                    continue
                self._log.warning(
                    "lease %s/%s expired: renewals kept failing", self.namespace, self.name
                )
            hold.lost.set()
            return

    def _expired(self, lease: Any) -> bool:
        spec = lease.spec
        duration = float(spec.lease_duration_seconds or self.duration)
        key = (spec.holder_identity or "", lease.metadata.resource_version or "")
        now = self._monotonic()
        if key != self._observed:
            self._observed, self._observed_at = key, now
        if now - self._observed_at >= duration:
            return True
        renewed = spec.renew_time or spec.acquire_time
        return renewed is not None and self._clock() - renewed.timestamp() > 2 * duration

    async def _create(self, api: Any, client: Any) -> bool:
        now = _now(self._clock)
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.duration,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            await api.create_namespaced_lease(self.namespace, lease)
        except Exception as exc:
            if status_of(exc) == 409:  # created by another contender a moment ago
                return False
            raise
        self.last_holder = self.identity
        return True

    async def _write(self, api: Any, lease: Any, *, taking: bool) -> bool:
        spec = lease.spec
        now = _now(self._clock)
        if taking:
            spec.holder_identity = self.identity
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.lease_duration_seconds = self.duration
        spec.renew_time = now
        try:
            # The body carries the resourceVersion we read: a concurrent write wins, we 409.
            await api.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as exc:
            if status_of(exc) == 409:
                return False
            raise
        self.last_holder = self.identity
        return True
