"""SIGTERM: readiness fails, in-flight streams finish, then the process exits cleanly."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.procs import GatewayProc, Simulator


def readiness(gw: GatewayProc) -> int:
    """/readyz's status, or 0 while the admin API does not answer."""
    try:
        return httpx.get(f"{gw.admin}/readyz", timeout=2).status_code
    except httpx.TransportError:
        return 0


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_sigterm_drains_streams_in_flight(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
""",
        extra=("--drain-delay", "3", "--drain-timeout", "10"),
    )
    port = urlsplit(gw.url).port
    results: list[tuple[int, bytes]] = []
    heads = threading.Semaphore(0)

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers={"x-sim-tokens": "20", "x-sim-chunk-delay-ms": "150"},  # ~3 s each
            timeout=20,
        ) as r:
            heads.release()  # the gateway has this stream: it is in flight
            results.append((r.status_code, r.read()))

    threads = [threading.Thread(target=stream) for _ in range(5)]
    for t in threads:
        t.start()
    # SIGTERM once every stream has its response head, not after a guessed pause: a
    # stream that had not reached the gateway yet would meet a draining gateway.
    for _ in threads:
        assert heads.acquire(timeout=30), "a stream got no response head"
    gw.proc.signal(signal.SIGTERM)
    # Readiness fails on the signal, while the listener still takes connections (load
    # balancers must stop sending before connections are refused). A poll, not one look
    # after a fixed pause, finds the 503; the listener stays open for the 3 s drain
    # delay, and a gateway that failed readiness only when it closed the listener is
    # caught whatever the timing: by then the connection below is refused.
    assert wait_until(lambda: readiness(gw) == 503, timeout=10)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        pytest.fail("readiness failed only once the listener was closed")
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
