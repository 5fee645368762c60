"""Traces an SRE can follow: the real gateway, real clients, a real OTLP/HTTP receiver.

Every span is decoded by tests/otlp_receiver.py with the official opentelemetry-proto
messages. Backends are the bundled simulators, which record the `traceparent` each
request brought (GET /sim/stats), so the tests see what was propagated upstream.
"""

from __future__ import annotations

import json
import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from tests.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from tests.procs import (
    GatewayProc,
    KServeSimulator,
    Simulator,
    start_gateway,
    start_kserve,
    start_simulator,
)

SERVER, CLIENT = 2, 3
ERROR = 2
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def policies(sims: dict[str, Any], dead: str) -> str:
    kserve: KServeSimulator = sims["kserve"]
    grpc_port = kserve.grpc.rsplit(":", 1)[1]
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {{name: champion, endpoints: ["{sims["a"].url}"]}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: flaky
variants:
  - {{name: primary, weight: 100, endpoints: ["{sims["flaky"].url}"]}}
  - {{name: backup, weight: 0, endpoints: ["{sims["a"].url}"]}}
fallback: [backup]
retries: {{attempts: 2, on: [503]}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: mirrored
variants:
  - {{name: champion, endpoints: ["{sims["a"].url}"]}}
shadow: [{{name: cand, endpoints: ["{sims["b"].url}"], sample: 1.0}}]
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: gone
variants:
  - {{name: only, endpoints: ["{dead}"]}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: llama
protocol: ollama
variants:
  - {{name: main, endpoints: ["{sims["ollama"].url}"]}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants:
  - {{name: champion, endpoints: ["{kserve.url}"], grpc_port: {grpc_port},
     model: fraud-detector, model_version: "1"}}
"""


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Any]]:
    started: dict[str, Any] = {}
    try:
        started["a"] = start_simulator("trace-a", "--tokens", "6")
        started["b"] = start_simulator("trace-b", "--tokens", "6")
        started["flaky"] = start_simulator("trace-flaky", "--fault", "status=503")
        started["ollama"] = start_simulator("trace-olla", "--tokens", "5", kind="ollama")
        started["kserve"] = start_kserve("trace-kserve", "--model-version", "1")
        yield started
    finally:
        for sim in started.values():
            sim.proc.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as found:
        yield found


def otel_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "gw-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=tok%20en",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


@pytest.fixture(scope="module")
def gw(
    sims: dict[str, Any], receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProc, Path]]:
    folder = tmp_path_factory.mktemp("tracing")
    (folder / "routes.yaml").write_text(policies(sims, f"http://127.0.0.1:{free_port()}"))
    log = folder / "logs" / "access.jsonl"
    proc = start_gateway(
        folder,
        "--grpc-port",
        "0",
        "--access-log",
        "--access-log-file",
        str(log),
        env=otel_env(receiver.url),
    )
    yield proc, log
    proc.proc.stop()
    assert "Traceback" not in proc.proc.output(), proc.proc.output()[-3000:]


def traceparent(flags: str = "01", trace: str = TRACE, span: str = CALLER) -> str:
    return f"00-{trace}-{span}-{flags}"


def new_trace() -> str:
    return f"{time.time_ns():032x}"[-32:]


def spans_of(receiver: Receiver, trace: str, count: int) -> list[ReceivedSpan]:
    receiver.wait_for(lambda spans: sum(s.trace_id == trace for s in spans) >= count)
    time.sleep(0.2)  # anything late (a shadow copy) would show now
    return receiver.trace(trace)


def server_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    (server,) = [s for s in spans if s.kind == SERVER]
    return server


def seen_upstream(sim: Simulator, request_id: str) -> dict[str, str]:
    traces: list[dict[str, str]] = sim.stats()["traces"]  # type: ignore[assignment]
    found = [t for t in traces if t["request_id"] == request_id]
    assert found, f"{sim.name} saw no traceparent for {request_id}: {traces[-5:]}"
    return found[-1]


def check_child(child: ReceivedSpan, server: ReceivedSpan, sim: Simulator, rid: str) -> None:
    assert child.kind == CLIENT and child.parent_id == server.span_id
    upstream = seen_upstream(sim, rid)
    assert upstream["traceparent"] == traceparent("01", server.trace_id, child.span_id)


# Requests of each front ---------------------------------------------------------------


def test_openai_chat_continues_the_callers_trace(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {
        "traceparent": traceparent(trace=trace),
        "tracestate": "vendor=opaque",
        "x-request-id": "trace-openai-1",
    }
    with openai.OpenAI(base_url=f"{proc.url}/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello"}],
            extra_headers=headers,
        )
    spans = spans_of(receiver, trace, 2)
    server = server_span(spans)
    assert server.parent_id == CALLER  # the caller's span is the parent
    assert server.raw.trace_state == "vendor=opaque"
    assert server.name == "chat chat"
    assert server.resource["service.name"] == "gw-under-test"
    assert server.resource["deployment.environment"] == "ci"
    attrs = server.attrs
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "chat"
    assert attrs["gen_ai.response.model"] == reply.model
    assert reply.usage is not None
    assert attrs["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert attrs["gen_ai.request.stream"] is False
    assert attrs["http.response.status_code"] == 200
    assert attrs["switchyard.route"] == "chat"
    assert attrs["switchyard.variant"] == "champion"
    assert attrs["switchyard.endpoint"] == sims["a"].url.removeprefix("http://")
    assert attrs["switchyard.version"] == ""
    assert (attrs["switchyard.attempts"], attrs["switchyard.fallback"]) == (1, False)
    assert attrs["switchyard.shadow_sampled"] is False
    assert attrs["switchyard.request_id"] == "trace-openai-1"
    (child,) = [s for s in spans if s.kind == CLIENT]
    check_child(child, server, sims["a"], "trace-openai-1")
    assert seen_upstream(sims["a"], "trace-openai-1")["tracestate"] == "vendor=opaque"
    assert child.attrs["http.response.status_code"] == 200
    assert receiver.headers[-1]["x-collector-token"] == "tok en"


def test_openai_stream_records_time_to_first_chunk_and_usage(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "trace-stream-1"}
    with openai.OpenAI(base_url=f"{proc.url}/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
                extra_headers=headers,
            )
        )
    assert chunks and all(c.usage is None for c in chunks)  # the client asked for none
    server = server_span(spans_of(receiver, trace, 2))
    attrs = server.attrs
    assert attrs["gen_ai.request.stream"] is True
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < 5
    assert attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert [name for name, _ in server.events] == ["gen_ai.first_chunk"]


def test_ollama_chat(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-olla"}
    with ollama.Client(host=proc.url, headers=headers) as client:
        reply = client.chat(
            model="llama", messages=[{"role": "user", "content": "hi"}], stream=False
        )
    spans = spans_of(receiver, trace, 2)
    server = server_span(spans)
    attrs = server.attrs
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "llama"
    assert attrs["gen_ai.response.model"] == reply.model
    assert attrs["gen_ai.usage.input_tokens"] == reply.prompt_eval_count
    assert attrs["gen_ai.usage.output_tokens"] == reply.eval_count
    (child,) = [s for s in spans if s.kind == CLIENT]
    check_child(child, server, sims["ollama"], "t-olla")


def _rows(module: Any) -> Any:
    tensor = module.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[0.5, -1, 2, 0.25]], np.float32))
    return tensor


def test_kserve_v2_over_http(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-kserve-http"}
    with triton_http.InferenceServerClient(proc.url.removeprefix("http://")) as client:
        client.infer("fraud", [_rows(triton_http)], headers=headers)
    spans = spans_of(receiver, trace, 2)
    server = server_span(spans)
    assert server.name == "infer fraud"
    attrs = server.attrs
    assert attrs["gen_ai.operation.name"] == "infer"
    assert attrs["gen_ai.request.model"] == "fraud"
    assert attrs["gen_ai.response.model"] == "fraud-detector"  # as the backend named it
    assert attrs["url.path"] == "/v2/models/fraud/infer"
    (child,) = [s for s in spans if s.kind == CLIENT]
    check_child(child, server, sims["kserve"], "t-kserve-http")
    # The backend's own name and version for the model, as the request went out.
    base = sims["kserve"].url
    assert child.attrs["url.full"] == f"{base}/v2/models/fraud-detector/versions/1/infer"


def test_kserve_v2_over_grpc(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-kserve-grpc"}
    with triton_grpc.InferenceServerClient(proc.grpc) as client:
        client.infer("fraud", [_rows(triton_grpc)], headers=headers)
    spans = spans_of(receiver, trace, 2)
    server = server_span(spans)
    assert server.parent_id == CALLER
    attrs = server.attrs
    assert attrs["gen_ai.operation.name"] == "infer"
    assert attrs["gen_ai.request.model"] == "fraud"
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.method"] == "ModelInfer"
    assert attrs["switchyard.variant"] == "champion"
    assert attrs["switchyard.attempts"] == 1
    (child,) = [s for s in spans if s.kind == CLIENT]
    check_child(child, server, sims["kserve"], "t-kserve-grpc")


def test_kserve_v2_grpc_stream(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-kserve-stream"}
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(proc.grpc)
    client.start_stream(lambda result, error: replies.put((result, error)), headers=headers)
    try:
        for i in range(2):
            client.async_stream_infer("fraud", [_rows(triton_grpc)], request_id=f"st{i}")
        got = [replies.get(timeout=30) for _ in range(2)]
        assert all(error is None for _, error in got), got
    finally:
        client.stop_stream()
        client.close()
    # One span for the stream, one child for the backend stream it rode on.
    spans = spans_of(receiver, trace, 2)
    server = server_span(spans)
    assert server.parent_id == CALLER
    attrs = server.attrs
    assert attrs["rpc.method"] == "ModelStreamInfer"
    assert attrs["gen_ai.operation.name"] == "infer"
    assert attrs["gen_ai.request.model"] == "fraud"
    assert attrs["switchyard.variant"] == "champion"
    assert attrs["switchyard.attempts"] == 1
    (child,) = [s for s in spans if s.kind == CLIENT]
    assert child.attrs["rpc.method"] == "ModelStreamInfer"
    assert child.attrs["rpc.grpc.status_code"] == 0
    check_child(child, server, sims["kserve"], "t-kserve-stream")


# Retries, fallbacks, shadows, errors --------------------------------------------------


def test_a_retried_request_shows_both_attempts(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-retry"}
    body = {"model": "flaky", "messages": [{"role": "user", "content": "x"}]}
    reply = httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers)
    assert reply.status_code == 200 and reply.headers["x-switchyard-variant"] == "backup"
    spans = spans_of(receiver, trace, 3)
    server = server_span(spans)
    assert server.attrs["switchyard.attempts"] == 2
    assert server.attrs["switchyard.fallback"] is True
    assert server.attrs["switchyard.variant"] == "backup"
    assert server.status_code != ERROR  # the client got a 200
    first, second = sorted(
        (s for s in spans if s.kind == CLIENT), key=lambda s: s.attrs["switchyard.attempt"]
    )
    assert first.attrs["switchyard.variant"] == "primary"
    assert first.attrs["http.response.status_code"] == 503
    assert first.status_code == ERROR and first.attrs["error.type"] == "503"
    assert second.attrs["switchyard.variant"] == "backup" and second.status_code != ERROR
    assert first.raw.end_time_unix_nano <= second.raw.start_time_unix_nano
    check_child(first, server, sims["flaky"], "t-retry")
    check_child(second, server, sims["a"], "t-retry")


def test_a_shadowed_request_shows_the_copy(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-shadow"}
    body = {"model": "mirrored", "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers).is_success
    spans = spans_of(receiver, trace, 3)
    server = server_span(spans)
    assert server.attrs["switchyard.shadow_sampled"] is True
    (copy,) = [s for s in spans if "switchyard.shadow" in s.attrs]
    assert copy.name == "POST shadow cand"
    assert copy.attrs["switchyard.shadow.outcome"] == "ok"
    check_child(copy, server, sims["b"], "t-shadow")
    (attempt,) = [s for s in spans if s.kind == CLIENT and s is not copy]
    check_child(attempt, server, sims["a"], "t-shadow")


def test_a_gateway_error_is_recorded_on_the_span(
    gw: tuple[GatewayProc, Path], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    body = {"model": "gone", "messages": [{"role": "user", "content": "x"}]}
    reply = httpx.post(
        f"{proc.url}/v1/chat/completions",
        json=body,
        headers={"traceparent": traceparent(trace=trace)},
    )
    assert reply.status_code == 503  # connection refused: no backend to answer
    spans = spans_of(receiver, trace, 2)
    server = server_span(spans)
    assert server.status_code == ERROR
    assert server.attrs["error.type"] == reply.json()["error"]["code"]
    assert server.attrs["http.response.status_code"] == 503
    ((name, event),) = server.events
    assert name == "exception" and event["exception.type"] == "UpstreamConnectError"
    (attempt,) = [s for s in spans if s.kind == CLIENT]
    assert attempt.status_code == ERROR


# Sampling and propagation -------------------------------------------------------------


def test_an_unsampled_callers_traceparent_passes_unchanged(
    gw: tuple[GatewayProc, Path], sims: dict[str, Any], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    incoming = traceparent("00", trace=trace)
    headers = {"traceparent": incoming, "x-request-id": "t-unsampled"}
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers).is_success
    assert seen_upstream(sims["a"], "t-unsampled")["traceparent"] == incoming
    # A sampled request after it: once its spans are in, the unsampled one is surely not.
    later = new_trace()
    headers = {"traceparent": traceparent(trace=later), "x-request-id": "t-sampled-after"}
    assert httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers).is_success
    spans_of(receiver, later, 2)
    assert receiver.trace(trace) == []


def test_ratio_sampling_and_no_traceparent_when_not_sampled(
    sims: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    (tmp_path / "routes.yaml").write_text(policies(sims, "http://127.0.0.1:9"))
    proc = start_gateway(
        tmp_path,
        "--trace-sampler",
        "parentbased_traceidratio",
        "--trace-sampler-arg",
        "0",
        env=otel_env(receiver.url, OTEL_TRACES_SAMPLER="always_on"),  # the flag wins
    )
    try:
        body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
        for i in range(5):
            headers = {"x-request-id": f"t-ratio-{i}"}
            assert httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers)
        traces: list[dict[str, str]] = sims["a"].stats()["traces"]  # type: ignore[assignment]
        assert not [t for t in traces if t["request_id"].startswith("t-ratio-")]
        # A caller that sampled its trace is followed even at ratio 0 (parent based).
        trace = new_trace()
        headers = {"traceparent": traceparent(trace=trace), "x-request-id": "t-ratio-parent"}
        assert httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers)
        server = server_span(spans_of(receiver, trace, 2))
        assert server.parent_id == CALLER
        assert proc.metric("switchyard_trace_sampled_requests_total") == 1
    finally:
        proc.proc.stop()


# Access log, exemplars, metrics -------------------------------------------------------


def test_access_log_lines_carry_the_trace_and_no_secrets(
    gw: tuple[GatewayProc, Path], receiver: Receiver
) -> None:
    proc, log = gw
    trace = new_trace()
    headers = {
        "traceparent": traceparent(trace=trace),
        "x-request-id": "t-access",
        "authorization": "Bearer sk-very-secret-key",
    }
    body = {"model": "chat", "messages": [{"role": "user", "content": "the secret prompt"}]}
    url = f"{proc.url}/v1/chat/completions?api_key=sk-query-secret"
    assert httpx.post(url, json=body, headers=headers).is_success
    server = server_span(spans_of(receiver, trace, 2))
    deadline = time.monotonic() + 10
    line: dict[str, Any] = {}
    while time.monotonic() < deadline and not line:
        if log.exists():
            for raw in log.read_text().splitlines():
                entry = json.loads(raw)
                if entry["request_id"] == "t-access":
                    line = entry
        time.sleep(0.05)
    assert line, "no access log line for the request"
    assert (line["trace_id"], line["span_id"]) == (trace, server.span_id)
    assert line["path"] == "/v1/chat/completions"
    assert (line["route"], line["variant"], line["status"]) == ("chat", "champion", 200)
    assert line["operation"] == "chat" and line["output_tokens"] == 6
    assert line["duration_ms"] > 0
    text = log.read_text()
    for secret in ("sk-very-secret-key", "sk-query-secret", "the secret prompt"):
        assert secret not in text


def test_openmetrics_scrapes_link_latency_to_traces(
    gw: tuple[GatewayProc, Path], receiver: Receiver
) -> None:
    proc, _ = gw
    trace = new_trace()
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    headers = {"traceparent": traceparent(trace=trace)}
    assert httpx.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers)
    spans_of(receiver, trace, 2)
    text = httpx.get(
        f"{proc.admin}/metrics", headers={"accept": "application/openmetrics-text"}
    ).text
    assert f'# {{trace_id="{trace}"}}' in text
    assert text.rstrip().endswith("# EOF")
    assert trace not in httpx.get(f"{proc.admin}/metrics").text  # classic text: none
    assert proc.metric("switchyard_trace_spans_exported_total") > 0


# The collector in trouble -------------------------------------------------------------


def _chat_many(proc: GatewayProc, n: int) -> list[float]:
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    took = []
    with httpx.Client() as client:
        for _ in range(n):
            started = time.perf_counter()
            assert client.post(f"{proc.url}/v1/chat/completions", json=body).is_success
            took.append(time.perf_counter() - started)
    return sorted(took)


def test_a_collector_that_is_down_or_slow_costs_spans_not_requests(
    sims: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "routes.yaml").write_text(policies(sims, "http://127.0.0.1:9"))
    down = f"http://127.0.0.1:{free_port()}"
    proc = start_gateway(tmp_path, env=otel_env(down, OTEL_BSP_MAX_QUEUE_SIZE="64"))
    try:
        took = _chat_many(proc, 120)
        assert took[len(took) // 2] < 0.25, "requests slowed down by a dead collector"
        # Unreachable is transient (OTLP): the batch is kept and tried again with backoff,
        # so the first sign is a retried export (its loss after five tries is a unit test).
        deadline = time.monotonic() + 15
        while proc.metric("switchyard_trace_export_requests_total", outcome="retried") == 0:
            assert time.monotonic() < deadline, "no failed export counted"
            time.sleep(0.1)
        assert proc.metric("switchyard_trace_spans_dropped_total", reason="queue_full") > 0
        assert proc.metric("switchyard_trace_queue_spans") <= 64
        assert proc.metric("switchyard_trace_spans_exported_total") == 0
    finally:
        proc.proc.stop()

    with otlp_receiver() as slow:
        slow.delay = 3.0
        env = otel_env(slow.url, OTEL_BSP_MAX_QUEUE_SIZE="64", OTEL_EXPORTER_OTLP_TIMEOUT="300")
        proc = start_gateway(tmp_path, env=env)
        try:
            took = _chat_many(proc, 120)
            assert took[len(took) // 2] < 0.25, "requests slowed down by a slow collector"
            deadline = time.monotonic() + 15
            while proc.metric("switchyard_trace_export_requests_total", outcome="retried") == 0:
                assert time.monotonic() < deadline, "no timed-out export counted"
                time.sleep(0.1)
            # A failed export (no answer within the timeout) whose batch was kept.
            assert proc.metric("switchyard_trace_export_requests_total", outcome="failed") >= 1
            assert proc.metric("switchyard_trace_spans_exported_total") == 0
            assert proc.metric("switchyard_trace_queue_spans") <= 64
            assert proc.metric("switchyard_trace_spans_dropped_total", reason="queue_full") > 0
        finally:
            proc.proc.stop()
