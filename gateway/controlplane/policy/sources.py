"""Where policy documents come from: files on disk, or a Kubernetes ConfigMap.

The reloader validates, compiles and swaps whatever a source returns, so every source
gets the same guarantees (a bad edit is rejected and the last good snapshot keeps
serving). A source only reads: it never compiles and never swaps.

Sources differ in how changes are noticed. Files are polled (`changed()`); a
ConfigMap is pushed by its watch, which calls the reloader itself, so its `changed()`
is always False and the file poller has nothing to do for it.

Sources also say which files (or ConfigMap keys) the last read found, and which routes
the source itself marks for removal: the reloader holds a reload that drops a route
whose file is still there, unless the removal is confirmed (see `diff.route_removals`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol, runtime_checkable

from gateway.controlplane.policy.loader import (
    LoadedPolicy,
    PathsArg,
    PolicyProblem,
    collect_policies,
    policy_files,
)

Fingerprint = frozenset[tuple[str, int, int]]


@runtime_checkable
class PolicyDocuments(Protocol):
    """A place policies are read from."""

    @property
    def description(self) -> str:
        """What to call the source in logs: `policies/`, `configmap prod/policies`."""
        ...

    def read(self) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
        """Every valid policy now in the source, and every problem with the others."""
        ...

    def changed(self) -> bool:
        """Whether the source differs from the last `read` (polled sources only)."""
        ...

    def kept(self, file: str) -> bool:
        """Whether the last `read` found the file (or ConfigMap key) that `file`, a
        `PolicySource.file`, names, whatever it holds now."""
        ...

    def confirmed_removals(self) -> frozenset[str]:
        """Routes the last `read` found marked for removal in the source itself."""
        ...


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


class FileSource:
    """Policy files and directories, noticed by polling (path, mtime, size).

    Polling instead of inotify: no extra dependency, and it sees Kubernetes ConfigMap
    volume updates, which arrive as an atomic symlink swap that inotify watches on the
    files themselves miss.
    """

    def __init__(self, paths: PathsArg) -> None:
        listed = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        self.paths = tuple(str(p) for p in listed)
        self._fingerprint: Fingerprint | None = None
        self._files: frozenset[str] = frozenset()

    @property
    def description(self) -> str:
        return ", ".join(self.paths)

    def read(self) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
        # Fingerprint before reading: an edit landing mid-read then differs from it and
        # triggers another reload, instead of being missed.
        self._fingerprint = fingerprint(self.paths)
        self._files = frozenset(path for path, _, _ in self._fingerprint)
        return collect_policies(self.paths)

    def changed(self) -> bool:
        return fingerprint(self.paths) != self._fingerprint

    def kept(self, file: str) -> bool:
        # A ConfigMap manifest on disk names its entries `PATH:data[KEY]`; the file is
        # the unit here, so an entry gone from a manifest still there counts as kept.
        return file in self._files or file.partition(":data[")[0] in self._files

    def confirmed_removals(self) -> frozenset[str]:
        return frozenset()  # files confirm a removal by being deleted

    async def settle(self, quiet: float, limit: float) -> None:
        """Return once the files have stayed the same for `quiet` seconds, or after
        `limit` seconds of constant change.

        Editors and config tools often save in several writes (truncate, then write;
        write a temporary file, then rename); reading between them would see a file
        nobody meant. Waiting for quiet reads such a save once, as finished.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        seen = fingerprint(self.paths)
        while True:
            await asyncio.sleep(quiet)
            now = fingerprint(self.paths)
            if now == seen or loop.time() >= deadline:
                return
            seen = now

    def forget(self) -> None:
        """Make the next `changed()` true, so a failed reload is tried again."""
        self._fingerprint = None
