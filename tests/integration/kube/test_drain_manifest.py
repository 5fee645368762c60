"""SIGTERM drain with the timing the deploy/ manifests configure, on a real gateway
process with streams in flight: the numbers in the Deployment are the ones honoured."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.kustomize import build
from tests.procs import Simulator, start_gateway

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_sigterm_drains_within_the_manifest_grace_period(
    sims: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    objects = build(DEPLOY / "overlays" / "dev")
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "switchyard"
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    drain_env = {
        e["name"]: e["value"] for e in container["env"] if e["name"].startswith("SWITCHYARD_DRAIN")
    }
    assert set(drain_env) == {"SWITCHYARD_DRAIN_DELAY", "SWITCHYARD_DRAIN_TIMEOUT"}
    budget = (
        pod["terminationGracePeriodSeconds"] - container["lifecycle"]["preStop"]["sleep"]["seconds"]
    )
    delay = float(drain_env["SWITCHYARD_DRAIN_DELAY"])

    (tmp_path / "p.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
"""
    )
    gw = start_gateway(tmp_path, env=drain_env)
    results: list[tuple[int, bytes]] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers={"x-sim-tokens": "30", "x-sim-chunk-delay-ms": "100"},  # ~3 s each
            timeout=30,
        ) as r:
            results.append((r.status_code, r.read()))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        started = time.monotonic()
        gw.proc.signal(signal.SIGTERM)
        time.sleep(0.2)
        assert httpx.get(f"{gw.admin}/readyz", timeout=2).status_code == 503
        for t in threads:
            t.join(30)
        assert gw.proc.popen.wait(budget) == 0
        elapsed = time.monotonic() - started
    finally:
        gw.proc.stop()
    assert [status for status, _ in results] == [200, 200, 200]
    assert all(body.rstrip().endswith(b"data: [DONE]") for _, body in results)
    assert delay <= elapsed < budget
    assert "drained; 0 requests were still in flight" in gw.proc.output()
