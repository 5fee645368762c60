"""The response-head and usage helpers of the exchange (compiled and Python alike)."""

from __future__ import annotations

import pytest

from gateway.dataplane import exchange


def _strip(block: bytes) -> bytes:
    kept = exchange.scan_head(block)[0]
    # The one-pass scan and the general path (`_without_dropped`, taken when a
    # Connection names other fields) agree on every head.
    probe = b"\n" + block.lower()
    found = exchange._DROPPED_RESPONSE_HEADER.search(probe)
    general = block if found is None else exchange._without_dropped(block, probe, found.start())
    assert kept == general
    return kept


@pytest.mark.parametrize(
    ("block", "kept"),
    [
        # The fast path: Connection: keep-alive (or close) and nothing else to drop.
        (
            b"Server: nginx\r\nConnection: keep-alive\r\nContent-Length: 2\r\n",
            b"Server: nginx\r\nContent-Length: 2\r\n",
        ),
        (b"Connection: close\r\n", b""),
        (b"content-length: 2\r\nconnection:  Keep-Alive \r\n", b"content-length: 2\r\n"),
        # More than one field to drop, or a Connection that names others: the full path.
        (
            b"Connection: keep-alive\r\nX-Request-Id: 7\r\nDate: x\r\n",
            b"Date: x\r\n",
        ),
        (
            b"Connection: x-trace\r\nX-Trace: 1\r\nContent-Length: 2\r\n",
            b"Content-Length: 2\r\n",
        ),
        (
            b"Keep-Alive: timeout=5\r\nContent-Type: a\r\nConnection: keep-alive\r\n",
            b"Content-Type: a\r\n",
        ),
        (b"X-Switchyard-Variant: a\r\nServer: s\r\n", b"Server: s\r\n"),
        (b"Server: s\r\nConnectionx: 1\r\n", b"Server: s\r\nConnectionx: 1\r\n"),
        (
            b"Transfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\n"
            b"Proxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nServer: s\r\n",
            b"Server: s\r\n",
        ),
        (
            b"X-Switchyard-Odd_Name: 1\r\nX-Request-Idx: 2\r\n",
            b"X-Switchyard-Odd_Name: 1\r\nX-Request-Idx: 2\r\n",
        ),
        (b"Date: d\r\nX-Request-Id: 1\r\nServer: s\r\n", b"Date: d\r\nServer: s\r\n"),
    ],
)
def test_hop_by_hop_and_internal_response_fields_are_dropped(block: bytes, kept: bytes) -> None:
    assert _strip(block) == kept


@pytest.mark.parametrize(
    ("block", "framed", "ctype", "chunked"),
    [
        (
            b"Content-Type: Application/JSON\r\nContent-Length: 2\r\n",
            True,
            b"application/json",
            False,
        ),
        (
            b"Content-Type:text/event-stream\r\nTransfer-Encoding: chunked\r\n",
            True,
            b"text/event-stream",
            True,
        ),
        (b"Transfer-Encoding: gzip\r\nContent-Type: a\r\nContent-Type: b\r\n", False, b"a", False),
        (b"Server: s\r\n", False, b"", False),
    ],
)
def test_the_head_scan_reads_framing_and_type(
    block: bytes, framed: bool, ctype: bytes, chunked: bool
) -> None:
    assert exchange.scan_head(block)[1:] == (framed, ctype, chunked)


@pytest.mark.parametrize(
    ("data", "prompt", "completion"),
    [
        (b'{"usage":{"prompt_tokens":48,"completion_tokens":31,"total_tokens":79}}', 48, 31),
        (b'{"usage": {"prompt_tokens" : 5 ,\n "completion_tokens":\t0}}', 5, 0),
        (b'{"done":true,"prompt_eval_count":12,"eval_count":3}', 12, 3),
        (b'data: {"choices":[],"usage":{"prompt_tokens":9}}\n\n', 9, -1),
        (b'{"usage":{"prompt_tokens":null,"completion_tokens":"7"}}', -1, -1),
        (b'{"usage":{"prompt_tokens"', -1, -1),
    ],
)
def test_token_counts_are_read_without_parsing_the_json(
    data: bytes, prompt: int, completion: int
) -> None:
    assert exchange._count_after(data, b'"prompt_tokens"', b'"prompt_eval_count"') == prompt
    assert exchange._count_after(data, b'"completion_tokens"', b'"eval_count"') == completion
