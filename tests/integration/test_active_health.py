"""Active health checks in the real gateway process: a simulator whose readiness fails
leaves rotation while it is still accepting connections (passive detection would not
notice), and comes back once its probes pass again. KServe v2 routes probe model
readiness, JSON (BentoML) routes `/readyz`, both by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import GatewayProc, Simulator, start_gateway, start_kserve, start_simulator

INFER = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[str, tuple[Simulator, Simulator]]]:
    started: list[Simulator] = []
    try:
        for name in ("k1", "k2"):
            started.append(start_kserve(f"health-{name}", grpc=False))
        for name in ("b1", "b2"):
            started.append(start_simulator(f"health-{name}", kind="bentoml"))
        yield {"kserve": (started[0], started[1]), "json": (started[2], started[3])}
    finally:
        for sim in started:
            sim.proc.stop()


@pytest.fixture(scope="module")
def gw(
    pools: dict[str, tuple[Simulator, Simulator]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    folder: Path = tmp_path_factory.mktemp("health-policies")
    k1, k2 = (s.url for s in pools["kserve"])
    b1, b2 = (s.url for s in pools["json"])
    probe = "{interval: 200ms, timeout: 1s, unhealthy_after: 2, healthy_after: 2}"
    (folder / "p.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud-detector
protocol: kserve-v2
variants:
  - {{name: main, endpoints: ["{k1}", "{k2}"]}}
health_check: {probe}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud-service
protocol: json
variants:
  - {{name: main, endpoints: ["{b1}", "{b2}"], health_check: {probe}}}
"""
    )
    gateway = start_gateway(folder)
    yield gateway
    gateway.proc.stop()


def set_health(sim: Simulator, status: int) -> None:
    r = httpx.post(f"{sim.url}/sim/faults", json={"health_status": status}, timeout=5)
    assert r.status_code == 200


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def backends_serving(call: Callable[[], httpx.Response], n: int = 12) -> set[str]:
    served = set()
    for _ in range(n):
        r = call()
        assert r.status_code == 200, r.text
        served.add(r.headers["x-switchyard-backend"])
    return served


@pytest.mark.parametrize("protocol", ["kserve", "json"])
def test_unready_endpoint_leaves_rotation_and_comes_back(
    gw: GatewayProc, pools: dict[str, tuple[Simulator, Simulator]], protocol: str
) -> None:
    good, bad = pools[protocol]
    good_backend, bad_backend = (s.url.removeprefix("http://") for s in (good, bad))
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        def call() -> httpx.Response:
            if protocol == "kserve":
                return client.post("/v2/models/fraud-detector/infer", json=INFER)
            return client.post("/services/fraud-service/predict", json={"features": [[1] * 4]})

        assert backends_serving(call) == {good_backend, bad_backend}
        ejections = gw.metric("switchyard_backend_ejections_total", backend=bad_backend)
        set_health(bad, 503)
        try:
            wait_for(
                lambda: gw.metric("switchyard_backend_probe_down", backend=bad_backend) == 1,
                f"{bad_backend} to fail its probes",
            )
            assert gw.metric("switchyard_backend_ejected", backend=bad_backend) == 1
            assert gw.metric("switchyard_backend_ejections_total", backend=bad_backend) == (
                ejections + 1
            )
            assert (
                gw.metric("switchyard_health_probes_total", backend=bad_backend, outcome="failed")
                >= 2
            )
            # It still answers requests: only the probes can tell it is not ready.
            assert backends_serving(call) == {good_backend}
        finally:
            set_health(bad, 200)
        wait_for(
            lambda: gw.metric("switchyard_backend_probe_down", backend=bad_backend) == 0,
            f"{bad_backend} to pass its probes again",
        )
        assert gw.metric("switchyard_backend_ejected", backend=bad_backend) == 0
        assert backends_serving(call) == {good_backend, bad_backend}
