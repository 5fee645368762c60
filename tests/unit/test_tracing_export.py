"""The span exporter against a real OTLP/HTTP receiver on loopback (healthy, slow,
refusing, absent), and the access log's lines and rotation."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from pathlib import Path

import orjson
import pytest

from gateway.observability.trace_metrics import TraceCounters
from gateway.observability.tracing.accesslog import AccessLog
from gateway.observability.tracing.config import TraceConfig, TraceConfigError
from gateway.observability.tracing.exporter import SpanExporter
from gateway.observability.tracing.record import RequestRecord
from gateway.observability.tracing.setup import Tracing
from gateway.observability.tracing.span import KIND_SERVER, Span
from gateway.settings import Settings
from tests.otlp_receiver import otlp_receiver


def _spans(n: int, start: int = 0) -> list[Span]:
    out = []
    for i in range(start, start + n):
        span = Span(i + 1, i + 1, 0, f"span-{i}", KIND_SERVER, time.time_ns())
        span.set("switchyard.route", "chat")
        span.set("i", i)
        out.append(span)
    return out


def _config(endpoint: str, **kw: object) -> TraceConfig:
    base: dict[str, object] = {
        "endpoint": endpoint,
        "delay": 0.05,
        "timeout": 2.0,
        "resource": (("service.name", "t"),),
    }
    return TraceConfig(**{**base, **kw})  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_spans_reach_the_collector_in_batches_with_headers_and_gzip() -> None:
    with otlp_receiver() as receiver:
        counters = TraceCounters()
        config = _config(
            receiver.endpoint,
            batch_size=100,
            headers=(("authorization", "Bearer t0ken"),),
            compression="gzip",
        )
        exporter = SpanExporter(config, counters, scope_version="9.9")
        exporter.start()
        for i in range(25):
            exporter.submit(_spans(10, i * 10))
        await _until(lambda: counters.exported == 250)
        await exporter.aclose()
        assert len(receiver.spans) == 250
        assert {s.name for s in receiver.spans} == {f"span-{i}" for i in range(250)}
        assert receiver.spans[0].resource == {"service.name": "t"}
        assert receiver.spans[0].scope == "switchyard"
        assert receiver.requests >= 3  # batches of at most 100
        assert receiver.headers[0]["authorization"] == "Bearer t0ken"
        assert receiver.headers[0]["content-encoding"] == "gzip"
        assert counters.dropped == dict.fromkeys(counters.dropped, 0)
        assert counters.exports["ok"] == receiver.requests


async def test_a_partial_batch_goes_out_after_the_delay_and_at_shutdown() -> None:
    with otlp_receiver() as receiver:
        counters = TraceCounters()
        exporter = SpanExporter(_config(receiver.endpoint, delay=0.1), counters)
        exporter.start()
        exporter.submit(_spans(3))
        await _until(lambda: counters.exported == 3)
        slow = SpanExporter(_config(receiver.endpoint, delay=60.0), counters)
        slow.start()
        slow.submit(_spans(2, 100))
        await asyncio.sleep(0.1)
        assert counters.exported == 3  # waiting for its timer
        await slow.aclose()  # ... but stopping delivers it
        assert counters.exported == 5
        await exporter.aclose()


async def test_a_collector_that_is_down_costs_spans_not_requests() -> None:
    counters = TraceCounters()
    url = f"http://127.0.0.1:{_free_port()}/v1/traces"
    exporter = SpanExporter(
        _config(url, max_queue=200, batch_size=50), counters, backoff=(0.02, 0.05)
    )
    exporter.start()
    started = time.perf_counter()
    for i in range(100):
        exporter.submit(_spans(5, i * 5))  # 500 spans offered, never blocking
    assert time.perf_counter() - started < 0.05
    assert exporter.queued() <= 200
    await _until(lambda: counters.dropped["export_failed"] > 0)
    assert counters.dropped["queue_full"] == 300
    await exporter.aclose()
    assert exporter.queued() == 0
    lost = counters.dropped["export_failed"] + counters.dropped["shutdown"]
    assert lost + counters.dropped["queue_full"] == 500
    assert counters.exported == 0 and counters.exports["failed"] >= 1
    # Unreachable is transient: every batch was tried again before it was dropped.
    assert counters.exports["retried"] >= 4


async def test_a_slow_collector_times_out_and_the_queue_stays_bounded() -> None:
    with otlp_receiver() as receiver:
        receiver.delay = 1.0
        counters = TraceCounters()
        config = _config(receiver.endpoint, timeout=0.3, max_queue=100, batch_size=20)
        exporter = SpanExporter(config, counters, max_attempts=1)
        exporter.start()
        for round_ in range(20):
            exporter.submit(_spans(10, round_ * 10))
            assert exporter.queued() <= 100
            await asyncio.sleep(0.02)
        await _until(lambda: counters.dropped["timeout"] >= 20)
        assert counters.dropped["queue_full"] > 0
        await exporter.aclose()
        assert exporter.queued() == 0
        assert sum(counters.dropped.values()) + counters.exported == 200


async def test_a_refusing_collector_is_counted_as_export_failed() -> None:
    with otlp_receiver() as receiver:
        receiver.status = 400  # not transient: tried once, dropped at once
        counters = TraceCounters()
        exporter = SpanExporter(_config(receiver.endpoint), counters, backoff=(0.05, 0.1))
        exporter.start()
        exporter.submit(_spans(4))
        await _until(lambda: counters.dropped["export_failed"] == 4)
        assert receiver.requests == 1 and counters.exports["retried"] == 0
        receiver.status = 200  # the collector heals: spans flow again
        await asyncio.sleep(0.1)
        exporter.submit(_spans(2, 10))
        await _until(lambda: counters.exported == 2)
        await exporter.aclose()


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_a_transient_refusal_is_retried_after_retry_after(status: int) -> None:
    with otlp_receiver() as receiver:
        receiver.script = [status, status]
        receiver.retry_after = "0.2"
        counters = TraceCounters()
        # A backoff far longer than Retry-After: the collector's word is what counts.
        exporter = SpanExporter(_config(receiver.endpoint), counters, backoff=(5.0, 10.0))
        exporter.start()
        started = time.monotonic()
        exporter.submit(_spans(4))
        await _until(lambda: counters.exported == 4)
        assert time.monotonic() - started < 3.0
        assert receiver.requests == 3
        assert counters.exports == {"ok": 1, "retried": 2, "failed": 2}
        assert counters.dropped == dict.fromkeys(counters.dropped, 0)
        assert len(receiver.spans) == 4  # delivered once, none lost
        await exporter.aclose()


async def test_a_batch_is_dropped_after_its_tries_and_the_next_one_goes_out() -> None:
    with otlp_receiver() as receiver:
        receiver.script = [503] * 3
        counters = TraceCounters()
        exporter = SpanExporter(
            _config(receiver.endpoint, batch_size=4), counters, backoff=(0.02, 0.05), max_attempts=3
        )
        exporter.start()
        exporter.submit(_spans(4))
        await _until(lambda: counters.dropped["export_failed"] == 4)
        assert counters.exports["retried"] == 2  # tries 1 and 2 kept it; try 3 dropped it
        exporter.submit(_spans(2, 10))
        await _until(lambda: counters.exported == 2)
        assert {s.name for s in receiver.spans} == {"span-10", "span-11"}
        await exporter.aclose()


# Access log ---------------------------------------------------------------------------


def _record(i: int) -> RequestRecord:
    return RequestRecord(
        method="POST",
        path="/v1/chat/completions",
        request_id=f"req-{i}",
        route="chat",
        operation="chat",
        variant="champion",
        version="3",
        endpoint="127.0.0.1:9000",
        status=200,
        attempts=1,
        input_tokens=9,
        output_tokens=4,
        ttft=0.0123,
        duration=0.25,
    )


async def test_the_access_log_writes_json_lines_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.jsonl"
    counters = {"written": 0, "dropped": 0}
    access = AccessLog(str(path), 2000, 2, counters, asyncio.get_running_loop())
    line = _record(0).access_line("ab" * 16, "cd" * 8, 1_700_000_000.5)
    assert line["ts"] == "2023-11-14T22:13:20.500Z"
    assert (line["trace_id"], line["ttft_ms"], line["input_tokens"]) == ("ab" * 16, 12.3, 9)
    for batch in range(6):
        for i in range(10):
            access.offer(_record(batch * 10 + i).access_line("", "", time.time()))
        access.flush()
        await _until(lambda n=batch: counters["written"] == (n + 1) * 10)
    await access.aclose()
    files = sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock"))
    assert files == ["access.jsonl", "access.jsonl.1", "access.jsonl.2"]  # N=2 backups
    for name in files:
        assert (path.parent / name).stat().st_size <= 2000
    newest = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert newest[-1]["request_id"] == "req-59"
    assert newest[-1]["route"] == "chat" and newest[-1]["status"] == 200
    assert counters["dropped"] == 0


async def test_a_full_access_log_buffer_drops_and_counts() -> None:
    counters = {"written": 0, "dropped": 0}
    access = AccessLog(None, 0, 0, counters, asyncio.get_running_loop(), capacity=5)
    for i in range(8):
        access.offer({"i": i})
    assert counters["dropped"] == 3
    access._lines.clear()  # nothing for stderr in a test run
    await access.aclose()


def test_gzip_helper_is_deterministic() -> None:
    # The exporter compresses with mtime=0: equal batches give equal bodies.
    assert gzip.compress(b"x", 6, mtime=0) == gzip.compress(b"x", 6, mtime=0)


@pytest.mark.parametrize("field", ["query", "authorization", "body", "messages"])
def test_access_lines_hold_no_request_secrets(field: str) -> None:
    line = _record(1).access_line("", "", 0.0)
    assert field not in line
    assert "?" not in str(line["path"])


async def test_the_process_builds_only_what_is_configured(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    off = Tracing.build(Settings(), TraceCounters(), loop, env={})
    assert (off.tracer, off.exporter, off.access_log) == (None, None, None)
    assert off.describe() == "tracing off; access log off"
    settings = Settings(
        trace_sampler="traceidratio",
        trace_sampler_arg="0.5",
        access_log_file=str(tmp_path / "a.jsonl"),
    )
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "SWITCHYARD_WORKER_INDEX": "2"}
    on = Tracing.build(settings, TraceCounters(), loop, version="1.2", env=env)
    assert on.tracer is not None and on.exporter is not None and on.access_log is not None
    assert on.tracer.sampler.describe() == "traceidratio (0.5)"
    assert on.config is not None
    assert dict(on.config.resource)["service.instance.id"].endswith("-2")
    assert "http://c:4318/v1/traces" in on.describe() and "a.jsonl" in on.describe()
    with pytest.raises(TraceConfigError):
        Tracing.build(
            Settings(trace_sampler_arg="x", trace_sampler="traceidratio"),
            TraceCounters(),
            loop,
            env=env,
        )
    await on.aclose()
