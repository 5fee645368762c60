"""tritonclient.grpc and .aio, unchanged, through the gateway's KServe v2 gRPC front.

Real processes on loopback: `switchyard simulate kserve --grpc-port 0` (Triton's
GRPCInferenceService: champion weights as version 1, challenger as version 2) behind
`switchyard serve --grpc-port 0`. The clients talk to the gateway exactly as to Triton;
the route name is the model name they ask for.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.procs import GatewayProc, KServeSimulator, spawn, start_gateway, start_kserve

ROUTE = "fraud"
STREAM_ROUTE = "fraud-stream"
INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_port(sim: KServeSimulator) -> int:
    return int(sim.grpc.rsplit(":", 1)[1])


def dead_ports(n: int) -> list[int]:
    """Distinct loopback ports nothing listens on (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def policies(a: KServeSimulator, b: KServeSimulator) -> dict[str, str]:
    # One dead backend per route: an endpoint's health is shared by every route using it.
    dead, dead_stream, dead_down = dead_ports(3)
    head = "apiVersion: switchyard/v1\nkind: RoutingPolicy\nprotocol: kserve-v2\n"
    # Routes with a dead backend probe nothing: these tests are about what requests see.
    no_probe = "health_check: {enabled: false}\n"
    return {
        "fraud.yaml": head
        + f"""route: {ROUTE}
variants:
  - {{name: champion, weight: 90, endpoints: ["{a.url}"], grpc_port: {grpc_port(a)},
     model: fraud-detector, model_version: "1"}}
  - {{name: challenger, weight: 10, endpoints: ["{b.url}"], grpc_port: {grpc_port(b)},
     model: fraud-detector, model_version: "2"}}
sticky: {{hash_on: "header:x-user-id"}}
overrides:
  - match: {{header: {{x-cohort: beta}}}}
    variant: challenger
fallback: [champion]
""",
        "stream.yaml": head
        + f"""route: {STREAM_ROUTE}
variants:
  - {{name: main, endpoints: ["{a.url}"], grpc_port: {grpc_port(a)},
     model: fraud-detector-stream}}
""",
        "rescued.yaml": head
        + no_probe
        + f"""route: rescued
variants:
  - {{name: champion, endpoints: ["http://127.0.0.1:{dead}"], grpc_port: {dead}}}
  - {{name: standby, weight: 0, endpoints: ["{b.url}"], grpc_port: {grpc_port(b)},
     model: fraud-detector, model_version: "2"}}
fallback: [standby]
outlier: {{consecutive_failures: 2}}
""",
        "stream-rescued.yaml": head
        + no_probe
        + f"""route: stream-rescued
variants:
  - {{name: champion, endpoints: ["http://127.0.0.1:{dead_stream}"], grpc_port: {dead_stream}}}
  - {{name: standby, weight: 0, endpoints: ["{a.url}"], grpc_port: {grpc_port(a)},
     model: fraud-detector-stream}}
fallback: [standby]
""",
        "down.yaml": head
        + no_probe
        + f"""route: down
variants:
  - {{name: main, endpoints: ["http://127.0.0.1:{dead_down}"], grpc_port: {dead_down}}}
""",
        "slow.yaml": head
        + f"""route: slow
variants:
  - {{name: main, endpoints: ["{a.url}"], grpc_port: {grpc_port(a)}, model: fraud-detector}}
timeouts: {{first_byte: 500ms}}
""",
        "tiny.yaml": head
        + f"""route: tiny
variants:
  - {{name: main, endpoints: ["{a.url}"], grpc_port: {grpc_port(a)}, model: fraud-detector}}
max_body_bytes: 200
""",
        "chat.yaml": f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {{name: main, endpoints: ["{a.url}"]}}
""",
    }


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[KServeSimulator, KServeSimulator]]:
    versions = ("--model-version", "1", "--model-version", "2")
    a = start_kserve("ks-a", *versions)
    try:
        b = start_kserve("ks-b", *versions)
    except Exception:
        a.proc.stop()
        raise
    yield a, b
    a.proc.stop()
    b.proc.stop()


def start(tmp: Path, sims: tuple[KServeSimulator, KServeSimulator], *extra: str) -> GatewayProc:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in policies(*sims).items():
        (tmp / name).write_text(text)
    return start_gateway(tmp, "--grpc-port", "0", *extra)


@pytest.fixture(scope="module")
def gw(
    sims: tuple[KServeSimulator, KServeSimulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    proc = start(tmp_path_factory.mktemp("grpc-policies"), sims)
    yield proc
    proc.proc.stop()


@pytest.fixture
def client(gw: GatewayProc) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(gw.grpc)
    yield c
    c.close()


def features(rows: int = 2, width: int = 4) -> triton.InferInput:
    tensor = triton.InferInput("features", [rows, width], "FP32")
    values = np.arange(rows * width, dtype=np.float32).reshape(rows, width) / 10
    tensor.set_data_from_numpy(values)
    return tensor


def failure(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# Server and model metadata ------------------------------------------------------------


def test_server_and_model_calls_answer_as_triton_would(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "switchyard"
    assert client.is_model_ready(ROUTE)
    metadata = client.get_model_metadata(ROUTE)
    assert metadata.name == ROUTE  # the route, never the backend's model name
    assert [t.name for t in metadata.inputs] == ["features"]
    assert client.get_model_config(ROUTE).config.name == ROUTE


def test_infer_relays_raw_tensors_and_names_the_route(
    client: triton.InferenceServerClient, sims: tuple[KServeSimulator, KServeSimulator]
) -> None:
    result = client.infer(ROUTE, [features()], request_id="r-7")
    reply = result.get_response()
    assert reply.model_name == ROUTE and reply.id == "r-7"
    probability = result.as_numpy("probability")
    assert probability is not None and probability.shape == (2, 1)
    # The same version called directly gives the same numbers: the tensors went through
    # untouched, to the model and version the variant names.
    direct = triton.InferenceServerClient(sims[0].grpc)
    try:
        expected = direct.infer("fraud-detector", [features()], model_version=reply.model_version)
    finally:
        direct.close()
    assert np.array_equal(probability, expected.as_numpy("probability"))


def test_trailing_metadata_names_who_served(gw: GatewayProc) -> None:
    request = pb.ModelInferRequest(model_name=ROUTE)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    with grpc.insecure_channel(gw.grpc) as channel:
        call = channel.unary_unary(INFER)
        data, state = call.with_call(request.SerializeToString(), metadata=(("x-cohort", "beta"),))
    assert pb.ModelInferResponse.FromString(data).model_name == ROUTE
    trailing = dict(state.trailing_metadata())
    assert trailing["x-switchyard-route"] == ROUTE
    assert trailing["x-switchyard-variant"] == "challenger"
    # The backend's own metadata comes through, as its HTTP headers would.
    assert dict(state.initial_metadata())["x-sim-name"] == "ks-b"


# Traffic control ------------------------------------------------------------------------


def test_canary_split_is_counted_per_variant(
    client: triton.InferenceServerClient, gw: GatewayProc
) -> None:
    before = gw.metric("switchyard_requests_total", route=ROUTE, variant="challenger")
    versions = Counter(
        client.infer(ROUTE, [features(1)]).get_response().model_version for _ in range(200)
    )
    assert set(versions) == {"1", "2"}
    assert 150 <= versions["1"] <= 195, versions  # 90/10 of 200, with room for chance
    after = gw.metric("switchyard_requests_total", route=ROUTE, variant="challenger")
    assert after - before == versions["2"]


def test_sticky_users_keep_their_variant_from_metadata(
    client: triton.InferenceServerClient,
) -> None:
    seen: dict[str, set[str]] = {}
    for user in range(40):
        for _ in range(3):
            reply = client.infer(ROUTE, [features(1)], headers={"x-user-id": f"user-{user}"})
            seen.setdefault(f"user-{user}", set()).add(reply.get_response().model_version)
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {next(iter(v)) for v in seen.values()} == {"1", "2"}


def test_override_from_metadata_wins(client: triton.InferenceServerClient) -> None:
    for _ in range(10):
        reply = client.infer(ROUTE, [features(1)], headers={"x-cohort": "beta"})
        assert reply.get_response().model_version == "2"


def test_dead_champion_is_retried_on_the_fallback_then_ejected(
    client: triton.InferenceServerClient, gw: GatewayProc
) -> None:
    reply = client.infer("rescued", [features(1)])
    assert reply.get_response().model_version == "2"  # the standby answered
    assert gw.metric("switchyard_retries_total", route="rescued") >= 1
    # The failed attempt is counted as HTTP counts it (a rollout's error gate reads it).
    assert gw.metric("switchyard_upstream_failed_attempts_total", route="rescued") >= 1
    for _ in range(3):
        assert client.infer("rescued", [features(1)]).get_response().model_name == "rescued"
    # Passive failures took the dead endpoint out; later calls go straight to the standby.
    assert gw.metric("switchyard_backend_ejections_total") >= 1
    assert gw.metric("switchyard_fallbacks_total", route="rescued") >= 4
    assert gw.metric("switchyard_requests_total", route="rescued", status_class="2xx") == 4


# Errors ---------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: triton.InferenceServerClient, gw: GatewayProc) -> None:
    before = gw.metric("switchyard_unknown_route_requests_total")
    err = failure(lambda: client.infer("no-such-model", [features()]))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in str(err.message())
    assert failure(lambda: client.is_model_ready("no-such-model")).status() == (
        "StatusCode.NOT_FOUND"
    )
    assert gw.metric("switchyard_unknown_route_requests_total") == before + 2


def test_malformed_requests_are_invalid_argument(
    client: triton.InferenceServerClient, gw: GatewayProc
) -> None:
    with grpc.insecure_channel(gw.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(b"\x0a\x09fraud")  # a name cut short
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in str(caught.value.details())
    err = failure(lambda: client.infer("", [features()]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "model_name" in str(err.message())
    err = failure(lambda: client.infer("chat", [features()]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "speaks openai" in str(err.message())


def test_a_request_over_the_route_limit_is_resource_exhausted(
    client: triton.InferenceServerClient,
) -> None:
    assert client.infer("tiny", [features(1)]).get_response().model_name == "tiny"
    err = failure(lambda: client.infer("tiny", [features(50)]))
    assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "route 'tiny' limit of 200 bytes" in str(err.message())


def test_backend_errors_pass_through_with_status_and_message(
    client: triton.InferenceServerClient, sims: tuple[KServeSimulator, KServeSimulator]
) -> None:
    wrong = features(1, width=3)  # the model takes 4 features
    via_gateway = failure(lambda: client.infer(ROUTE, [wrong], headers={"x-cohort": "beta"}))
    direct = triton.InferenceServerClient(sims[1].grpc)
    try:
        expected = failure(lambda: direct.infer("fraud-detector", [wrong], model_version="2"))
    finally:
        direct.close()
    assert via_gateway.status() == expected.status() == "StatusCode.INVALID_ARGUMENT"
    assert via_gateway.message() == expected.message()


def test_all_backends_down_is_unavailable_with_a_reason(
    client: triton.InferenceServerClient, gw: GatewayProc
) -> None:
    err = failure(lambda: client.infer("down", [features()]))
    assert err.status() == "StatusCode.UNAVAILABLE"
    assert "route 'down'" in str(err.message())
    assert gw.metric("switchyard_gateway_errors_total", route="down") >= 1


def test_first_byte_timeout_is_deadline_exceeded(client: triton.InferenceServerClient) -> None:
    err = failure(lambda: client.infer("slow", [features()], headers={"x-sim-latency-ms": "2000"}))
    assert err.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "no response within 0.5s" in str(err.message())


# Streams and the asyncio client ----------------------------------------------------------


def test_stream_infer_relays_every_decoupled_reply(gw: GatewayProc) -> None:
    client = triton.InferenceServerClient(gw.grpc)
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(
        lambda result, error: replies.put((result, error)), headers={"x-user-id": "u1"}
    )
    try:
        for i in range(2):
            client.async_stream_infer(STREAM_ROUTE, [features(1)], request_id=f"s{i}")
        got = [replies.get(timeout=30) for _ in range(6)]
        assert all(error is None for _, error in got), got
        names = {result.get_response().model_name for result, _ in got}
        ids = Counter(result.get_response().id for result, _ in got)
        assert names == {STREAM_ROUTE} and ids == {"s0": 3, "s1": 3}
        # One stream serves one route: a request for another ends it with the reason.
        client.async_stream_infer(ROUTE, [features(1)], request_id="other")
        result, error = replies.get(timeout=30)
        assert result is None and error.status() == "StatusCode.INVALID_ARGUMENT"
        assert "one stream per model" in str(error.message())
    finally:
        client.stop_stream()
        client.close()


async def test_asyncio_client_calls_and_streams(gw: GatewayProc) -> None:
    client = triton_aio.InferenceServerClient(gw.grpc)
    try:
        assert await client.is_server_live()
        assert (await client.get_model_metadata(ROUTE)).name == ROUTE
        result = await client.infer(ROUTE, [features()], headers={"x-cohort": "beta"})
        assert result.get_response().model_version == "2"

        async def requests() -> Any:
            for i in range(2):
                yield {"model_name": STREAM_ROUTE, "inputs": [features(1)], "request_id": f"a{i}"}

        ids: Counter[str] = Counter()
        async for reply, error in client.stream_infer(requests()):
            assert error is None
            assert reply.get_response().model_name == STREAM_ROUTE
            ids[reply.get_response().id] += 1
        assert ids == {"a0": 3, "a1": 3}
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("no-such-model", [features()])
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        await client.close()


async def test_a_stream_is_replayed_on_the_fallback_before_its_first_reply(
    gw: GatewayProc,
) -> None:
    client = triton_aio.InferenceServerClient(gw.grpc)

    async def requests() -> Any:
        for i in range(2):
            yield {"model_name": "stream-rescued", "inputs": [features(1)], "request_id": f"f{i}"}

    try:
        ids: Counter[str] = Counter()
        async for reply, error in client.stream_infer(requests()):
            assert error is None
            assert reply.get_response().model_name == "stream-rescued"
            ids[reply.get_response().id] += 1
    finally:
        await client.close()
    assert ids == {"f0": 3, "f1": 3}  # both requests reached the standby, none was lost
    assert gw.metric("switchyard_retries_total", route="stream-rescued") == 1
    assert gw.metric("switchyard_requests_total", route="stream-rescued", status_class="2xx") == 1


async def test_a_client_leaving_mid_stream_is_counted_and_frees_the_backend(
    gw: GatewayProc, sims: tuple[KServeSimulator, KServeSimulator]
) -> None:
    client = triton_aio.InferenceServerClient(gw.grpc)

    async def requests() -> Any:
        yield {"model_name": STREAM_ROUTE, "inputs": [features(1)], "request_id": "gone"}
        await asyncio.sleep(30)  # the client keeps its side open, then leaves

    try:
        stream = client.stream_infer(requests(), headers={"x-sim-chunk-delay-ms": "300"})
        async for _reply, error in stream:
            assert error is None
            break  # leave after the first reply of three
    finally:
        await client.close()
    backend = sims[0].url.removeprefix("http://")
    for _ in range(50):
        gone = gw.metric("switchyard_requests_total", route=STREAM_ROUTE, status_class="none")
        if gone >= 1 and gw.metric("switchyard_backend_in_flight", backend=backend) == 0:
            break
        await asyncio.sleep(0.1)
    assert gw.metric("switchyard_requests_total", route=STREAM_ROUTE, status_class="none") >= 1
    assert gw.metric("switchyard_backend_in_flight", backend=backend) == 0
    assert (
        gw.metric("switchyard_gateway_errors_total", route=STREAM_ROUTE, code="client_closed") >= 1
    )


# Drain ---------------------------------------------------------------------------------


async def until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll a blocking `check` (off the event loop, which the client needs) until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.02)
    return await asyncio.to_thread(check)


async def test_sigterm_lets_calls_in_flight_finish(
    sims: tuple[KServeSimulator, KServeSimulator], tmp_path: Path
) -> None:
    gateway = start(tmp_path / "drain", sims, "--drain-timeout", "10")
    client = triton_aio.InferenceServerClient(gateway.grpc)
    try:
        slow = asyncio.ensure_future(
            client.infer(ROUTE, [features()], headers={"x-sim-latency-ms": "1500"})
        )
        # SIGTERM once the call is at a backend, not after a guessed pause: a call that had
        # not reached the gateway yet would be refused by a draining one.
        assert await until(
            lambda: gateway.metric("switchyard_backend_in_flight") == 1, timeout=30
        ), "the call never reached a backend"
        gateway.proc.signal(signal.SIGTERM)
        result = await slow
        assert result.get_response().model_name == ROUTE
        # A new call only once the gateway has taken the signal: sent before, it is served.
        assert await until(
            lambda: "draining: readiness now fails" in gateway.proc.output(), timeout=10
        )
        with pytest.raises(InferenceServerException) as caught:
            await client.infer(ROUTE, [features()])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        # It exits by itself once drained, and cleanly. (Not `stop() == 0`: its SIGTERM
        # can reach the gateway after it gave its signal handlers back, which kills it.)
        assert await asyncio.to_thread(gateway.proc.popen.wait, 30) == 0
    finally:
        await client.close()
        gateway.proc.stop()


def test_a_taken_grpc_port_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "down.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: r\nprotocol: kserve-v2\n"
        'variants: [{name: main, endpoints: ["http://127.0.0.1:9"], grpc_port: 9}]\n'
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--port", "0", "--admin-port", "0", "--policies", str(tmp_path)]
        proc = spawn([*args, "--grpc-port", str(port)])
        try:
            assert proc.popen.wait(60) == 2
        finally:
            proc.stop()
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in proc.output()
