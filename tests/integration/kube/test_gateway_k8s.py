"""A real gateway process on Kubernetes, faked at the network edge: policies from a
watched ConfigMap, k8s:// pools from EndpointSlices, with only the permissions the
deploy/ manifests grant, in the namespaces where they grant them (the fake API server
authorizes as the real one's RBAC does)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.kubefake import (
    CONFIGMAPS,
    ENDPOINTSLICES,
    EVENTS,
    FakeKube,
    configmap,
    endpoint_slice,
    service_account_user,
)
from tests.kustomize import build
from tests.procs import GatewayProc, Simulator, spawn, start_gateway

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
CM = "switchyard-policies"
# Where overlays/prod runs the gateway, and so whom deploy/pool-access binds.
NS = "switchyard"
RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def grant(kube: FakeKube, folder: Path, manifests: str, namespace: str) -> None:
    """Apply the RBAC objects of deploy/MANIFESTS as an overlay setting `namespace` would
    (`kubectl apply -k`), and authorize every request as the gateway's ServiceAccount."""
    folder.mkdir(parents=True)
    overlay = {"namespace": namespace, "resources": [str(DEPLOY / manifests)]}
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    applied = [o for o in build(folder) if o["kind"] in RBAC_KINDS]
    assert applied, manifests
    for obj in applied:
        kube.apply(obj)
    kube.user = service_account_user(NS, "switchyard")
    kube.rbac = True


def policy(endpoint: str, weight: str = "1") -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: main
    weight: {weight}
    endpoints: ["{endpoint}"]
"""


def served_by(gw: GatewayProc, n: int = 1) -> set[str]:
    backends = set()
    for _ in range(n):
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        backends.add(r.headers["x-switchyard-backend"])
    return backends


def status(gw: GatewayProc) -> int:
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
        timeout=5,
    )
    return r.status_code


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    started: list[GatewayProc] = []

    def make(*extra: str) -> GatewayProc:
        folder = tmp_path / f"files{len(started)}"
        folder.mkdir()
        (folder / "unused.yaml").write_text(policy("http://127.0.0.1:9"))
        gw = start_gateway(folder, *extra)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.proc.stop()


def backend(sim: Simulator) -> str:
    return f"127.0.0.1:{sim.port}"


def test_configmap_edits_reload_bad_edits_are_rejected_and_the_watch_survives(
    kube: FakeKube,
    kubeconfig: Path,
    sims: tuple[Simulator, Simulator],
    gateways: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    a, b = sims
    grant(kube, tmp_path / "base", "base", NS)
    kube.apply(configmap(NS, CM, {"chat.yaml": policy(a.url)}))
    gw = gateways("--policy-configmap", f"{NS}/{CM}", "--kubeconfig", str(kubeconfig))
    assert served_by(gw) == {backend(a)}

    # An edit reloads the running gateway.
    kube.apply(configmap(NS, CM, {"chat.yaml": policy(b.url)}))
    eventually(lambda: served_by(gw) == {backend(b)})
    assert gw.metric("switchyard_policy_reloads_total", outcome="success") == 1

    # A bad edit is rejected: the last good policy serves, an Event names the problem.
    kube.apply(configmap(NS, CM, {"chat.yaml": policy(a.url, weight="-1")}))
    eventually(lambda: gw.metric("switchyard_policy_reloads_total", outcome="rejected") == 1)
    assert served_by(gw, 5) == {backend(b)}
    eventually(lambda: bool(kube.items(EVENTS, NS)))
    (event,) = kube.items(EVENTS, NS)
    assert event["reason"] == "PolicyRejected" and event["type"] == "Warning"
    assert event["involvedObject"]["name"] == CM
    assert f"configmap/{NS}/{CM}:data[chat.yaml]:6:5" in event["message"]
    assert "variants[0].weight" in event["message"]
    assert "policy reload" in gw.proc.output() and "rejected" in gw.proc.output()
    assert gw.metric("switchyard_kubernetes_events_total") == 1

    # Connections dropped, then history compacted while away: the watch relists (410)
    # and the next edit still arrives.
    assert kube.drop_watches() >= 1
    kube.apply(configmap(NS, CM, {"chat.yaml": policy(a.url, weight="2")}))
    kube.compact()
    kube.drop_watches()
    eventually(lambda: served_by(gw) == {backend(a)})
    eventually(
        lambda: (
            gw.metric("switchyard_kubernetes_watch_restarts_total", reason="gone") >= 1
            or gw.metric("switchyard_kubernetes_watch_restarts_total", reason="error") >= 1
        )
    )
    assert gw.metric("switchyard_kubernetes_watch_synced", resource=f"configmap/{NS}/{CM}") == 1

    # Deleting the ConfigMap is a rejected reload too: traffic keeps flowing.
    kube.delete(CONFIGMAPS, NS, CM)
    eventually(lambda: gw.metric("switchyard_policy_reloads_total", outcome="rejected") == 2)
    assert served_by(gw, 3) == {backend(a)}
    ready = httpx.get(f"{gw.admin}/readyz", timeout=5)
    assert ready.status_code == 200
    assert not [r for r in kube.requests if r.status == 403]


def test_410_gone_on_resume_relists(
    kube: FakeKube,
    kubeconfig: Path,
    sims: tuple[Simulator, Simulator],
    gateways: Callable[..., GatewayProc],
) -> None:
    a, b = sims
    kube.apply(configmap("prod", CM, {"chat.yaml": policy(a.url)}))
    gw = gateways("--policy-configmap", f"prod/{CM}", "--kubeconfig", str(kubeconfig))
    eventually(lambda: kube.watch_count() == 1)
    kube.compact()
    kube.apply(configmap("prod", "other", {}))  # the store moves on, then compacts again
    kube.compact()
    kube.drop_watches()  # the resume asks for a compacted version: 410
    eventually(lambda: gw.metric("switchyard_kubernetes_watch_restarts_total", reason="gone") >= 1)
    kube.apply(configmap("prod", CM, {"chat.yaml": policy(b.url)}))
    eventually(lambda: served_by(gw) == {backend(b)})


def test_gateway_refuses_to_start_without_its_configmap(
    kube: FakeKube, kubeconfig: Path, tmp_path: Path
) -> None:
    configmap_flags = ["--policy-configmap", "prod/missing", "--kubeconfig", str(kubeconfig)]
    proc = spawn(["serve", "--port", "0", "--admin-port", "0", *configmap_flags])
    try:
        assert proc.popen.wait(30) == 2
    finally:
        proc.stop()
    assert "ConfigMap prod/missing not found" in proc.output()
    assert "refusing to start: the policies in configmap prod/missing are invalid" in proc.output()


def test_endpointslice_changes_move_traffic_between_pods(
    kube: FakeKube,
    kubeconfig: Path,
    sims: tuple[Simulator, Simulator],
    gateways: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    a, b = sims
    # The gateway's own namespace, and the pool's, each granted by deploy/.
    grant(kube, tmp_path / "base", "base", NS)
    grant(kube, tmp_path / "models", "pool-access", "models")
    # Two "pods" of Service models/vllm, each in its own slice (their ports differ,
    # as loopback simulators must).
    kube.apply(endpoint_slice("models", "vllm", "vllm-a", a.port, [("127.0.0.1", True, "vllm-0")]))
    kube.apply(endpoint_slice("models", "vllm", "vllm-b", b.port, [("127.0.0.1", False, "vllm-1")]))
    kube.apply(configmap(NS, CM, {"chat.yaml": policy("k8s://models/vllm:http")}))
    gw = gateways("--policy-configmap", f"{NS}/{CM}", "--kubeconfig", str(kubeconfig))
    assert served_by(gw, 4) == {backend(a)}, "a pod that is not ready gets nothing"
    assert gw.metric("switchyard_discovery_endpoints", pool="k8s://models/vllm:http") == 1
    # The in-flight gauge names the pod: what the HPA's adapter rule maps onto pods.
    in_flight = [
        line
        for line in gw.metrics().splitlines()
        if line.startswith("switchyard_backend_in_flight{")
    ]
    labels = f'backend="{backend(a)}",k8s_namespace="models",k8s_pod="vllm-0",k8s_service="vllm"'
    assert any(labels in line for line in in_flight), in_flight

    # vllm-1 becomes ready, vllm-0 starts terminating: traffic moves.
    kube.apply(endpoint_slice("models", "vllm", "vllm-b", b.port, [("127.0.0.1", True, "vllm-1")]))
    kube.apply(endpoint_slice("models", "vllm", "vllm-a", a.port, [("127.0.0.1", False, "vllm-0")]))
    eventually(lambda: served_by(gw, 3) == {backend(b)})

    # Both ready: least-in-flight picking spreads requests over both pods.
    kube.apply(endpoint_slice("models", "vllm", "vllm-a", a.port, [("127.0.0.1", None, "vllm-0")]))
    eventually(lambda: served_by(gw, 8) == {backend(a), backend(b)})
    assert gw.metric("switchyard_discovery_endpoints", pool="k8s://models/vllm:http") == 2

    # A dropped watch changes nothing; slices deleted meanwhile are seen on resume.
    kube.drop_watches()
    kube.delete(ENDPOINTSLICES, "models", "vllm-a")
    eventually(lambda: served_by(gw, 4) == {backend(b)})

    # No ready pods: the route answers 503 (the gateway's own error), not a hang.
    kube.delete(ENDPOINTSLICES, "models", "vllm-b")
    eventually(
        lambda: (
            httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                timeout=5,
            ).status_code
            == 503
        )
    )
    kube.apply(endpoint_slice("models", "vllm", "vllm-a", a.port, [("127.0.0.1", True, "vllm-0")]))
    eventually(lambda: served_by(gw) == {backend(a)})
    # Only what the Roles allow was asked for, and nothing was forbidden.
    assert not [r for r in kube.requests if r.status == 403]


def test_a_pool_in_a_namespace_the_gateway_may_not_read_waits_for_its_grant(
    kube: FakeKube,
    kubeconfig: Path,
    sims: tuple[Simulator, Simulator],
    gateways: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    """The base Role grants EndpointSlices in the gateway's namespace only: a pool in
    `models` is forbidden (an empty pool, 503, the 403 in the log) until deploy/pool-access
    is applied there, and then fills without a restart."""
    a, _ = sims
    grant(kube, tmp_path / "base", "base", NS)
    kube.apply(endpoint_slice("models", "vllm", "vllm-a", a.port, [("127.0.0.1", True, "vllm-0")]))
    kube.apply(endpoint_slice(NS, "vllm", "vllm-a", a.port, [("127.0.0.1", True, "vllm-0")]))
    kube.apply(configmap(NS, CM, {"chat.yaml": policy("k8s://models/vllm:http")}))
    gw = gateways("--policy-configmap", f"{NS}/{CM}", "--kubeconfig", str(kubeconfig))

    eventually(lambda: bool(kube.served("GET", "/namespaces/models/endpointslices")))
    denied = kube.served("GET", "/namespaces/models/endpointslices")
    assert denied and all(r.status == 403 for r in denied), denied
    assert status(gw) == 503
    assert (
        gw.metric("switchyard_kubernetes_watch_synced", resource="endpointslices/models/vllm") == 0
    )
    eventually(lambda: "HTTP 403" in gw.proc.output())
    # The very same request in the gateway's own namespace is allowed: only the
    # namespace differs.
    assert (
        httpx.get(
            f"{kube.url}/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
            headers={"Authorization": f"Bearer {kube.token}"},
            timeout=5,
        ).status_code
        == 200
    )

    grant(kube, tmp_path / "models", "pool-access", "models")
    # The watch retries with backoff (seconds by now), then the pool fills.
    eventually(lambda: status(gw) == 200, timeout=20)
    assert served_by(gw, 3) == {backend(a)}
    assert (
        gw.metric("switchyard_kubernetes_watch_synced", resource="endpointslices/models/vllm") == 1
    )
