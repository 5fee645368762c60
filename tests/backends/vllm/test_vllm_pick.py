"""Load-aware picking between two REAL vLLM servers.

Other clients load one server directly (the gateway never sees those requests); the
gateway learns it only from that server's own `/metrics` (`load_metrics: vllm`) and must
send its requests to the other one. Without the reports the picker would rotate between
two idle-looking endpoints and send half of the requests to the loaded one.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial

import httpx
import pytest

from tests.backends.vllm.vllm_proc import MAX_MODEL_LEN, SERVED_MODEL, VllmServer
from tests.procs import GatewayProc

pytestmark = [pytest.mark.vllm, pytest.mark.vllm_pair, pytest.mark.timeout(600)]

HOLDERS = 6  # concurrent long generations kept running on the loaded server
THROUGH_GATEWAY = 12


@pytest.fixture(scope="module")
def second_vllm(
    vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    # vLLM's CPU engine pins its OpenMP threads to core 0 by default ("auto" keeps the
    # last core for the rest); a second engine there would starve behind the loaded one,
    # so this one computes on core 1.
    server = VllmServer(
        vllm_server.model_dir,
        tmp_path_factory.mktemp("vllm-b") / "vllm.log",
        extra_env={"VLLM_CPU_OMP_THREADS_BIND": "1" if (os.cpu_count() or 1) > 1 else "0"},
    )
    server.start()
    yield server
    server.stop()


class DirectLoad:
    """Threads that keep `HOLDERS` long generations running on one server, until stopped."""

    def __init__(self, server: VllmServer) -> None:
        self.server = server
        self.stop = threading.Event()
        self.errors: list[str] = []
        # Different lengths stagger the holders' ends, so the server never sits empty
        # between one round of generations and the next.
        self.threads = [
            threading.Thread(target=self._hold, args=(MAX_MODEL_LEN - 16 - 60 * i,))
            for i in range(HOLDERS)
        ]

    def _hold(self, max_tokens: int) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(
                        f"{self.server.url}/v1/completions",
                        json={
                            "model": SERVED_MODEL,
                            "prompt": "x",
                            "max_tokens": max_tokens,
                            "ignore_eos": True,
                        },
                    )
                    if r.status_code != 200:
                        self.errors.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> DirectLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(150)


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def through_gateway(gw: GatewayProc) -> Counter[str]:
    served: Counter[str] = Counter()
    with httpx.Client(timeout=120) as client:
        for _ in range(THROUGH_GATEWAY):
            r = client.post(
                f"{gw.url}/v1/completions",
                json={"model": "pool", "prompt": "hi", "max_tokens": 4, "ignore_eos": True},
            )
            assert r.status_code == 200, r.text
            served[r.headers["x-switchyard-backend"]] += 1
    return served


def test_pool_follows_the_load_the_vllm_servers_report(
    gateway: Callable[..., GatewayProc], vllm: VllmServer, second_vllm: VllmServer
) -> None:
    a, b = vllm, second_vllm
    gw = gateway(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: pool
variants:
  - name: main
    endpoints: [{a.url}, {b.url}]
    model: {SERVED_MODEL}
    load_metrics: vllm
# a busy shared 2-core machine: slowness here is not what this test is about
timeouts: {{first_byte: 120s, total: 300s}}
"""
    )

    def running(server: VllmServer) -> float:
        # The gateway's view (its scrape), not the server's: what the picker reads. Two
        # vLLM engines keep both cores busy, so the admin API may answer slowly.
        try:
            return gw.metric("switchyard_backend_running", backend=server.hostport)
        except httpx.TimeoutException:
            return -1.0

    def busy(server: VllmServer) -> bool:
        return running(server) >= HOLDERS // 2

    def drained(server: VllmServer) -> bool:
        return running(server) == 0

    # Loading the second server instead was tried too: on 2 cores, its API process could
    # not keep more than one generation running at a time, so there was no load to see.
    for loaded, idle in ((a, b),):
        with DirectLoad(loaded) as load:
            assert wait_for(partial(busy, loaded), 90), (
                f"the gateway never saw {loaded.hostport} busy; vLLM log:\n{loaded.log_tail()}"
            )
            served = through_gateway(gw)
        print(f"\n{loaded.hostport} loaded by {HOLDERS} clients; gateway sent {dict(served)}")
        assert not load.errors, load.errors[:3]
        # A scrape can still catch the loaded server in the instant between one holder's
        # generation and its next request: allow one such pick (a coin would need luck
        # of 13 in 4096 to pass this).
        assert served[idle.hostport] >= THROUGH_GATEWAY - 1, (
            f"with {loaded.hostport} loaded by other clients, the gateway sent {dict(served)}"
        )
        assert wait_for(partial(drained, loaded), 150)  # and the gateway sees it drain
