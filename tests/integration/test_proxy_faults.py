"""Failure handling of the real gateway: retries, ejection, timeouts, cuts, disconnects."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.procs import GatewayProc, Simulator

MESSAGES = [{"role": "user", "content": "hello"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pool_policy(route: str, endpoints: list[str], extra: str = "") -> str:
    eps = ", ".join(endpoints)
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - name: main
    endpoints: [{eps}]
retries: {{attempts: 3, on: [connect-error, reset, 502, 503]}}
outlier: {{consecutive_failures: 2, base_ejection: 30s}}
{extra}"""


def chat(gw: GatewayProc, headers: dict[str, str] | None = None, **kw: object) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "r", "messages": MESSAGES, **kw},
        headers=headers or {},
        timeout=10,
    )


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_dead_endpoint_retried_and_ejected(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway(pool_policy("r", [sims[0].url, dead]))
    statuses = [chat(gw).status_code for _ in range(50)]
    assert statuses == [200] * 50
    dead_backend = dead.removeprefix("http://")
    assert gw.metric("switchyard_backend_ejections_total", backend=dead_backend) >= 1
    assert gw.metric("switchyard_retries_total", route="r") >= 1
    routes = httpx.get(f"{gw.admin}/admin/routes").json()
    eps = {e["url"]: e for e in routes["routes"][0]["variants"][0]["endpoints"]}
    assert eps[dead]["ejected_for_s"] > 0


def test_all_endpoints_down_is_503_json(gateway: Callable[..., GatewayProc]) -> None:
    gw = gateway(pool_policy("r", [f"http://127.0.0.1:{free_port()}"]))
    r = chat(gw)
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "cannot connect" in err["message"]


def test_upstream_error_passes_through_untouched(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url]))
    r = chat(gw, {"x-sim-status": "429"})
    assert r.status_code == 429
    direct = httpx.post(
        f"{sims[0].url}/v1/chat/completions",
        json={"model": "r", "messages": MESSAGES},
        headers={"x-sim-status": "429"},
    )
    assert r.json() == direct.json()


def test_retryable_status_goes_to_fallback(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    gw = gateway(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants:
  - {{name: primary, weight: 100, endpoints: ["{a.url}"]}}
  - {{name: backup, weight: 0, endpoints: ["{b.url}"]}}
fallback: [backup]
retries: {{attempts: 2, on: [503]}}
"""
    )
    # The header reaches every attempt, so primary and backup both answer 503: the
    # retry goes to the fallback, and its 503 is relayed as-is once retries are spent.
    r = chat(gw, {"x-sim-status": "503"})
    assert r.status_code == 503
    assert r.headers["x-switchyard-variant"] == "backup"
    assert gw.metric("switchyard_fallbacks_total", route="r") == 1


def test_first_byte_timeout_is_504(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url], "timeouts: {first_byte: 300ms}\n"))
    started = time.monotonic()
    r = chat(gw, {"x-sim-latency-ms": "3000"})
    assert r.status_code == 504
    assert "first_byte" in r.json()["error"]["message"]
    assert time.monotonic() - started < 2.5


def test_cut_stream_is_never_a_clean_finish(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url]))
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as c:
        stream = c.chat.completions.create(
            model="r",
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
            extra_headers={"x-sim-cut-after": "3", "x-sim-tokens": "20"},
        )
        got: list[object] = []

        def consume() -> None:
            for chunk in stream:
                got.append(chunk)

        with pytest.raises((openai.APIError, httpx.HTTPError)):
            consume()
        assert 1 <= len(got) <= 5
    assert gw.metric("switchyard_gateway_errors_total", route="r", code="stream_cut") == 1


def test_client_disconnect_cancels_upstream(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    sim = sims[1]
    gw = gateway(pool_policy("r", [sim.url]))
    before = int(sim.stats()["cancelled"])  # type: ignore[call-overload]
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json={"model": "r", "messages": MESSAGES, "stream": True},
        headers={"x-sim-tokens": "200", "x-sim-chunk-delay-ms": "50"},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        it = r.iter_raw()
        next(it)
    # Closing the response closed the client connection mid-stream.
    assert wait_until(lambda: int(sim.stats()["cancelled"]) > before)  # type: ignore[call-overload]


def test_pipelined_requests_answered_in_order(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url]))
    host, port = gw.url.removeprefix("http://").split(":")
    reqs = b""
    for i in range(3):
        body = b'{"model":"r","messages":[{"role":"user","content":"x"}],"max_tokens":%d}' % (i + 1)
        reqs += (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-request-id: req-%d\r\ncontent-length: %d\r\n\r\n%s" % (i, len(body), body)
        )
    reqs += (
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-request-id: req-last\r\nconnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(reqs)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    order = [
        line.split(b":", 1)[1].strip()
        for line in data.split(b"\r\n")
        if line.lower().startswith(b"x-request-id:")
    ]
    assert order == [b"req-0", b"req-1", b"req-2", b"req-last"]
    assert data.count(b"HTTP/1.1 200 OK") == 4


def raw_exchange(gw: GatewayProc, payload: bytes) -> bytes:
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_smuggling_and_malformed_requests_rejected(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url]))
    both = raw_exchange(
        gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert both.startswith(b"HTTP/1.1 400")
    dup = raw_exchange(
        gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        b"content-length: 2\r\n\r\n{}",
    )
    assert dup.startswith(b"HTTP/1.1 400")
    garbage = raw_exchange(gw, b"\x00\x01 nonsense\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400") and b"malformed" in garbage
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    big = raw_exchange(gw, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
    assert big.startswith(b"HTTP/1.1 431")


def test_chunked_request_body_and_expect_continue(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url]))
    body = b'{"model":"r","messages":[{"role":"user","content":"chunked"}]}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    resp = raw_exchange(
        gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n" + chunked,
    )
    assert resp.startswith(b"HTTP/1.1 200") and b"chat.completion" in resp
    resp = raw_exchange(
        gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert resp.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


def test_endpoint_killed_mid_run_is_ejected_without_failures(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    from tests.procs import start_simulator

    doomed = start_simulator("doomed")
    try:
        gw = gateway(pool_policy("r", [sims[0].url, doomed.url]))
        before = [chat(gw).headers["x-switchyard-backend"] for _ in range(20)]
        assert doomed.url.removeprefix("http://") in before  # both endpoints served
        doomed.proc.stop()
        statuses = [chat(gw).status_code for _ in range(100)]
    finally:
        doomed.proc.stop()
    assert statuses == [200] * 100
    backend = doomed.url.removeprefix("http://")
    assert gw.metric("switchyard_backend_ejected", backend=backend) == 1
    assert gw.metric("switchyard_backend_ejections_total", backend=backend) >= 1


def test_silent_stream_hits_idle_timeout_with_error_event(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(pool_policy("r", [sims[0].url], "timeouts: {idle: 400ms}\n"))
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json={"model": "r", "messages": MESSAGES, "stream": True},
        headers={"x-sim-tokens": "5", "x-sim-chunk-delay-ms": "2000"},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        parts: list[bytes] = []

        def consume() -> None:
            parts.extend(r.iter_raw())

        with pytest.raises(httpx.HTTPError):
            consume()
    body = b"".join(parts)
    assert b"idle=0.4s" in body  # the error event names the timeout
    assert b"[DONE]" not in body
