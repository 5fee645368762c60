"""SIGTERM: readiness fails, in-flight streams finish, then the process exits cleanly."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import httpx

from tests.procs import GatewayProc, Simulator


def test_sigterm_drains_streams_in_flight(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
""",
        extra=("--drain-delay", "0.5", "--drain-timeout", "10"),
    )
    results: list[tuple[int, bytes]] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers={"x-sim-tokens": "20", "x-sim-chunk-delay-ms": "50"},
            timeout=20,
        ) as r:
            results.append((r.status_code, r.read()))

    threads = [threading.Thread(target=stream) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # streams are under way (20 chunks x 50 ms = 1 s each)
    gw.proc.signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{gw.admin}/readyz")
    assert ready.status_code == 503
    for t in threads:
        t.join(20)
    assert len(results) == 5
    for status, body in results:
        assert status == 200
        assert body.rstrip().endswith(b"data: [DONE]")
    assert gw.proc.popen.wait(15) == 0
    assert "drained; 0 requests were still in flight" in gw.proc.output()
    try:
        httpx.get(f"{gw.url}/v1/models", timeout=2)
        accepted = True
    except httpx.TransportError:
        accepted = False
    assert not accepted
