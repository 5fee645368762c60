"""Reload policies without a restart: build a new snapshot, then swap one reference.

A bad edit must never take traffic down, so a reload that finds any problem keeps the
snapshot now serving, logs every problem and counts a rejection. A reload whose
effective policies hash the same as the serving snapshot swaps nothing.

Valid policies can take traffic down too: an emptied, comment-only or truncated file
is valid YAML that defines fewer routes. So a reload that would remove a serving route
nobody asked to remove is *held*: nothing of it is applied, and it stays reported
(log line once per held content, `switchyard_policy_reload_held{reason}`, `GET
/admin/reload`) until the source changes again. A removal is asked for by deleting the
file (or ConfigMap key) that defined the route, by the ConfigMap annotation
`switchyard.io/remove-routes`, or by `POST /admin/reload?remove=ROUTE,...`; a reload
that leaves no routes at all needs the last two (`diff.route_removals`). Every source
goes through this one check, in `_reload`, before anything is compiled.

The file watch waits for a change to settle before reading, so a save made in two
writes (truncate, then write) is read once.

Policies come from a `PolicyDocuments` source (`sources.py`): files, polled by
`watch`, or a ConfigMap, whose watch calls `reload` itself. SIGHUP and the admin API
reload from whichever source the process has.

`k8s://` pools are expanded from EndpointSlices (`discovery.py`): a reload makes sure
their Services are watched before compiling, and `follow_discovery` recompiles the
serving policies whenever the ready pods change.

With a registry, the same build-then-swap path follows registry aliases: the registry
loop re-resolves every target and, when a binding moved, compiles a new snapshot from
the serving policies. One lock orders policy reloads and registry swaps, so neither
can swap in a snapshot built from the other's stale view.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.controlplane.k8s.pools import Discovered, needs_kubernetes, service_pools
from gateway.controlplane.policy.compile import (
    check_policies,
    compile_snapshot,
    policy_version,
)
from gateway.controlplane.policy.diff import (
    HoldReason,
    Removals,
    diff_policies,
    hold_message,
    route_removals,
)
from gateway.controlplane.policy.loader import (
    LoadedPolicy,
    PathsArg,
    PolicyError,
    PolicyProblem,
)
from gateway.controlplane.policy.sources import FileSource, PolicyDocuments, fingerprint
from gateway.controlplane.registry.binding import Binding, VariantKey, needs_of
from gateway.controlplane.registry.resolve import RegistryResolver
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot, SnapshotRef
from gateway.observability.metrics import BackendPod, GatewayMetrics

Outcome = Literal["success", "rejected", "unchanged", "held"]
__all__ = ["Discovery", "Held", "PolicyReloader", "ReloadResult", "fingerprint"]
# A changed policy file is read once it has not changed for SETTLE seconds (or after
# SETTLE_LIMIT seconds of constant change): long enough for any two-write save, short
# next to the poll interval.
SETTLE = 0.25
SETTLE_LIMIT = 5.0


class Discovery(Protocol):
    """What the reloader needs of the EndpointSlice watch (`discovery.EndpointDiscovery`)."""

    async def ensure(self, pools: Iterable[str]) -> str | None:
        """Watch these pools' Services; an error message if Kubernetes is unreachable."""
        ...

    def retain(self, pools: Iterable[str]) -> None:
        """Stop watching Services no pool in `pools` needs."""
        ...

    def view(self) -> dict[str, tuple[str, ...]]:
        """Each watched pool's ready endpoints (http:// URLs)."""
        ...

    def pods(self) -> dict[str, BackendPod]:
        """Which pod each discovered backend (host:port) is."""
        ...

    async def wait_changed(self) -> None:
        """Return once the ready endpoints of some pool changed."""
        ...


@dataclass(frozen=True, slots=True)
class Held:
    """A reload held back because it would remove routes nobody confirmed removing."""

    reason: HoldReason
    routes: tuple[str, ...]  # serving routes it would remove without confirmation
    version: str  # policy hash of the held policies
    source: str  # where they came from (the source's description)
    since: float  # when this content was first held (the reloader's clock)
    message: str  # why, and how to apply it anyway
    changes: tuple[str, ...]  # every diff line the held reload would apply


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did; `version` is the policy hash serving afterwards."""

    outcome: Outcome
    version: str
    previous: str
    reason: str
    problems: tuple[PolicyProblem, ...] = ()
    changes: tuple[str, ...] = ()  # diff lines of a successful reload
    held: Held | None = None  # set when the outcome is "held"


class PolicyReloader:
    """Loads policies from a source (files, or a ConfigMap) and swaps new snapshots into
    a `SnapshotRef`.

    With a `resolver`, registry targets are resolved before compiling and followed
    afterwards by `follow_registry`; with a `discovery`, `k8s://` pools are expanded and
    followed by `follow_discovery`.
    """

    def __init__(
        self,
        source: PolicyDocuments | PathsArg,
        metrics: GatewayMetrics,
        health: HealthRegistry,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.time,
        resolver: RegistryResolver | None = None,
        file_roots: tuple[str, ...] = (),
        discovery: Discovery | None = None,
    ) -> None:
        self.source: PolicyDocuments = (
            source if isinstance(source, PolicyDocuments) else FileSource(source)
        )
        self.discovery = discovery
        self._metrics = metrics
        self._health = health
        self._logger = logger
        self._clock = clock
        self.resolver = resolver
        self._file_roots = file_roots  # folders policies may name files in, besides their own
        self._policies: list[LoadedPolicy] = []
        self._resolved: dict[VariantKey, Binding] = {}
        self._discovered: dict[str, tuple[str, ...]] = {}
        # Variant weights a progressive rollout set (gateway.rollout): every compile
        # applies them, so a reload or alias move mid-rollout keeps the rollout's step.
        self._weights: dict[VariantKey, float] = {}
        self._lock = asyncio.Lock()
        self._held: Held | None = None
        self._last: ReloadResult | None = None

    @property
    def policies(self) -> list[LoadedPolicy]:
        """The policies of the last snapshot this reloader built."""
        return list(self._policies)

    @property
    def held(self) -> Held | None:
        """The reload held now, if the source's latest content is one."""
        return self._held

    @property
    def last(self) -> ReloadResult | None:
        """What the latest reload did (None before the first)."""
        return self._last

    async def load(self) -> RuntimeSnapshot:
        """Build the first snapshot; raises `PolicyError` listing every problem.

        Registry targets that cannot be resolved (registry unreachable, no cache) leave
        their routes answering 503; the registry loop brings them in later.
        """
        async with self._lock:
            policies, _ = self._read()
            discovered = await self._discover(policies)
            resolved = await self._resolve(policies, only_missing=False)
            snapshot = self._compile(policies, resolved, discovered)
            self._serving(policies, snapshot, resolved, discovered)
            return snapshot

    async def reload(
        self, ref: SnapshotRef, reason: str, *, confirm: frozenset[str] = frozenset()
    ) -> ReloadResult:
        """Rebuild from the source and swap on success; never raises for a bad policy.

        `confirm` names routes this reload may remove (`*`: any), besides those the
        source itself confirms; other removals hold the reload.
        """
        async with self._lock:
            result = await self._reload(ref, reason, confirm)
            self._last = result
            if result.outcome != "held":
                self._release_hold(result)
            return result

    async def _reload(self, ref: SnapshotRef, reason: str, confirm: frozenset[str]) -> ReloadResult:
        previous = ref.current.version
        try:
            policies, version = self._read()
            if version == previous:
                self._metrics.reloads["unchanged"] += 1
                self._logger.debug("policy reload (%s): unchanged (%s)", reason, version)
                return ReloadResult("unchanged", version, previous, reason)
            # Asked right after the read, with no await between: the answers describe
            # the content just read, not a later push from a ConfigMap watch.
            removals = route_removals(
                self._policies,
                policies,
                file_kept=self.source.kept,
                confirmed=confirm | self.source.confirmed_removals(),
            )
            if removals.reason is not None:
                return self._hold(removals, removals.reason, policies, version, previous, reason)
            discovered = await self._discover(policies)
            resolved = await self._resolve(policies, only_missing=True)
            snapshot = self._compile(policies, resolved, discovered)
            _keeps_routes_up(ref.current, snapshot, policies)
        except PolicyError as exc:
            self._metrics.reloads["rejected"] += 1
            self._logger.error(
                "policy reload (%s) rejected with %d problem(s); still serving %s",
                reason,
                len(exc.problems),
                previous,
            )
            for problem in exc.problems:
                self._logger.error("policy problem: %s", problem)
            return ReloadResult("rejected", previous, previous, reason, exc.problems)
        changes = tuple(diff_policies(self._policies, policies))
        ref.swap(snapshot)
        self._serving(policies, snapshot, resolved, discovered)
        self._metrics.reloads["success"] += 1
        self._logger.info(
            "policy reload (%s): %s -> %s, %d route(s)",
            reason,
            previous,
            snapshot.version,
            len(snapshot.routes),
        )
        for change in changes:
            self._logger.info("policy change: %s", change)
        return ReloadResult("success", snapshot.version, previous, reason, changes=changes)

    def _hold(
        self,
        removals: Removals,
        why: HoldReason,
        policies: list[LoadedPolicy],
        version: str,
        previous: str,
        reason: str,
    ) -> ReloadResult:
        """Keep serving, and report the held reload: loudly once per held content."""
        self._metrics.reloads["held"] += 1
        self._metrics.reload_held = why
        before = self._held
        same = before is not None and (before.version, before.routes) == (
            version,
            removals.unconfirmed,
        )
        held = Held(
            reason=why,
            routes=removals.unconfirmed,
            version=version,
            source=self.source.description,
            since=before.since if same and before is not None else self._clock(),
            message=hold_message(removals),
            changes=tuple(diff_policies(self._policies, policies)),
        )
        self._held = held
        if same:
            self._logger.debug("policy reload (%s): still held (%s)", reason, version)
        else:
            self._logger.warning(
                "policy reload (%s) held; still serving %s: %s", reason, previous, held.message
            )
        return ReloadResult("held", previous, previous, reason, changes=held.changes, held=held)

    def _release_hold(self, result: ReloadResult) -> None:
        """The source moved on from a held content (applied, reverted or rejected)."""
        if self._held is None:
            return
        self._logger.info(
            "policy reload (%s): the held reload of %s is withdrawn (%s); serving %s",
            result.reason,
            self._held.version,
            result.outcome,
            result.version,
        )
        self._held = None
        self._metrics.reload_held = None

    def changed(self) -> bool:
        """Whether the policy files differ from those of the last load or reload."""
        return self.source.changed()

    async def watch(
        self,
        ref: SnapshotRef,
        interval: float,
        *,
        settle: float = SETTLE,
        settle_limit: float = SETTLE_LIMIT,
    ) -> None:
        """Reload whenever the policy files change, checking every `interval` seconds
        and reading a change once it has settled for `settle` seconds.

        Runs until cancelled. Reloads run on the event loop: policy sets are small and
        compile in milliseconds, and it keeps reloads ordered with admin-API reloads.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                if self.changed():
                    if isinstance(self.source, FileSource):
                        await self.source.settle(settle, settle_limit)
                    await self.reload(ref, "file change")
            except Exception:
                # A watcher that dies silently would leave the gateway deaf to edits; and
                # forgetting the fingerprint makes the next check retry this edit.
                if isinstance(self.source, FileSource):
                    self.source.forget()
                self._logger.exception("policy watch failed; retrying in %.1fs", interval)

    # Registry -------------------------------------------------------------------

    async def refresh_registry(self, ref: SnapshotRef) -> bool:
        """Re-resolve every registry target; swap in a new snapshot if a binding moved.

        Returns whether a new snapshot was swapped in.
        """
        if self.resolver is None:
            return False
        async with self._lock:
            policies = self._policies
            resolved = await self._resolve(policies, only_missing=False) or {}
            if resolved == self._resolved:
                return False
            snapshot = self._compile(policies, resolved, self._serving_discovered())
            for line in _binding_changes(self._resolved, resolved):
                self._logger.info("registry change: %s", line)
            ref.swap(snapshot)
            self._serving(policies, snapshot, resolved, self._serving_discovered())
            return True

    async def follow_registry(self, ref: SnapshotRef, interval: float) -> None:
        """Re-resolve every `interval` seconds, or at once when the resolver is poked.

        Runs until cancelled; a failing round is logged and the next one tries again.
        """
        if self.resolver is None:
            return
        while True:
            await self.resolver.wait(interval)
            try:
                await self.refresh_registry(ref)
            except Exception:
                self._logger.exception("registry refresh failed; retrying in %.1fs", interval)

    # Discovery ------------------------------------------------------------------

    async def refresh_discovery(self, ref: SnapshotRef) -> bool:
        """Recompile the serving policies if a `k8s://` pool's ready pods changed.

        Returns whether a new snapshot was swapped in.
        """
        if self.discovery is None:
            return False
        async with self._lock:
            policies = self._policies
            view = self.discovery.view()
            discovered = {pool: view.get(pool, ()) for pool in service_pools(policies)}
            if discovered == self._discovered:
                return False
            resolved = self._resolved if self.resolver is not None else None
            snapshot = self._compile(policies, resolved, discovered)
            for pool in sorted(discovered):
                if discovered[pool] != self._discovered.get(pool):
                    shown = ", ".join(discovered[pool]) or "no ready endpoints"
                    self._logger.info("discovery change: %s -> %s", pool, shown)
            ref.swap(snapshot)
            self._serving(policies, snapshot, resolved, discovered)
            return True

    async def follow_discovery(self, ref: SnapshotRef) -> None:
        """Recompile whenever EndpointSlices change; runs until cancelled."""
        if self.discovery is None:
            return
        while True:
            await self.discovery.wait_changed()
            try:
                await self.refresh_discovery(ref)
            except Exception:
                self._logger.exception("recompiling for an EndpointSlice change failed")

    # Rollouts ---------------------------------------------------------------------

    @property
    def weights(self) -> dict[VariantKey, float]:
        """The weight overrides every compile applies now."""
        return dict(self._weights)

    async def set_weights(self, ref: SnapshotRef, weights: dict[VariantKey, float]) -> bool:
        """Replace the weight overrides and swap in a snapshot built with them.

        Returns whether a new snapshot was swapped in; on a compile problem the old
        overrides and snapshot stay and `PolicyError` is raised.
        """
        async with self._lock:
            if weights == self._weights or not self._policies:
                self._weights = dict(weights)
                return False
            previous, self._weights = self._weights, dict(weights)
            resolved = self._resolved if self.resolver is not None else None
            try:
                snapshot = self._compile(self._policies, resolved, self._serving_discovered())
            except PolicyError:
                self._weights = previous
                raise
            ref.swap(snapshot)
            self._serving(self._policies, snapshot, resolved, self._serving_discovered())
            return True

    def registry_view(self) -> dict[VariantKey, dict[str, Any]]:
        """Per variant with a registry target: alias -> version -> endpoints, staleness."""
        return self.resolver.view() if self.resolver is not None else {}

    # Building -------------------------------------------------------------------

    async def _resolve(
        self, policies: list[LoadedPolicy], *, only_missing: bool
    ) -> dict[VariantKey, Binding] | None:
        if self.resolver is None:
            return None
        needs = needs_of(policies)
        await self.resolver.refresh(needs, only_missing=only_missing)
        return self.resolver.bind(needs)

    async def _discover(self, policies: list[LoadedPolicy]) -> Discovered | None:
        """The ready pods of every `k8s://` pool in `policies`, watching new Services
        first; None (a problem when compiling) without a way to reach Kubernetes."""
        pools = service_pools(policies)
        if not pools:
            return {}
        if self.discovery is None:
            return None
        error = await self.discovery.ensure(pools)
        if error is not None:
            raise PolicyError(needs_kubernetes(policies, error))
        view = self.discovery.view()
        return {pool: view.get(pool, ()) for pool in pools}

    def _serving_discovered(self) -> Discovered | None:
        return self._discovered if self.discovery is not None else None

    def _compile(
        self,
        policies: list[LoadedPolicy],
        resolved: dict[VariantKey, Binding] | None,
        discovered: Discovered | None,
    ) -> RuntimeSnapshot:
        return compile_snapshot(
            policies,
            metrics=self._metrics,
            health=self._health,
            created_at=self._clock(),
            resolved=resolved,
            discovered=discovered,
            weights=self._weights,
        )

    def _read(self) -> tuple[list[LoadedPolicy], str]:
        policies, problems = self.source.read()
        problems.extend(
            check_policies(
                policies, registry=self.resolver is not None, file_roots=self._file_roots
            )
        )
        if problems:
            raise PolicyError(problems)
        return policies, policy_version(policies)

    def _serving(
        self,
        policies: list[LoadedPolicy],
        snapshot: RuntimeSnapshot,
        resolved: dict[VariantKey, Binding] | None,
        discovered: Discovered | None,
    ) -> None:
        self._policies = policies
        self._resolved = resolved or {}
        self._discovered = {pool: tuple(urls) for pool, urls in (discovered or {}).items()}
        metrics = self._metrics
        metrics.policy_hash = snapshot.version
        metrics.policy_routes = len(snapshot.routes)
        metrics.active_backends = frozenset(_backends(snapshot))
        if self.discovery is not None:
            self.discovery.retain(self._discovered)
            metrics.discovered = {pool: len(urls) for pool, urls in self._discovered.items()}
            metrics.backend_pods = self.discovery.pods()


def _backends(snapshot: RuntimeSnapshot) -> Iterable[str]:
    for route in snapshot.routes.values():
        for variant in route.variants:
            for endpoint in variant.endpoints:
                yield endpoint.backend


def _keeps_routes_up(
    serving: RuntimeSnapshot, candidate: RuntimeSnapshot, policies: list[LoadedPolicy]
) -> None:
    """Reject a reload that would take a serving route down for want of a resolution
    (say, a new alias variant added while the registry is unreachable)."""
    problems = []
    for loaded in policies:
        route = candidate.routes[loaded.policy.route]
        before = serving.routes.get(route.name)
        if route.unavailable and before is not None and not before.unavailable:
            message = f"{route.unavailable}; keeping the serving policy until it resolves"
            problems.append(loaded.source.problem(("variants",), message))
    if problems:
        raise PolicyError(problems)


def _binding_changes(old: dict[VariantKey, Binding], new: dict[VariantKey, Binding]) -> list[str]:
    lines = []
    for key in sorted(new):
        before, after = old.get(key), new[key]
        if before == after:
            continue
        shown_before = _show_binding(before)
        lines.append(f"{key[0]}/{key[1]}: {shown_before} -> {_show_binding(after)}")
    return lines


def _show_binding(binding: Binding | None) -> str:
    if binding is None:
        return "none"
    if isinstance(binding, str):
        return "unresolved"
    return f"version {binding.version} at {', '.join(binding.endpoints)}"
