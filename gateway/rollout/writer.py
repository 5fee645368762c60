"""Who may step rollouts: one writer at a time.

Every gateway process runs the rollout controller, but only the one holding the writer
lock changes a rollout's state; the others follow the stored state. In a Kubernetes
cluster (or with `--rollout-lease NAMESPACE/NAME`) the lock is a
`coordination.k8s.io/v1` Lease (`gateway.controlplane.k8s.lease`), so one replica of a
Deployment steps while the rest follow. Elsewhere it is an exclusive `flock` on a file
in the rollout folder: the processes of one machine (`--workers N`, or two gateways
started by hand) agree on one writer, and the kernel frees the lock if the writer dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from gateway.controlplane.k8s.client import KubeAccess, identity
from gateway.controlplane.k8s.lease import LeaseLock
from gateway.settings import Settings

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "switchyard-rollouts"


class WriterLock(Protocol):
    """The rollout writer's lock; `acquire` is called every controller round."""

    @property
    def description(self) -> str: ...

    @property
    def holder(self) -> str | None:
        """Who holds it, when known."""
        ...

    async def acquire(self) -> bool:
        """Take or keep the lock; whether this process holds it now. Never raises."""
        ...

    async def release(self) -> None:
        """Give it up (on shutdown)."""
        ...


class FileLock:
    """An exclusive, non-blocking `flock` on one file, held while the process lives."""

    def __init__(self, path: str | os.PathLike[str], logger: logging.Logger) -> None:
        self.path = Path(path)
        self._log = logger
        self._file: IO[bytes] | None = None
        self.holder: str | None = None

    @property
    def description(self) -> str:
        return f"flock {self.path}"

    async def acquire(self) -> bool:
        if self._file is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+b")
        except OSError as exc:
            self._log.warning("rollout lock %s cannot be opened: %s", self.path, exc)
            return False
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            self.holder = "another process on this machine"
            return False
        handle.truncate(0)
        handle.write(f"{identity()}\n".encode())
        handle.flush()
        self._file = handle
        self.holder = identity()
        return True

    async def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


class LeaseWriter:
    """The writer lock as a Kubernetes Lease, renewed every controller round."""

    def __init__(self, lock: LeaseLock, logger: logging.Logger) -> None:
        self._lock = lock
        self._log = logger
        self._held = False

    @property
    def description(self) -> str:
        return f"lease {self._lock.namespace}/{self._lock.name}"

    @property
    def holder(self) -> str | None:
        return self._lock.last_holder

    async def acquire(self) -> bool:
        try:
            # Takes a free or expired Lease, renews our own, refuses another's.
            held = await self._lock.try_acquire()
        except Exception as exc:  # the API server's failures must not stop the controller
            if self._held:
                self._log.warning("rollout lease renewal failed (%s); stepping down", exc)
            held = False
        if held != self._held:
            self._log.info(
                "rollout writer: %s %s",
                "holding" if held else "following",
                self.description if held else f"{self.description} (held by {self.holder})",
            )
        self._held = held
        return held

    async def release(self) -> None:
        if self._held:
            self._held = False
            with contextlib.suppress(Exception):
                await self._lock.release()


def in_cluster() -> bool:
    """Whether this process runs in a Kubernetes pod."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and _SERVICE_ACCOUNT_NAMESPACE.exists()


def writer_lock(settings: Settings, kube: KubeAccess, logger: logging.Logger) -> WriterLock:
    """The Lease named by `--rollout-lease`, a default Lease in a cluster, else a flock."""
    ref = settings.rollout_lease
    if ref is None and in_cluster():
        namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        ref = f"{namespace}/{DEFAULT_LEASE_NAME}"
    if ref is not None:
        return LeaseWriter(LeaseLock.from_access(kube, ref, identity(), logger=logger), logger)
    return FileLock(Path(settings.rollout_dir) / "writer.lock", logger)
