"""SSE benchmark: what the gateway adds to a token stream, at concurrency 1.

A raw-socket HTTP/1.1 client measures from the moment the request is handed to the
kernel: time to the first response byte (TTFB) and to the terminating chunk (total).
It does no parsing while the clock runs, only a check of the buffer's tail for the
chunked terminator, so the client is never what is being measured. Systems are
interleaved request by request (direct, nginx, gateway, direct, ...) so a noisy
neighbour hits all three alike.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchlib import configs
from benchlib.machine import CLK_TCK, cpu_ns, cpu_ticks, process_tree
from benchlib.procs import BenchError, Service

_CHUNKED_END = b"\r\n0\r\n\r\n"


@dataclass(frozen=True)
class StreamSample:
    """One stream: nanoseconds to the first byte and to the end, and what arrived."""

    ttfb_ns: int
    total_ns: int
    status: int
    events: int
    done: bool


class StreamClient:
    """One keep-alive connection; `stream()` sends a request and reads the whole answer."""

    def __init__(self, url: str) -> None:
        hostport = url.split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        self.address = (host, int(port))
        self.host_header = hostport
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        return sock

    def request_bytes(self, tokens: int, user: str) -> bytes:
        body = configs.STREAM_BODY.encode()
        return (
            f"POST {configs.CHAT_PATH} HTTP/1.1\r\nhost: {self.host_header}\r\n"
            f"content-type: application/json\r\naccept: text/event-stream\r\n"
            f"authorization: Bearer {configs.API_KEY}\r\n"
            f"x-user-id: {user}\r\nx-sim-tokens: {tokens}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body

    def stream(self, request: bytes) -> StreamSample:
        sock = self.sock or self._connect()
        recv = sock.recv
        start = time.perf_counter_ns()
        sock.sendall(request)
        buf = bytearray(recv(262144))
        first = time.perf_counter_ns()
        if not buf:
            self.close()
            raise BenchError("the server closed the connection without answering")
        while b"\r\n\r\n" not in buf:
            buf += self._more(recv)
        head_end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:head_end]).decode("latin-1").lower()
        chunked = "transfer-encoding: chunked" in head
        length = _content_length(head)
        if chunked:
            while not (buf.endswith(_CHUNKED_END) or bytes(buf[head_end:]) == b"0\r\n\r\n"):
                buf += self._more(recv)
        elif length is not None:
            while len(buf) - head_end < length:
                buf += self._more(recv)
        else:  # close-delimited: read to EOF, reconnect next time
            while chunk := recv(262144):
                buf += chunk
            self.close()
        end = time.perf_counter_ns()
        if "connection: close" in head:
            self.close()
        status = int(head.split(" ", 2)[1])
        body = bytes(buf[head_end:])
        return StreamSample(
            ttfb_ns=first - start,
            total_ns=end - start,
            status=status,
            events=body.count(b"data: "),
            done=b"data: [DONE]" in body,
        )

    def _more(self, recv: Callable[[int], bytes]) -> bytes:
        data = recv(262144)
        if not data:
            self.close()
            raise BenchError("the server closed the connection mid-response")
        return data


def _content_length(head: str) -> int | None:
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return None


@dataclass
class StreamSeries:
    """All samples of one system at one stream length."""

    system: str
    samples: list[StreamSample] = field(default_factory=list)
    cpu_s: float | None = None

    def ms(self, attr: str, pct: float) -> float:
        values = sorted(getattr(s, attr) for s in self.samples)
        return _percentile(values, pct) / 1e6

    @property
    def events(self) -> int:
        return round(statistics.median(s.events for s in self.samples))


def _percentile(values: list[int], pct: float) -> float:
    """Nearest-rank percentile of sorted values (the median for 50)."""
    if pct == 50:
        return float(statistics.median(values))
    rank = max(0, min(len(values) - 1, round(pct / 100 * len(values) + 0.5) - 1))
    return float(values[rank])


def run_streams(
    systems: dict[str, Service | None],
    urls: dict[str, str],
    tokens: int,
    streams: int,
    warmup: int,
) -> dict[str, StreamSeries]:
    """`streams` SSE requests per system, interleaved, each of `tokens` content chunks.

    `systems` maps a system name to the proxy process whose CPU is counted (None for
    direct), `urls` to the base URL to call.
    """
    clients = {name: StreamClient(url) for name, url in urls.items()}
    series = {name: StreamSeries(name) for name in urls}
    try:
        for i in range(warmup):
            for name, client in clients.items():
                _checked(name, client.stream(client.request_bytes(tokens, f"warm-{i}")), tokens)
        pids = {n: process_tree(s.popen.pid) for n, s in systems.items() if s is not None}
        before = {n: _cpu_s(p) for n, p in pids.items()}
        for i in range(streams):
            for name, client in clients.items():
                request = client.request_bytes(tokens, f"user-{i}")
                series[name].samples.append(_checked(name, client.stream(request), tokens))
        for name, p in pids.items():
            series[name].cpu_s = _cpu_s(p) - before[name]
    finally:
        for client in clients.values():
            client.close()
    return series


def _cpu_s(pids: list[int]) -> float:
    # A few hundred streams cost tens of milliseconds: schedstat's nanoseconds, not
    # 10 ms ticks, unless the kernel lacks it.
    ns = cpu_ns(pids)
    return ns / 1e9 if ns is not None else cpu_ticks(pids) / CLK_TCK


def _checked(system: str, sample: StreamSample, tokens: int) -> StreamSample:
    # A stream that is short or failed would look fast; refuse to time it.
    if sample.status != 200 or not sample.done or sample.events < tokens:
        raise BenchError(
            f"{system}: bad stream (HTTP {sample.status}, {sample.events} events, "
            f"[DONE] {'seen' if sample.done else 'missing'}, expected >= {tokens} events)"
        )
    return sample
