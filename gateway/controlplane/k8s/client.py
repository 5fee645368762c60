"""Access to the Kubernetes API through the official client's asyncio API (`kubernetes.aio`).

The `kubernetes` package is an optional extra (`pip install 'switchyard[k8s]'`): it is
imported only when a process actually talks to Kubernetes, so a gateway on plain policy
files never loads it. Its failures are translated here, at the boundary: callers see
`KubeUnavailable` (no configuration, package missing) or the client's `ApiException`,
whose `status` they test with `status_of`.

Configuration, first match wins: `--kubeconfig FILE`; the pod's service account when
running in a cluster (`KUBERNETES_SERVICE_HOST` set); `$KUBECONFIG` or `~/.kube/config`.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.aio.client import ApiClient

INSTALL_HINT = "install the Kubernetes extra: pip install 'switchyard[k8s]'"


class KubeUnavailable(Exception):
    """No Kubernetes API can be reached from this process (configuration or package)."""


def split_ref(value: str, what: str) -> tuple[str, str]:
    """(namespace, name) of `NAMESPACE/NAME`; `ValueError` naming `what` otherwise."""
    namespace, sep, name = value.strip().partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"{what}: expected NAMESPACE/NAME, got {value!r}")
    return namespace, name


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a Kubernetes API error (`ApiException`), else None."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and status > 0 else None


def identity() -> str:
    """Who this process is in Leases and Events: the pod name where there is one."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter: a fleet of replicas that lost the API
    server at the same moment does not come back in lockstep."""

    base: float = 0.2
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        """Seconds to wait before the next try; each call doubles the ceiling."""
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class KubeAccess:
    """Builds one `ApiClient` on first use and closes it with the process.

    Building is lazy because reading a kubeconfig is async in `kubernetes.aio` and
    because most gateways never need Kubernetes at all.
    """

    def __init__(self, kubeconfig: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self._client: ApiClient | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> ApiClient:
        """The shared API client; raises `KubeUnavailable` saying why there is none."""
        async with self._lock:
            if self._client is None:
                self._client = await _build_client(self.kubeconfig)
            return self._client

    async def aclose(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.close()  # type: ignore[no-untyped-call]
                self._client = None


def config_source(kubeconfig: str | None) -> tuple[str, str | None]:
    """("file", path) or ("in-cluster", None): where the API configuration comes from."""
    if kubeconfig:
        if not os.path.isfile(kubeconfig):
            raise KubeUnavailable(f"kubeconfig {kubeconfig}: no such file")
        return "file", kubeconfig
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster", None
    default = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if os.path.isfile(default):
        return "file", default
    raise KubeUnavailable(
        "no Kubernetes API: not running in a cluster and no kubeconfig "
        "(pass --kubeconfig or set KUBECONFIG)"
    )


async def _build_client(kubeconfig: str | None) -> ApiClient:
    try:
        from kubernetes.aio import client, config
    except ImportError as exc:
        raise KubeUnavailable(
            f"the kubernetes package is missing ({exc}); {INSTALL_HINT}"
        ) from None
    kind, path = config_source(kubeconfig)
    try:
        if kind == "in-cluster":
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        # persist_config=False: never write refreshed tokens back into the user's file.
        built: ApiClient = await config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, persist_config=False
        )
        return built
    except (OSError, ValueError, config.ConfigException) as exc:
        raise KubeUnavailable(f"cannot load Kubernetes configuration: {exc}") from None
