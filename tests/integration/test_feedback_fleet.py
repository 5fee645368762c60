"""Feedback across workers and replicas: signed request ids, shared claims, Redis down.

Every request and every feedback goes on a new connection (`httpx.post`), so with
`--workers 2` the kernel spreads them over both workers: feedback mostly reaches a
worker that did not serve the request, which is what a plain per-process memory got
wrong (a user measured 44 of 100 answered 404).
"""

from __future__ import annotations

import base64
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.procs import GatewayProc, Simulator
from tests.redisrig import running_redis

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def experiment_policy(route: str, a: Simulator, b: Simulator) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - {{name: champion, weight: 50, endpoints: ["{a.url}"]}}
  - {{name: challenger, weight: 50, endpoints: ["{b.url}"]}}
experiment: {{confidence: 0.9}}
"""


def plain_policy(route: str, a: Simulator) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants: [{{name: main, endpoints: ["{a.url}"]}}]
"""


def chat(gw: GatewayProc, route: str = "ab", **headers: str) -> httpx.Response:
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", json={"model": route, **CHAT}, headers=headers, timeout=10
    )
    assert r.status_code == 200, r.text
    return r


def feedback(gw: GatewayProc, rid: str, outcome: bool = True) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/feedback", json={"request_id": rid, "outcome": outcome}, timeout=10
    )


def forged(fid: str) -> str:
    """The id with its MAC's first byte flipped (still 22 base64url characters)."""
    head, mac = fid.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(mac + "=="))
    raw[0] ^= 0x80
    return f"{head}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_two_workers_attribute_every_feedback_with_no_options(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    gw = gateway(
        experiment_policy("ab", a, b) + "---\n" + plain_policy("plain", a),
        extra=("--workers", "2"),
    )
    served: list[tuple[str, str]] = []
    answers: Counter[int] = Counter()
    for i in range(100):
        r = chat(gw)
        rid = r.headers["x-request-id"]
        # The gateway made the id (the client sent none): it is the signed feedback id.
        assert rid.startswith("fb1.") and r.headers["x-switchyard-feedback-id"] == rid
        variant = r.headers["x-switchyard-variant"]
        served.append((rid, variant))
        f = feedback(gw, rid, outcome=i % 3 == 0)
        answers[f.status_code] += 1
        assert f.status_code == 200, f.text
        assert (f.json()["variant"], f.json()["route"]) == (variant, "ab")
    assert answers == {200: 100}  # 100 recorded, 0 lost
    # Duplicates: 409 on whichever worker (20 new connections reach both).
    for rid, _ in served[:20]:
        dup = feedback(gw, rid)
        assert dup.status_code == 409, dup.text
        assert dup.json()["error"]["code"] == "feedback_already_recorded"
    # An untracked route's responses carry no feedback id, and their ids stay plain.
    r = chat(gw, "plain")
    assert "x-switchyard-feedback-id" not in r.headers
    assert not r.headers["x-request-id"].startswith("fb1.")
    # The supervisor's merged /metrics: every feedback counted once, by served variant.
    by_variant = Counter(v for _, v in served)
    for variant, n in by_variant.items():
        assert gw.metric("switchyard_experiment_outcomes_total", route="ab", variant=variant) == n
    assert gw.metric("switchyard_feedback_requests_total", result="recorded") == 100
    assert gw.metric("switchyard_feedback_requests_total", result="duplicate") == 20
    assert 'feedback_store="sqlite:.state/feedback/claims.sqlite"' in gw.metrics()
    output = gw.proc.output()
    assert "made by the supervisor for its workers" in output
    assert gw.proc.stop() == 0


def _raw_pipelined(gw: GatewayProc, fid: str) -> bytes:
    """A feedback (answered after the claims store) and a GET pipelined behind it on one
    connection: the answers must come back in order."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"request_id": "%s", "reward": 2.5}' % fid.encode()
    data = (
        b"POST /v1/feedback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s"
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % (len(body), body)
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_replicas_share_feedback_through_redis_and_survive_it_going_away(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    a, b = sims
    secret = tmp_path / "fleet-secret"
    secret.write_text("fleet-secret-for-the-test-0123456789\n")
    other_secret = tmp_path / "other-secret"
    other_secret.write_text("another-fleet-altogether-987654321\n")
    policy = experiment_policy("ab", a, b)
    with running_redis(tmp_path / "redis") as redis:
        fleet = ("--feedback-store", redis.url, "--fleet-secret-file", str(secret))
        gw_a = gateway(policy, extra=fleet)
        gw_b = gateway(policy, extra=fleet)
        stranger = gateway(policy, extra=("--fleet-secret-file", str(other_secret)))
        assert f"duplicates claimed in {redis.url}" in gw_a.proc.output()
        assert "fleet-secret-for-the-test" not in gw_a.proc.output() + gw_a.metrics()

        # A's responses, fed back to B: recorded, attributed to what A served.
        served = []
        for _ in range(10):
            r = chat(gw_a)
            served.append((r.headers["x-request-id"], r.headers["x-switchyard-variant"]))
        for rid, variant in served:
            f = feedback(gw_b, rid)
            assert f.status_code == 200, f.text
            assert f.json()["variant"] == variant
        for rid, _ in served[:3]:  # duplicates: 409 on both replicas
            assert feedback(gw_a, rid).status_code == 409
            assert feedback(gw_b, rid).status_code == 409
        assert gw_b.metric("switchyard_feedback_requests_total", result="recorded") == 10
        assert gw_a.metric("switchyard_feedback_requests_total", result="recorded") == 0

        # A client's own x-request-id stays its own; the feedback id goes alongside.
        own = chat(gw_a, **{"x-request-id": "client-own-id-42"})
        assert own.headers["x-request-id"] == "client-own-id-42"
        fid = own.headers["x-switchyard-feedback-id"]
        assert feedback(gw_b, "client-own-id-42").status_code == 404  # plain: A's alone
        assert feedback(gw_b, fid).status_code == 200
        again = feedback(gw_a, "client-own-id-42")  # the same request, by its other id
        assert again.status_code == 409, again.text

        # Forged, foreign: 404 unknown, saying why.
        fresh = chat(gw_a).headers["x-request-id"]
        bad = feedback(gw_b, forged(fresh))
        assert bad.status_code == 404
        assert "signature does not match" in bad.json()["error"]["message"]
        alien = feedback(stranger, fresh)
        assert alien.status_code == 404, alien.text
        assert "not issued by this fleet" in alien.json()["error"]["message"]
        assert stranger.metric("switchyard_feedback_requests_total", result="unknown") == 1

        # An async answer keeps its place in a pipelined connection.
        piped = _raw_pipelined(gw_a, fresh)
        first, _, second = piped.partition(b"HTTP/1.1 200 OK\r\n")[2].partition(b"HTTP/1.1 ")
        assert b'"reward":2.5' in first and b'"variant"' in first
        assert second.startswith(b"200 OK") and b'"object":"list"' in second

        # Redis hung (SIGSTOP: connections open, no answers): 503 within the bound.
        stalled = chat(gw_a).headers["x-request-id"]
        redis.pause()
        try:
            started = time.monotonic()
            hung = feedback(gw_a, stalled)
            took = time.monotonic() - started
            chat(gw_a)  # inference never waits for the store
        finally:
            redis.resume()
        assert hung.status_code == 503, hung.text
        assert "unreachable" in hung.json()["error"]["message"]
        assert took < 3.0, took

        # Redis gone: feedback is 503 with Retry-After, promptly; inference is unaffected.
        pending = chat(gw_a).headers["x-request-id"]
        redis.kill()
        started = time.monotonic()
        down = feedback(gw_b, pending)
        took = time.monotonic() - started
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1"
        error = down.json()["error"]
        assert error["code"] == "feedback_store_unavailable"
        assert f"feedback store {redis.url} unreachable" in error["message"]
        assert "send it again" in error["message"]
        assert took < 3.0, took
        for _ in range(5):
            t0 = time.monotonic()
            chat(gw_a)
            chat(gw_b)
            assert time.monotonic() - t0 < 2.0
        assert gw_b.metric("switchyard_feedback_requests_total", result="unavailable") == 1
        assert gw_a.metric("switchyard_feedback_requests_total", result="unavailable") == 1

        # Redis back on the same port: the same feedback, sent again, is recorded.
        redis.start()
        deadline = time.monotonic() + 15
        status = 0
        while time.monotonic() < deadline:
            status = feedback(gw_b, pending).status_code
            if status != 503:
                break
            time.sleep(0.2)
        assert status == 200
        assert feedback(gw_a, pending).status_code == 409


@pytest.mark.parametrize("setting", ["flag", "env"])
def test_a_redis_store_without_a_fleet_secret_refuses_to_start(
    setting: str, tmp_path: Path
) -> None:
    from tests.procs import spawn

    (tmp_path / "p.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: r\n"
        'variants: [{name: main, endpoints: ["http://127.0.0.1:9"]}]\n'
    )
    args = ["serve", "--port", "0", "--admin-port", "0", "--grpc-port", "-1"]
    args += ["--policies", str(tmp_path)]
    env = {"SWITCHYARD_FLEET_SECRET": "", "SWITCHYARD_FLEET_SECRET_FILE": ""}
    if setting == "flag":
        args += ["--feedback-store", "redis://127.0.0.1:6390/0", "--workers", "2"]
    else:
        env["SWITCHYARD_FEEDBACK_STORE"] = "redis://:pw@127.0.0.1:6390/0"
    proc = spawn(args, env=env)
    try:
        proc.popen.wait(30)
    finally:
        proc.stop()
    out = proc.output()
    assert proc.popen.returncode == 2, out
    assert (
        "refusing to start" in out and "--fleet-secret-file PATH or SWITCHYARD_FLEET_SECRET" in out
    )
    assert ":pw@" not in out


def test_kserve_over_grpc_and_http_carries_the_feedback_id(
    gateway: Callable[..., GatewayProc], tmp_path: Path
) -> None:
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb

    from tests.procs import start_kserve

    sim = start_kserve("fb-ks")
    try:
        port = sim.grpc.rsplit(":", 1)[1]
        gw = gateway(
            f"""apiVersion: switchyard/v1
kind: RoutingPolicy
protocol: kserve-v2
route: fraud
variants:
  - {{name: champion, weight: 50, endpoints: ["{sim.url}"], grpc_port: {port},
     model: fraud-detector}}
  - {{name: challenger, weight: 50, endpoints: ["{sim.url}"], grpc_port: {port},
     model: fraud-detector}}
experiment: {{confidence: 0.9}}
""",
            extra=("--grpc-port", "0"),
        )
        request = pb.ModelInferRequest(model_name="fraud")
        request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        with grpc.insecure_channel(gw.grpc) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            _, state = infer.with_call(request.SerializeToString(), timeout=10)
            _, own = infer.with_call(
                request.SerializeToString(), metadata=(("x-request-id", "mine-1"),), timeout=10
            )
        trailing = dict(state.trailing_metadata())
        fid = trailing["x-switchyard-feedback-id"]
        assert fid.startswith("fb1.")
        f = feedback(gw, fid)
        assert f.status_code == 200, f.text
        assert (f.json()["route"], f.json()["variant"]) == (
            "fraud",
            trailing["x-switchyard-variant"],
        )
        assert dict(own.trailing_metadata())["x-switchyard-feedback-id"] != fid
        # The KServe HTTP front is an exchange like the OpenAI one.
        body = {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "data": [1.0, 1.0, 1.0, 1.0],
                }
            ]
        }
        r = httpx.post(f"{gw.url}/v2/models/fraud/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == r.headers["x-switchyard-feedback-id"]
        assert feedback(gw, r.headers["x-request-id"]).status_code == 200
    finally:
        sim.proc.stop()
