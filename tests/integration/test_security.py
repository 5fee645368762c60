"""Security of a running gateway: admin API behind its token, client API keys with
per-key rate limits, hop-by-hop and internal headers stripped both ways, no way for a
client to choose an upstream (SSRF), no local files outside the allowed roots, and
secrets kept out of the logs.

Real gateway processes on loopback, the real `openai` and `ollama` clients; the only
fake is a recording HTTP/1.1 backend at the network edge (it shows exactly which header
lines the gateway sent, and answers with header lines no simulator would send).
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.controlplane.registry.webhook import sign
from tests.procs import (
    GatewayProc,
    Simulator,
    spawn,
    start_gateway,
    start_kserve,
    start_simulator,
)

TOKEN = "admin-" + uuid.uuid4().hex
KEY_A = "sk-team-a-" + uuid.uuid4().hex
KEY_SLOW = "sk-slow-" + uuid.uuid4().hex
HOOK_SECRET = "hook-" + uuid.uuid4().hex
REGISTRY_TOKEN = "mlflow-" + uuid.uuid4().hex
MESSAGES = [{"role": "user", "content": "x"}]

# Every admin endpoint that changes state or reveals internals, with concrete paths.
GUARDED = [
    ("POST", "/admin/reload"),
    ("GET", "/admin/snapshot"),
    ("GET", "/admin/routes"),
    ("POST", "/admin/explain"),
    ("GET", "/admin/drift"),
    ("GET", "/admin/drift/r"),
    ("GET", "/admin/drift/r/report.html"),
    ("GET", "/admin/rollouts"),
    ("GET", "/admin/rollouts/r"),
    ("POST", "/admin/rollouts/r/pause"),
    ("GET", "/admin/experiments"),
    ("GET", "/admin/experiments/r"),
    ("GET", "/admin/shadow"),
    ("GET", "/admin/shadow/r"),
]
OPEN = ["/metrics", "/livez", "/readyz"]
SERVE = ["serve", "--port", "0", "--admin-port", "0", "--grpc-port", "-1"]


def policy(route: str, endpoint: str, protocol: str = "openai", extra: str = "") -> str:
    return (
        f"apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: {route}\nprotocol: {protocol}\n"
        f'variants: [{{name: main, endpoints: ["{endpoint}"]}}]\n{extra}'
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- A recording backend at the network edge ---------------------------------------------


class RecordingBackend:
    """HTTP/1.1 on a thread: records each request head, answers a fixed response."""

    RESPONSE_HEADERS = (
        b"Connection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: named by Connection\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Switchyard-Variant: forged\r\n"
        b"X-Switchyard-Backend: http://forged.example\r\n"
        b"X-Backend-Header: kept\r\n"
    )

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        backend = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        head += line
                    backend.heads.append(head)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    self.rfile.read(length)
                    body = b'{"id":"x","object":"chat.completion","choices":[]}'
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + backend.RESPONSE_HEADERS
                        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
                    )

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[RecordingBackend]:
    backend = RecordingBackend()
    yield backend
    backend.close()


# -- Admin API --------------------------------------------------------------------------


@pytest.fixture
def guarded_gw(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> GatewayProc:
    return gateway(policy("r", sims[0].url), extra=("--admin-token", TOKEN))


@pytest.fixture
def gateway_env(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    """Like the `gateway` fixture, with environment variables (secrets stay off argv)."""
    started: list[GatewayProc] = []

    def make(*policies: str, extra: tuple[str, ...] = (), env: dict[str, str]) -> GatewayProc:
        folder = tmp_path / f"env-policies{len(started)}"
        folder.mkdir()
        for i, text in enumerate(policies):
            (folder / f"p{i}.yaml").write_text(text)
        gw = start_gateway(folder, *extra, env=env)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.proc.stop()


def test_every_admin_endpoint_needs_the_token(guarded_gw: GatewayProc) -> None:
    with httpx.Client(base_url=guarded_gw.admin, timeout=10) as admin:
        for method, path in GUARDED:
            body = {"route": "r"} if path == "/admin/explain" else None
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                reply = admin.request(method, path, json=body, headers=headers)
                assert reply.status_code == 401, (method, path, headers, reply.text)
                assert "Bearer" in reply.json()["error"]
                assert reply.headers["www-authenticate"] == "Bearer"
            ok = admin.request(
                method, path, json=body, headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert ok.status_code != 401, (method, path)
        for path in OPEN:  # probes and Prometheus stay open
            assert admin.get(path).status_code == 200, path
    assert TOKEN not in guarded_gw.proc.output()


def test_webhook_is_authenticated_by_its_signature(
    gateway_env: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    # A registry that is not there: the gateway serves, the webhook pokes the resolver.
    gw = gateway_env(
        policy("r", sims[0].url),
        extra=("--admin-token", TOKEN, "--registry-uri", f"http://127.0.0.1:{free_port()}"),
        env={"SWITCHYARD_REGISTRY_WEBHOOK_SECRET": HOOK_SECRET},
    )
    body = json.dumps(
        {"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "a"}}
    ).encode()
    now = str(int(time.time()))

    def deliver(secret: str, stamp: str) -> httpx.Response:
        headers = {
            "x-mlflow-signature": sign(secret, "d1", stamp, body),
            "x-mlflow-timestamp": stamp,
            "x-mlflow-delivery-id": "d1",
        }
        return httpx.post(f"{gw.admin}/admin/registry/webhook", content=body, headers=headers)

    assert deliver(HOOK_SECRET, now).json() == {"accepted": True}  # no bearer token needed
    assert deliver("wrong-secret", now).status_code == 401
    stale = deliver(HOOK_SECRET, str(int(time.time()) - 3600))  # a replayed delivery
    assert stale.status_code == 401 and "old" in stale.json()["error"]
    unsigned = httpx.post(f"{gw.admin}/admin/registry/webhook", content=body)
    assert unsigned.status_code == 401
    assert HOOK_SECRET not in gw.proc.output()


def test_supervisor_passes_the_token_check_to_its_workers(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(policy("r", sims[0].url), extra=("--admin-token", TOKEN, "--workers", "2"))
    with httpx.Client(base_url=gw.admin, timeout=10) as admin:
        deadline = time.monotonic() + 60
        while admin.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        for method, path in GUARDED:
            body = {"route": "r"} if path == "/admin/explain" else None
            reply = admin.request(method, path, json=body)
            assert reply.status_code == 401, (method, path, reply.text)
        good = admin.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and len(good.json()["workers"]) == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_admin_api_is_not_exposed_without_a_token(tmp_path: Path, workers: str) -> None:
    (tmp_path / "r.yaml").write_text(policy("r", "http://127.0.0.1:9"))
    proc = spawn(
        [*SERVE, "--policies", str(tmp_path), "--admin-host", "0.0.0.0", "--workers", workers]
    )
    assert proc.popen.wait(60) != 0
    proc.stop()
    assert "refusing to expose the admin API on 0.0.0.0 without a token" in proc.output()


# -- Client API keys --------------------------------------------------------------------


def write_keys(path: Path, *entries: dict[str, object]) -> Path:
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


@pytest.fixture
def keyed_gw(
    gateway: Callable[..., GatewayProc],
    sims: tuple[Simulator, Simulator],
    recorder: RecordingBackend,
    tmp_path: Path,
) -> Iterator[GatewayProc]:
    keys = write_keys(
        tmp_path / "keys.json",
        {"name": "team-a", "key": KEY_A},
        {"name": "slow", "key": KEY_SLOW, "rate": 0.2, "burst": 2},
    )
    ollama_sim = start_simulator("keys-ollama", "--tokens", "3", kind="ollama")
    gw = gateway(
        policy("r", sims[0].url),
        policy("o", ollama_sim.url, protocol="ollama"),
        policy("rec", recorder.url),
        extra=("--api-keys", str(keys), "--access-log", "--log-level", "debug"),
    )
    yield gw
    ollama_sim.proc.stop()


def test_api_keys_with_the_openai_and_ollama_clients(keyed_gw: GatewayProc) -> None:
    with openai.OpenAI(base_url=f"{keyed_gw.url}/v1", api_key=KEY_A, max_retries=0) as good:
        reply = good.chat.completions.create(model="r", messages=MESSAGES)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        assert "r" in {m.id for m in good.models.list()}
    with openai.OpenAI(base_url=f"{keyed_gw.url}/v1", api_key="sk-nope-0000000000000000") as bad:
        with pytest.raises(openai.AuthenticationError) as refused:
            bad.chat.completions.create(model="r", messages=MESSAGES)  # type: ignore[arg-type]
        assert "not valid" in refused.value.message
    with ollama.Client(host=keyed_gw.url, headers={"x-api-key": KEY_A}) as keyed:
        assert keyed.chat(model="o", messages=MESSAGES).message.content
    with (
        ollama.Client(host=keyed_gw.url) as keyless,
        pytest.raises(ollama.ResponseError) as missing,
    ):
        keyless.chat(model="o", messages=MESSAGES)
    assert missing.value.status_code == 401 and "requires an API key" in missing.value.error
    accepted = keyed_gw.metric(
        "switchyard_api_key_requests_total", key="team-a", outcome="accepted"
    )
    assert accepted >= 3
    assert keyed_gw.metric("switchyard_api_key_requests_total", outcome="unknown") == 1


def test_rate_limit_per_key_answers_429_with_retry_after(keyed_gw: GatewayProc) -> None:
    body = {"model": "r", "messages": MESSAGES}
    slow = {"authorization": f"Bearer {KEY_SLOW}"}
    with httpx.Client(base_url=keyed_gw.url, timeout=10) as client:
        statuses = [client.post("/v1/chat/completions", json=body, headers=slow) for _ in range(4)]
        assert [r.status_code for r in statuses[:2]] == [200, 200]  # the burst
        limited = statuses[2]
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "'slow' is over its limit" in limited.json()["error"]["message"]
        # Another key is not affected by the slow key's bucket.
        other = {"authorization": f"Bearer {KEY_A}"}
        assert client.post("/v1/chat/completions", json=body, headers=other).status_code == 200
    with (
        openai.OpenAI(base_url=f"{keyed_gw.url}/v1", api_key=KEY_SLOW, max_retries=0) as c,
        pytest.raises(openai.RateLimitError),
    ):
        c.chat.completions.create(model="r", messages=MESSAGES)  # type: ignore[arg-type]


def test_keys_never_reach_the_backend_or_the_logs(
    keyed_gw: GatewayProc, recorder: RecordingBackend
) -> None:
    with httpx.Client(base_url=keyed_gw.url, timeout=10) as client:
        for headers in ({"authorization": f"Bearer {KEY_A}"}, {"x-api-key": KEY_A}):
            reply = client.post(
                "/v1/chat/completions", json={"model": "rec", "messages": MESSAGES}, headers=headers
            )
            assert reply.status_code == 200
        client.post("/v1/chat/completions", json={"model": "r"}, headers={"x-api-key": "sk-guess"})
    assert len(recorder.heads) == 2
    for head in recorder.heads:
        assert KEY_A.encode() not in head
        assert b"authorization" not in head.lower() and b"x-api-key" not in head.lower()
    # The access log is on (JSON lines, written in batches off the request path): wait
    # for both answered requests' lines, then check no key reached the output.
    logged = '"path":"/v1/chat/completions"'
    deadline = time.monotonic() + 10
    while keyed_gw.proc.output().count(logged) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    output = keyed_gw.proc.output()
    assert output.count(logged) >= 2, output[-2000:]
    assert KEY_A not in output and KEY_SLOW not in output and "sk-guess" not in output


def test_keys_file_changes_are_followed(keyed_gw: GatewayProc, tmp_path: Path) -> None:
    fresh = "sk-fresh-" + uuid.uuid4().hex
    write_keys(tmp_path / "keys.json", {"name": "fresh", "key": fresh})
    body = {"model": "r", "messages": MESSAGES}
    deadline = time.monotonic() + 15
    status = 0
    while time.monotonic() < deadline and status != 200:
        time.sleep(0.5)
        status = httpx.post(
            f"{keyed_gw.url}/v1/chat/completions", json=body, headers={"x-api-key": fresh}
        ).status_code
    assert status == 200
    gone = httpx.post(
        f"{keyed_gw.url}/v1/chat/completions", json=body, headers={"x-api-key": KEY_A}
    )
    assert gone.status_code == 401


def test_bad_keys_file_refuses_to_start_without_echoing_keys(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "r.yaml").write_text(policy("r", "http://127.0.0.1:9"))
    keys = write_keys(tmp_path / "keys.json", {"name": "a", "key": KEY_A, "rate": "fast"})
    proc = spawn([*SERVE, "--policies", str(tmp_path / "p"), "--api-keys", str(keys)])
    assert proc.popen.wait(60) == 2
    proc.stop()
    assert "key 'a': 'rate' must be a number" in proc.output()
    assert KEY_A not in proc.output()


# -- Headers both ways, and no SSRF --------------------------------------------------------


def test_hop_by_hop_and_internal_headers_are_stripped_both_ways(
    gateway: Callable[..., GatewayProc], recorder: RecordingBackend
) -> None:
    gw = gateway(policy("rec", recorder.url))
    request_headers = {
        "connection": "keep-alive, x-hop-named",
        "x-hop-named": "1",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "trailer": "x-checksum",
        "proxy-authorization": "Basic c2VjcmV0",
        "proxy-connection": "keep-alive",
        "x-switchyard-backend": "http://evil.example",
        "x-switchyard-variant": "forged",
        "x-user-id": "u-1",
        "x-request-id": "client-id-1",
    }
    reply = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "rec", "messages": MESSAGES},
        headers=request_headers,
    )
    assert reply.status_code == 200
    [head] = recorder.heads
    lines = [line.lower() for line in head.split(b"\r\n")[1:] if line]
    names = {line.split(b":", 1)[0] for line in lines}
    for dropped in (
        b"x-hop-named",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-authorization",
        b"proxy-connection",
        b"x-switchyard-backend",
        b"x-switchyard-variant",
        b"connection",
    ):
        assert dropped not in names, (dropped, head)
    assert b"x-user-id: u-1" in lines
    assert f"host: {recorder.url.removeprefix('http://')}".encode() in lines
    assert b"x-request-id: client-id-1" in lines  # a well-formed client id is kept
    # The answer: the backend's hop-by-hop fields are gone, internal ones are ours.
    for dropped in ("keep-alive", "proxy-authenticate", "trailer", "upgrade", "x-secret-hop"):
        assert dropped not in reply.headers, dropped
    assert reply.headers["x-switchyard-variant"] == "main"
    assert reply.headers["x-switchyard-backend"] == recorder.url.removeprefix("http://")
    assert reply.headers["x-backend-header"] == "kept"


def test_a_client_cannot_choose_the_upstream(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    legit, canary = sims
    gw = gateway(policy("r", legit.url))
    canary_host = canary.url.removeprefix("http://")
    before = int(canary.stats()["started"])  # type: ignore[call-overload]
    tries: list[tuple[str, dict[str, object], dict[str, str]]] = [
        ("/v1/chat/completions", {"model": "r"}, {"host": canary_host}),
        ("/v1/chat/completions", {"model": "r"}, {"x-forwarded-host": canary_host}),
        ("/v1/chat/completions", {"model": "r"}, {"forwarded": f"host={canary_host}"}),
        ("/v1/chat/completions", {"model": "r"}, {"x-switchyard-backend": canary.url}),
        ("/v1/chat/completions", {"model": "r"}, {"x-switchyard-endpoint": canary.url}),
        ("/v1/chat/completions", {"model": "r", "api_base": canary.url}, {}),
        ("/v1/chat/completions", {"model": "r", "base_url": f"{canary.url}/v1"}, {}),
        ("/v1/chat/completions", {"model": canary.url}, {}),
        ("/v1/chat/completions", {"model": f"r@{canary.url}"}, {}),
        ("/v1/chat/completions", {"model": f"models:/r@{canary_host}"}, {}),
        ("/api/chat", {"model": "r", "host": canary.url}, {}),
    ]
    with httpx.Client(timeout=10) as client:
        for path, extra, headers in tries:
            body = {"messages": MESSAGES, **extra}
            reply = client.post(gw.url + path, json=body, headers=headers)
            assert reply.status_code < 500, (path, extra, headers, reply.text)
            if reply.status_code == 200:
                assert reply.headers["x-sim-name"] == legit.name, (path, extra, headers)
        with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))) as s:
            payload = json.dumps({"model": "r", "messages": MESSAGES}).encode()
            s.sendall(
                b"POST %s/v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (canary.url.encode(), canary_host.encode(), len(payload), payload)
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 200") and b"x-sim-name: " + legit.name.encode() in raw
    assert int(canary.stats()["started"]) == before  # type: ignore[call-overload]


def test_policies_cannot_name_files_outside_the_roots(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(policy("r", sims[0].url), extra=("--watch-interval", "0"))
    for reference in ("/etc/passwd", "../../../../etc/passwd", "file:///etc/passwd"):
        drift = f"drift:\n  reference: {reference}\n"
        (gw.policy_dir / "p0.yaml").write_text(policy("r", sims[0].url, extra=drift))
        reply = httpx.post(f"{gw.admin}/admin/reload", timeout=10)
        assert reply.status_code == 422, (reference, reply.text)
        assert "outside the allowed roots" in reply.text, reference
    # The last good policy keeps serving.
    ok = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "r", "messages": MESSAGES})
    assert ok.status_code == 200


def test_registry_and_admin_secrets_stay_out_of_the_logs(
    gateway_env: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    registry = f"http://127.0.0.1:{free_port()}"
    gw = gateway_env(
        policy("r", sims[0].url)
        + "---\n"
        + "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: reg\n"
        + "variants: [{name: champion, target: 'models:/reg@champion'}]\n",
        extra=("--admin-token", TOKEN, "--registry-uri", registry, "--log-level", "debug"),
        env={"SWITCHYARD_REGISTRY_TOKEN": REGISTRY_TOKEN},
    )
    time.sleep(1.0)  # a few failed registry lookups get logged meanwhile
    httpx.post(f"{gw.admin}/admin/reload", headers={"authorization": "Bearer nope"})
    output = gw.proc.output()
    assert "registry" in output.lower()  # the failures are logged, the secrets are not
    assert REGISTRY_TOKEN not in output and TOKEN not in output


def test_api_keys_guard_the_grpc_front_too(
    gateway: Callable[..., GatewayProc], tmp_path: Path
) -> None:
    keys = write_keys(
        tmp_path / "keys.json",
        {"name": "team-a", "key": KEY_A},
        {"name": "slow", "key": KEY_SLOW, "rate": 0.2, "burst": 1},
    )
    sim = start_kserve("keys-kserve")
    try:
        port = sim.grpc.rsplit(":", 1)[1]
        gw = gateway(
            "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: fraud-detector\n"
            f'protocol: kserve-v2\nvariants: [{{name: main, endpoints: ["{sim.url}"], '
            f"grpc_port: {port}}}]\n",
            extra=("--api-keys", str(keys), "--grpc-port", "0"),
        )
        tensor = grpcclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        with grpcclient.InferenceServerClient(gw.grpc) as client:
            ok = client.infer(
                "fraud-detector", [tensor], headers={"authorization": f"Bearer {KEY_A}"}
            )
            assert ok.as_numpy("probability").shape == (1, 1)
            for headers, code, text in (
                ({}, "StatusCode.UNAUTHENTICATED", "requires an API key"),
                ({"x-api-key": "sk-guess"}, "StatusCode.UNAUTHENTICATED", "not valid"),
            ):
                with pytest.raises(InferenceServerException) as refused:
                    client.infer("fraud-detector", [tensor], headers=headers)
                assert refused.value.status() == code and text in refused.value.message()
            slow = {"x-api-key": KEY_SLOW}
            client.infer("fraud-detector", [tensor], headers=slow)  # the burst of one
            with pytest.raises(InferenceServerException) as limited:
                client.infer("fraud-detector", [tensor], headers=slow)
            assert limited.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert "'slow' is over its limit" in limited.value.message()
        assert gw.metric("switchyard_api_key_requests_total", key="team-a", outcome="accepted") == 1
        assert gw.metric("switchyard_api_key_requests_total", outcome="missing") == 1
    finally:
        sim.proc.stop()
