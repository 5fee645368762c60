"""Reload policies without a restart: build a new snapshot, then swap one reference.

A bad edit must never take traffic down, so a reload that finds any problem keeps the
snapshot now serving, logs every problem and counts a rejection. A reload whose
effective policies hash the same as the serving snapshot swaps nothing.

The file watcher polls (path, mtime, size) of the policy files instead of using inotify:
no extra dependency, and it sees Kubernetes ConfigMap updates, which arrive as an atomic
symlink swap that inotify watches on the files themselves miss.

With a registry, the same build-then-swap path follows registry aliases: the registry
loop re-resolves every target and, when a binding moved, compiles a new snapshot from
the serving policies. One lock orders policy reloads and registry swaps, so neither
can swap in a snapshot built from the other's stale view.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.controlplane.binding import Binding, VariantKey, needs_of
from gateway.controlplane.compile import (
    check_policies,
    compile_snapshot,
    policy_version,
)
from gateway.controlplane.diff import diff_policies
from gateway.controlplane.loader import (
    LoadedPolicy,
    PathsArg,
    PolicyError,
    PolicyProblem,
    collect_policies,
    policy_files,
)
from gateway.controlplane.resolve import RegistryResolver
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot, SnapshotRef
from gateway.observability.metrics import GatewayMetrics

Outcome = Literal["success", "rejected", "unchanged"]
Fingerprint = frozenset[tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did; `version` is the policy hash serving afterwards."""

    outcome: Outcome
    version: str
    previous: str
    reason: str
    problems: tuple[PolicyProblem, ...] = ()
    changes: tuple[str, ...] = ()  # diff lines of a successful reload


def fingerprint(paths: PathsArg) -> Fingerprint:
    """(path, mtime_ns, size) of every policy file; added or deleted files change it."""
    out: set[tuple[str, int, int]] = set()
    for path in policy_files(paths):
        try:
            stat = path.stat()  # follows symlinks, as ConfigMap mounts need
        except OSError:
            continue
        out.add((str(path), stat.st_mtime_ns, stat.st_size))
    return frozenset(out)


class PolicyReloader:
    """Loads policies from files and swaps new snapshots into a `SnapshotRef`.

    With a `resolver`, registry targets are resolved before compiling and followed
    afterwards by `follow_registry`.
    """

    def __init__(
        self,
        paths: PathsArg,
        metrics: GatewayMetrics,
        health: HealthRegistry,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.time,
        resolver: RegistryResolver | None = None,
    ) -> None:
        listed = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        self._paths = tuple(str(p) for p in listed)
        self._metrics = metrics
        self._health = health
        self._logger = logger
        self._clock = clock
        self.resolver = resolver
        self._policies: list[LoadedPolicy] = []
        self._resolved: dict[VariantKey, Binding] = {}
        self._fingerprint: Fingerprint | None = None
        self._lock = asyncio.Lock()

    @property
    def policies(self) -> list[LoadedPolicy]:
        """The policies of the last snapshot this reloader built."""
        return list(self._policies)

    async def load(self) -> RuntimeSnapshot:
        """Build the first snapshot; raises `PolicyError` listing every problem.

        Registry targets that cannot be resolved (registry unreachable, no cache) leave
        their routes answering 503; the registry loop brings them in later.
        """
        async with self._lock:
            policies, _ = self._read()
            resolved = await self._resolve(policies, only_missing=False)
            snapshot = self._compile(policies, resolved)
            self._serving(policies, snapshot, resolved)
            return snapshot

    async def reload(self, ref: SnapshotRef, reason: str) -> ReloadResult:
        """Rebuild from the files and swap on success; never raises for a bad policy."""
        async with self._lock:
            return await self._reload(ref, reason)

    async def _reload(self, ref: SnapshotRef, reason: str) -> ReloadResult:
        previous = ref.current.version
        try:
            policies, version = self._read()
            if version == previous:
                self._metrics.reloads["unchanged"] += 1
                self._logger.debug("policy reload (%s): unchanged (%s)", reason, version)
                return ReloadResult("unchanged", version, previous, reason)
            resolved = await self._resolve(policies, only_missing=True)
            snapshot = self._compile(policies, resolved)
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
        self._serving(policies, snapshot, resolved)
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

    def changed(self) -> bool:
        """Whether the policy files differ from those of the last load or reload."""
        return fingerprint(self._paths) != self._fingerprint

    async def watch(self, ref: SnapshotRef, interval: float) -> None:
        """Reload whenever the policy files change, checking every `interval` seconds.

        Runs until cancelled. Reloads run on the event loop: policy sets are small and
        compile in milliseconds, and it keeps reloads ordered with admin-API reloads.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                if self.changed():
                    await self.reload(ref, "file change")
            except Exception:
                # A watcher that dies silently would leave the gateway deaf to edits; and
                # forgetting the fingerprint makes the next check retry this edit.
                self._fingerprint = None
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
            snapshot = self._compile(policies, resolved)
            for line in _binding_changes(self._resolved, resolved):
                self._logger.info("registry change: %s", line)
            ref.swap(snapshot)
            self._serving(policies, snapshot, resolved)
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

    def _compile(
        self, policies: list[LoadedPolicy], resolved: dict[VariantKey, Binding] | None
    ) -> RuntimeSnapshot:
        return compile_snapshot(
            policies,
            metrics=self._metrics,
            health=self._health,
            created_at=self._clock(),
            resolved=resolved,
        )

    def _read(self) -> tuple[list[LoadedPolicy], str]:
        # Fingerprint before reading: an edit landing mid-read then differs from it and
        # triggers another reload, instead of being missed.
        self._fingerprint = fingerprint(self._paths)
        policies, problems = collect_policies(self._paths)
        problems.extend(check_policies(policies, registry=self.resolver is not None))
        if problems:
            raise PolicyError(problems)
        return policies, policy_version(policies)

    def _serving(
        self,
        policies: list[LoadedPolicy],
        snapshot: RuntimeSnapshot,
        resolved: dict[VariantKey, Binding] | None,
    ) -> None:
        self._policies = policies
        self._resolved = resolved or {}
        self._metrics.policy_hash = snapshot.version
        self._metrics.policy_routes = len(snapshot.routes)


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
