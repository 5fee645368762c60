"""Where policy documents come from: files on disk, or a Kubernetes ConfigMap.

The reloader validates, compiles and swaps whatever a source returns, so every source
gets the same guarantees (a bad edit is rejected and the last good snapshot keeps
serving). A source only reads: it never compiles and never swaps.

Sources differ in how changes are noticed. Files are polled (`changed()`); a
ConfigMap is pushed by its watch, which calls the reloader itself, so its `changed()`
is always False and the file poller has nothing to do for it.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from gateway.controlplane.loader import (
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

    @property
    def description(self) -> str:
        return ", ".join(self.paths)

    def read(self) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
        # Fingerprint before reading: an edit landing mid-read then differs from it and
        # triggers another reload, instead of being missed.
        self._fingerprint = fingerprint(self.paths)
        return collect_policies(self.paths)

    def changed(self) -> bool:
        return fingerprint(self.paths) != self._fingerprint

    def forget(self) -> None:
        """Make the next `changed()` true, so a failed reload is tried again."""
        self._fingerprint = None
