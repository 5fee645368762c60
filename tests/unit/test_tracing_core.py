"""W3C trace context, the samplers and the OTLP encoding (decoded with the official
opentelemetry-proto messages)."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.observability.trace_metrics import TraceCounters
from gateway.observability.tracing.config import TraceConfigError, trace_config
from gateway.observability.tracing.context import (
    IdSource,
    format_traceparent,
    parse_traceparent,
    without_traceparent,
)
from gateway.observability.tracing.otlp import Encoder, varint
from gateway.observability.tracing.record import RequestRecord
from gateway.observability.tracing.sampler import Sampler
from gateway.observability.tracing.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, Span
from gateway.observability.tracing.tracer import Tracer, operation_for
from tests.otlp_receiver import value_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01".encode()


class ListSink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: object) -> None:
        self.spans.extend(spans)  # type: ignore[call-overload]


# W3C traceparent -----------------------------------------------------------------------


def test_a_valid_traceparent_parses_to_ids_and_flags() -> None:
    assert parse_traceparent(VALID) == (int(TRACE, 16), int(PARENT, 16), 1)
    assert parse_traceparent(b" " + VALID[:-2] + b"00 ") == (int(TRACE, 16), int(PARENT, 16), 0)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        VALID[:-1],  # too short
        VALID + b"-x",  # version 00 is exactly 55 characters
        VALID.upper(),  # upper-case hex is invalid
        b"ff" + VALID[2:],  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"00-{TRACE}-{PARENT}-0g".encode(),
        f"00_{TRACE}-{PARENT}-01".encode(),
        f"00-{TRACE[:-1]}z-{PARENT}-01".encode(),
    ],
)
def test_invalid_traceparents_are_ignored(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_may_carry_more_fields() -> None:
    later = b"cc" + VALID[2:] + b"-what-the-future-holds"
    assert parse_traceparent(later) == (int(TRACE, 16), int(PARENT, 16), 1)
    assert parse_traceparent(b"cc" + VALID[2:] + b"x") is None


def test_format_round_trips() -> None:
    ids = IdSource(seed=3)
    for _ in range(100):
        trace, span = ids.trace_id(ids.bits64()), ids.span_id()
        for sampled in (True, False):
            parsed = parse_traceparent(format_traceparent(trace, span, sampled))
            assert parsed == (trace, span, 1 if sampled else 0)


# Samplers -----------------------------------------------------------------------------


def test_ratio_sampling_follows_the_trace_ids_lower_64_bits() -> None:
    sampler = Sampler("traceidratio", 0.25)
    bound = 1 << 62
    assert sampler.root(bound - 1)
    assert not sampler.root(bound)
    # A caller's trace under a non-parent-based ratio sampler: the same rule.
    assert sampler.child((0xABC << 64) | (bound - 1), flags=0)
    assert not sampler.child((0xABC << 64) | bound, flags=1)


def test_parent_based_follows_the_callers_flag() -> None:
    for name in ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"):
        sampler = Sampler(name, 0.0)
        assert sampler.child(1, flags=1)
        assert not sampler.child(1, flags=0)
    assert Sampler("parentbased_always_off").bound == 0
    assert Sampler("always_on").root((1 << 64) - 1)


def test_unknown_samplers_and_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown trace sampler"):
        Sampler("sometimes")
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        Sampler("traceidratio", 1.5)


def _fields(traceparent: bytes | None = None) -> dict[bytes, bytes]:
    fields = {b"host": b"gw"}
    if traceparent is not None:
        fields[b"traceparent"] = traceparent
        fields[b"tracestate"] = b"vendor=abc"
    return fields


def test_the_tracer_samples_new_traces_at_the_ratio() -> None:
    counters = TraceCounters()
    tracer = Tracer(Sampler("parentbased_traceidratio", 0.1), ListSink(), counters, IdSource(7))
    sampled = sum(tracer.start(_fields(), 0.0) is not None for _ in range(20_000))
    assert 1700 < sampled < 2300
    assert counters.sampled == sampled


def test_the_tracer_continues_a_callers_trace_and_follows_its_flag() -> None:
    tracer = Tracer(Sampler("parentbased_traceidratio", 0.0), ListSink(), TraceCounters())
    trace = tracer.start(_fields(VALID), 0.0)
    assert trace is not None
    assert (trace.trace_id, trace.parent_id) == (int(TRACE, 16), int(PARENT, 16))
    assert trace.trace_state == "vendor=abc"
    assert tracer.start(_fields(VALID[:-2] + b"00"), 0.0) is None
    # Invalid: as if absent, and the root ratio (0) says no.
    assert tracer.start(_fields(b"00-garbage"), 0.0) is None
    always = Tracer(Sampler("always_on"), ListSink(), TraceCounters())
    fresh = always.start(_fields(b"00-garbage"), 0.0)
    assert fresh is not None and fresh.parent_id == 0 and fresh.trace_id != int(TRACE, 16)


def test_tracing_off_by_sampler_samples_nothing() -> None:
    tracer = Tracer(Sampler("always_off"), ListSink(), TraceCounters())
    assert all(tracer.start(_fields(), 0.0) is None for _ in range(1000))
    assert tracer.start(_fields(VALID), 0.0) is None


def test_operations_follow_the_genai_conventions() -> None:
    assert operation_for(b"/v1/chat/completions") == "chat"
    assert operation_for(b"/api/generate") == "text_completion"
    assert operation_for(b"/v1/embeddings") == "embeddings"
    assert operation_for(b"/v2/models/fraud/infer") == "infer"
    assert operation_for(b"/v2/models/fraud/ready") == ""
    assert operation_for(b"/services/x/predict") == ""


# OTLP encoding ------------------------------------------------------------------------


def _decode(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def test_varint_matches_protobuf() -> None:
    assert varint(0) == b"\x00"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


def test_spans_decode_with_the_official_messages() -> None:
    sink = ListSink()
    tracer = Tracer(Sampler("always_on"), sink, TraceCounters(), IdSource(1))
    trace = tracer.start(_fields(VALID), 0.0)
    assert trace is not None
    header = trace.attempt("POST", "champion", "3", "127.0.0.1:9", "127.0.0.1", 9)
    trace.attempt_failed("upstream_timeout", "no answer")
    trace.attempt_ended(0)
    header2 = trace.attempt("POST", "challenger", "4", "127.0.0.1:10", "127.0.0.1", 10)
    trace.attempt_sent("http://127.0.0.1:10/v1/x")
    trace.saw_body(b'{"id":"x","model":"llama-3-8b","choices":[]}')
    trace.attempt_ended(200)
    record = RequestRecord(
        method="POST",
        path="/v1/chat/completions",
        request_id="r-1",
        route="chat",
        operation="chat",
        variant="challenger",
        version="4",
        endpoint="127.0.0.1:10",
        status=200,
        attempts=2,
        fallback=True,
        stream=True,
        response_model=trace.response_model or "",
        input_tokens=12,
        output_tokens=-1,
        ttft=0.25,
        duration=0.5,
    )
    trace.finish(record)
    assert len(sink.spans) == 3
    resource = (("service.name", "gw-test"), ("deployment.environment", "ci"))
    body = Encoder(resource, "switchyard", "0.1.0").encode(sink.spans)
    decoded = _decode(body)
    rs = decoded.resource_spans[0]
    assert {kv.key: value_of(kv.value) for kv in rs.resource.attributes} == dict(resource)
    scope = rs.scope_spans[0]
    assert (scope.scope.name, scope.scope.version) == ("switchyard", "0.1.0")
    server, first, second = scope.spans
    assert server.kind == KIND_SERVER and first.kind == second.kind == KIND_CLIENT
    assert server.trace_id.hex() == TRACE and server.parent_span_id.hex() == PARENT
    assert server.trace_state == "vendor=abc"
    assert server.flags == 0x301  # sampled, parent known to be remote
    assert first.parent_span_id == second.parent_span_id == server.span_id
    assert first.trace_id == server.trace_id
    assert header == f"traceparent: 00-{TRACE}-{first.span_id.hex()}-01\r\n".encode()
    assert header2.endswith(f"-{second.span_id.hex()}-01\r\n".encode())
    attrs = {kv.key: value_of(kv.value) for kv in server.attributes}
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "chat"
    assert attrs["gen_ai.response.model"] == "llama-3-8b"
    assert attrs["gen_ai.usage.input_tokens"] == 12
    assert "gen_ai.usage.output_tokens" not in attrs  # not reported: not invented
    assert attrs["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.25)
    assert attrs["switchyard.attempts"] == 2
    assert attrs["switchyard.fallback"] is True
    assert attrs["switchyard.shadow_sampled"] is False
    assert server.name == "chat chat"
    assert [e.name for e in server.events] == ["gen_ai.first_chunk"]
    assert server.start_time_unix_nano <= server.end_time_unix_nano
    failed = {kv.key: value_of(kv.value) for kv in first.attributes}
    assert first.status.code == STATUS_ERROR and failed["error.type"] == "upstream_timeout"
    ok = {kv.key: value_of(kv.value) for kv in second.attributes}
    assert ok["http.response.status_code"] == 200 and second.status.code == 0
    assert ok["switchyard.attempt"] == 2 and ok["server.port"] == 10
    assert ok["url.full"] == "http://127.0.0.1:10/v1/x" and "url.full" not in failed


def test_errors_carry_status_error_type_and_the_exception() -> None:
    sink = ListSink()
    tracer = Tracer(Sampler("always_on"), sink, TraceCounters())
    trace = tracer.start(None, 0.0)
    assert trace is not None
    record = RequestRecord(
        "POST", "/api/chat", "r", "chat", "chat", status=503, error_type="no_healthy_upstream"
    )
    trace.finish(record, RuntimeError("every endpoint is ejected"))
    (server,) = (
        _decode(Encoder((), "s", "v").encode(sink.spans)).resource_spans[0].scope_spans[0].spans
    )
    assert server.status.code == STATUS_ERROR
    assert server.parent_span_id == b""
    attrs = {kv.key: value_of(kv.value) for kv in server.attributes}
    assert attrs["error.type"] == "no_healthy_upstream"
    (event,) = server.events
    assert event.name == "exception"
    assert {kv.key: value_of(kv.value) for kv in event.attributes} == {
        "exception.type": "RuntimeError",
        "exception.message": "every endpoint is ejected",
    }


def test_every_value_type_and_odd_text_round_trips() -> None:
    span = Span(random.getrandbits(128) | 1, 5, 0, "naïve ✓", KIND_SERVER, 1, flags=1)
    span.attributes = [("s", "ünï"), ("b", False), ("i", -42), ("f", 1.5), ("big", 1 << 62)]
    decoded = _decode(Encoder((), "s", "v").encode([span] * 3))
    spans = decoded.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 3
    assert spans[0].name == "naïve ✓"
    assert {kv.key: value_of(kv.value) for kv in spans[2].attributes} == {
        "s": "ünï",
        "b": False,
        "i": -42,
        "f": 1.5,
        "big": 1 << 62,
    }


# Configuration ------------------------------------------------------------------------


def test_config_reads_the_standard_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_SERVICE_NAME": "edge-gw",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cret,x-tenant=a",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    config = trace_config(env, service_version="0.1.0", instance_id="pod-1")
    assert config is not None
    assert config.endpoint == "http://collector:4318/v1/traces"
    assert (config.sampler, config.ratio) == ("parentbased_traceidratio", 0.01)
    assert config.headers == (("authorization", "Bearer s3cret"), ("x-tenant", "a"))
    assert dict(config.resource) == {
        "deployment.environment": "prod",
        "service.name": "edge-gw",
        "service.version": "0.1.0",
        "service.instance.id": "pod-1",
    }
    assert (config.timeout, config.delay) == (2.5, 0.2)
    assert "s3cret" not in config.describe()
    # The traces-specific endpoint is used as it is; flags win over the environment.
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "https://x/custom"
    flagged = trace_config(env, sampler="always_on", service_name="flag-name")
    assert flagged is not None and flagged.endpoint == "https://x/custom"
    assert flagged.sampler == "always_on" and dict(flagged.resource)["service.name"] == "flag-name"
    assert trace_config(env, endpoint="http://flag:4318/v1/traces") is not None


def test_config_is_off_without_an_endpoint_or_when_disabled() -> None:
    assert trace_config({}) is None
    assert trace_config({"OTEL_SERVICE_NAME": "x"}) is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert trace_config({**on, "OTEL_SDK_DISABLED": "true"}) is None
    assert trace_config({**on, "OTEL_TRACES_EXPORTER": "none"}) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf only"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "unknown trace sampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "0..1"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "number"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign-s3cret"}, "key=value"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "only otlp"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "br"}, "gzip or none"),
    ],
)
def test_bad_config_is_refused_with_a_reason(extra: dict[str, str], message: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **extra}
    with pytest.raises(TraceConfigError, match=message) as caught:
        trace_config(env)
    assert "s3cret" not in str(caught.value)


def test_the_callers_traceparent_line_is_removed_only_as_a_whole_field() -> None:
    lines = b"accept: */*\r\nx-traceparent: keep\r\ntraceparent: " + VALID + b"\r\nx-a: b\r\n"
    assert without_traceparent(lines) == b"accept: */*\r\nx-traceparent: keep\r\nx-a: b\r\n"
    first = b"traceparent: " + VALID + b"\r\nx-a: b\r\n"
    assert without_traceparent(first) == b"x-a: b\r\n"
    assert without_traceparent(b"x-a: b\r\n") == b"x-a: b\r\n"
    assert without_traceparent(b"x-traceparent: 1\r\n") == b"x-traceparent: 1\r\n"


def test_grpc_attempts_and_calls_follow_the_rpc_conventions() -> None:
    sink = ListSink()
    tracer = Tracer(Sampler("always_on"), sink, TraceCounters())
    trace = tracer.start(None, 0.0)
    assert trace is not None
    value = trace.rpc_attempt(
        "inference.GRPCInferenceService", "ModelInfer", "champion", "1", "h:1", "10.0.0.2:8001"
    )
    trace.rpc_attempt_ended(14, "UNAVAILABLE", "connection refused")
    trace.rpc_attempt(
        "inference.GRPCInferenceService", "ModelInfer", "backup", "1", "h:2", "10.0.0.3:8001"
    )
    trace.rpc_attempt_ended(0, "OK")
    record = RequestRecord(
        "POST",
        "/inference.GRPCInferenceService/ModelInfer",
        "r",
        "fraud",
        "infer",
        status=200,
        rpc_service="inference.GRPCInferenceService",
        rpc_method="ModelInfer",
    )
    trace.finish(record)
    server, failed, ok = sink.spans
    assert parse_traceparent(value.encode()) == (trace.trace_id, failed.span_id, 1)
    attrs = dict(server.all_attributes())
    assert (attrs["rpc.system"], attrs["rpc.method"]) == ("grpc", "ModelInfer")
    assert "http.request.method" not in attrs and server.name == "infer fraud"
    assert failed.status == STATUS_ERROR and dict(failed.attributes)["error.type"] == "UNAVAILABLE"
    assert dict(failed.attributes)["server.port"] == 8001
    assert ok.status == 0 and dict(ok.attributes)["rpc.grpc.status_code"] == 0


def test_cached_attributes_keep_their_types_and_values_apart() -> None:
    encoder = Encoder((), "s", "v")
    spans = []
    for value in (True, 1, "1", 1.0, False, 0, 2):
        span = Span(7, 8, 0, "n", KIND_SERVER, 1)
        span.attributes = [("x", value), ("switchyard.request_id", f"r{value!r}")]
        spans.append(span)
    for _ in range(2):  # the second round is served from the caches
        decoded = _decode(encoder.encode(spans)).resource_spans[0].scope_spans[0].spans
        got = [value_of(s.attributes[0].value) for s in decoded]
        assert got == [True, 1, "1", 1.0, False, 0, 2]
        assert [type(v) for v in got] == [bool, int, str, float, bool, int, int]
        assert value_of(decoded[1].attributes[1].value) == "r1"
