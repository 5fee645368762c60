"""Load-aware picking end to end: a backend reporting a vLLM queue gets no new requests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from tests.procs import GatewayProc, Simulator, start_simulator


def test_queue_reported_by_backend_steers_traffic(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    busy = start_simulator("busy", "--max-num-seqs", "1")
    try:
        idle = sims[0]
        gw = gateway(
            f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants:
  - name: main
    endpoints: ["{busy.url}", "{idle.url}"]
    load_metrics: vllm
"""
        )

        # Other clients load `busy` directly: 1 running, 3 waiting in its own queue.
        def hold() -> None:
            httpx.post(
                f"{busy.url}/v1/chat/completions",
                timeout=30,
                json={"model": "r", "messages": [{"role": "user", "content": "x"}]},
                headers={"x-sim-latency-ms": "6000"},
            )

        holders = [threading.Thread(target=hold) for _ in range(4)]
        for t in holders:
            t.start()
        backend = busy.url.removeprefix("http://")
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and gw.metric("switchyard_backend_queue_depth", backend=backend) < 3
        ):
            time.sleep(0.2)
        assert gw.metric("switchyard_backend_queue_depth", backend=backend) == 3
        served: Counter[str] = Counter()
        for _ in range(20):
            r = httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "r", "messages": [{"role": "user", "content": "y"}]},
            )
            assert r.status_code == 200
            served[r.headers["x-switchyard-backend"]] += 1
        assert served == {idle.url.removeprefix("http://"): 20}
        for t in holders:
            t.join(30)
    finally:
        busy.proc.stop()
