"""Reload policies without a restart: build a new snapshot, then swap one reference.

A bad edit must never take traffic down, so a reload that finds any problem keeps the
snapshot now serving, logs every problem and counts a rejection. A reload whose
effective policies hash the same as the serving snapshot swaps nothing.

The file watcher polls (path, mtime, size) of the policy files instead of using inotify:
no extra dependency, and it sees Kubernetes ConfigMap updates, which arrive as an atomic
symlink swap that inotify watches on the files themselves miss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
    """Loads policies from files and swaps new snapshots into a `SnapshotRef`."""

    def __init__(
        self,
        paths: PathsArg,
        metrics: GatewayMetrics,
        health: HealthRegistry,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        listed = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        self._paths = tuple(str(p) for p in listed)
        self._metrics = metrics
        self._health = health
        self._logger = logger
        self._clock = clock
        self._policies: list[LoadedPolicy] = []
        self._fingerprint: Fingerprint | None = None

    @property
    def policies(self) -> list[LoadedPolicy]:
        """The policies of the last snapshot this reloader built."""
        return list(self._policies)

    def load(self) -> RuntimeSnapshot:
        """Build the first snapshot; raises `PolicyError` listing every problem."""
        policies, _ = self._read()
        snapshot = compile_snapshot(
            policies, metrics=self._metrics, health=self._health, created_at=self._clock()
        )
        self._serving(policies, snapshot)
        return snapshot

    def reload(self, ref: SnapshotRef, reason: str) -> ReloadResult:
        """Rebuild from the files and swap on success; never raises for a bad policy."""
        previous = ref.current.version
        try:
            policies, version = self._read()
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
        if version == previous:
            self._metrics.reloads["unchanged"] += 1
            self._logger.debug("policy reload (%s): unchanged (%s)", reason, version)
            return ReloadResult("unchanged", version, previous, reason)
        changes = tuple(diff_policies(self._policies, policies))
        snapshot = compile_snapshot(
            policies, metrics=self._metrics, health=self._health, created_at=self._clock()
        )
        ref.swap(snapshot)
        self._serving(policies, snapshot)
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
                    self.reload(ref, "file change")
            except Exception:
                # A watcher that dies silently would leave the gateway deaf to edits; and
                # forgetting the fingerprint makes the next check retry this edit.
                self._fingerprint = None
                self._logger.exception("policy watch failed; retrying in %.1fs", interval)

    def _read(self) -> tuple[list[LoadedPolicy], str]:
        # Fingerprint before reading: an edit landing mid-read then differs from it and
        # triggers another reload, instead of being missed.
        self._fingerprint = fingerprint(self._paths)
        policies, problems = collect_policies(self._paths)
        problems.extend(check_policies(policies))
        if problems:
            raise PolicyError(problems)
        return policies, policy_version(policies)

    def _serving(self, policies: list[LoadedPolicy], snapshot: RuntimeSnapshot) -> None:
        self._policies = policies
        self._metrics.policy_hash = snapshot.version
        self._metrics.policy_routes = len(snapshot.routes)
