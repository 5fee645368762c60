"""The relay of the real data plane objects, with in-memory transports at the network edge.

These pin down byte-level behaviour that is awkward to provoke with real backends:
header filtering, chunk re-framing, read-until-close bodies, HTTP/1.0 clients.
"""

from __future__ import annotations

import pytest

from tests.memrig import BODY, Rig


async def test_request_headers_forwarded_without_hop_by_hop() -> None:
    rig = Rig()
    rig.request(
        b"connection: keep-alive, x-foo\r\nte: trailers\r\nx-switchyard-backend: evil\r\n"
        b"authorization: Bearer k\r\nx-request-id: client-1\r\n"
    )
    sent = bytes(rig.upstream_t.data)
    head = sent.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1\r\nhost: 127.0.0.1:9\r\n")
    assert b"\r\nconnection:" not in head and b"\r\nte:" not in head
    assert b"x-switchyard-backend" not in head  # a client cannot steer internals
    assert b"authorization: bearer k" in head
    assert b"x-request-id: client-1" in head
    assert sent.endswith(BODY)


async def test_response_head_relayed_minus_hop_by_hop_in_one_write() -> None:
    rig = Rig()
    rig.request()
    writes: list[bytes] = []
    original = rig.client_t.write
    rig.client_t.write = lambda d: (writes.append(bytes(d)), original(d))[1]  # type: ignore[method-assign]
    body = b'{"ok":true}'
    rig.upstream.data_received(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"X-Switchyard-Variant: forged\r\nContent-Type: application/json\r\nX-Custom: 1\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert len(writes) == 1
    out = writes[0]
    assert out.startswith(b"HTTP/1.1 200 OK\r\nServer: up\r\n")
    assert b"Connection:" not in out and b"Keep-Alive" not in out and b"forged" not in out
    assert b"Content-Type: application/json\r\nX-Custom: 1\r\nContent-Length: 11\r\n" in out
    assert b"x-switchyard-variant: main\r\n" in out
    assert out.endswith(b"\r\n\r\n" + body)
    assert rig.client.exchange is None  # done, connection kept for the next request
    assert not rig.client_t.closed


async def test_chunked_upstream_is_reframed_per_read() -> None:
    rig = Rig()
    rig.request()
    rig.upstream.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"6\r\ndata: \r\n"
    )
    first = bytes(rig.client_t.data)
    assert b"transfer-encoding: chunked\r\n" in first
    assert first.endswith(b"\r\n\r\n6\r\ndata: \r\n")
    rig.upstream.data_received(b"3\r\nx\n\n\r\n0\r\n\r\n")
    assert bytes(rig.client_t.data).endswith(b"3\r\nx\n\n\r\n0\r\n\r\n")
    assert rig.client.exchange is None


async def test_read_until_close_body_becomes_chunked() -> None:
    rig = Rig()
    rig.request()
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello ")
    rig.upstream.data_received(b"world")
    rig.upstream.connection_lost(None)
    out = bytes(rig.client_t.data)
    assert b"transfer-encoding: chunked" in out
    assert out.endswith(b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
    assert rig.metrics.series("chat", "main", "", "127.0.0.1:9").by_class[2] == 1


async def test_cut_sse_stream_ends_with_error_event_and_no_last_chunk() -> None:
    rig = Rig()
    rig.request()
    rig.upstream.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"8\r\ndata: 1\n\r\n"
    )
    rig.upstream.connection_lost(ConnectionResetError("reset"))
    out = bytes(rig.client_t.data)
    assert b'data: {"error"' in out
    assert not out.endswith(b"0\r\n\r\n")
    assert rig.client_t.aborted


async def test_http10_client_gets_close_delimited_body() -> None:
    rig = Rig()
    rig.request(version=b"1.0")
    rig.upstream.data_received(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    out = bytes(rig.client_t.data)
    assert b"transfer-encoding" not in out.lower()
    assert b"connection: close" in out
    assert out.endswith(b"\r\n\r\nabc")
    assert rig.client_t.closed


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses_relayed(status: int) -> None:
    rig = Rig()
    rig.request()
    rig.upstream.data_received(b"HTTP/1.1 %d X\r\nx-a: b\r\n\r\n" % status)
    out = bytes(rig.client_t.data)
    assert out.startswith(b"HTTP/1.1 %d " % status)
    assert b"transfer-encoding" not in out
    assert rig.client.exchange is None


def _sse_chunk(*events: bytes) -> bytes:
    payload = b"".join(b"data: " + e + b"\n\n" for e in events)
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_DELTA = (
    b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s"}}],'
    b'"usage":null}'
)
_USAGE = (
    b'{"object":"chat.completion.chunk","choices":[],'
    b'"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}'
)


@pytest.mark.parametrize("packed", [False, True], ids=["event-per-chunk", "events-in-one-chunk"])
async def test_a_stream_counts_the_usage_report_not_each_chunks_null_usage(packed: bool) -> None:
    # The client did not ask for usage: the gateway asked for it, reads the counts from
    # the report and drops that event; `"usage": null` on every other chunk (OpenAI,
    # vLLM) is not a report, also when the backend packs several events into one chunk.
    rig = Rig()
    rig.request(body=b'{"model":"chat","stream":true,"messages":[]}')
    sent = bytes(rig.upstream_t.data)
    assert b'"include_usage":true' in sent
    events = [_DELTA % b"a", _DELTA % b"b", _DELTA % b"c", _USAGE, b"[DONE]"]
    chunks = [_sse_chunk(*events)] if packed else [_sse_chunk(e) for e in events]
    rig.upstream.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(chunks)
        + b"0\r\n\r\n"
    )
    out = bytes(rig.client_t.data)
    body = out.split(b"\r\n\r\n", 1)[1]
    assert body.count(b'"usage":null') == 3
    assert b"prompt_tokens" not in body  # the report the client did not ask for
    assert b"data: [DONE]" in body and body.endswith(b"0\r\n\r\n")
    series = rig.metrics.series("chat", "main", "", "127.0.0.1:9")
    assert (series.prompt_tokens, series.completion_tokens) == (7, 3)
    assert rig.client.exchange is None


def _dechunked(body: bytes) -> tuple[bytes, int]:
    """The payload of a chunked body and how many chunks carried it."""
    payload, chunks, at = b"", 0, 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        if size == 0:
            return payload, chunks
        payload += body[line_end + 2 : line_end + 2 + size]
        chunks += 1
        at = line_end + 2 + size + 2


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


async def test_a_streams_chunks_read_together_go_out_as_one_chunk_with_each_event_timed() -> None:
    rig = Rig()
    rig.request(body=b'{"model":"chat","stream":true,"messages":[]}')
    events = [_DELTA % b"a", _DELTA % b"b", _DELTA % b"c", _USAGE, b"[DONE]"]
    # The first read: the head and two whole events; then one event cut in two reads;
    # then the rest and the end.
    rig.upstream.data_received(_SSE_HEAD + _sse_chunk(events[0]) + _sse_chunk(events[1]))
    third = _sse_chunk(events[2])
    rig.upstream.data_received(third[:20])
    rig.upstream.data_received(third[20:])
    rig.upstream.data_received(_sse_chunk(events[3]) + _sse_chunk(events[4]) + b"0\r\n\r\n")
    out = bytes(rig.client_t.data)
    payload, chunks = _dechunked(out.split(b"\r\n\r\n", 1)[1])
    # What the client reads is every event but the usage report it did not ask for.
    expected = b"".join(b"data: " + e + b"\n\n" for e in events if e != _USAGE)
    assert payload == expected
    assert chunks == 4  # one per read that held bytes of an event (the report's read too)
    series = rig.metrics.series("chat", "main", "", "127.0.0.1:9")
    assert sum(series.ttft.counts) == 1
    # 5 events: the first is the time to first token, the other 4 each have a gap.
    assert sum(series.itl.counts) == 4
    assert (series.prompt_tokens, series.completion_tokens) == (7, 3)
    assert rig.client.exchange is None


async def test_a_stream_to_an_http10_client_is_relayed_as_it_comes() -> None:
    rig = Rig()
    rig.request(version=b"1.0", body=b'{"model":"chat","stream":true,"messages":[]}')
    rig.upstream.data_received(
        _SSE_HEAD + _sse_chunk(_DELTA % b"a") + _sse_chunk(_DELTA % b"b") + b"0\r\n\r\n"
    )
    out = bytes(rig.client_t.data)
    assert out.split(b"\r\n\r\n", 1)[1] == b"".join(
        b"data: " + _DELTA % t + b"\n\n" for t in (b"a", b"b")
    )
    assert rig.client_t.closed
