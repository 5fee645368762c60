"""The client-facing HTTP/1.1 server under raw bytes: malformed requests, smuggling
attempts, slowloris, pipelining floods, half-closed connections; and its answers next
to nginx's for the same bytes.

The gateway parses HTTP itself (httptools/llhttp), so it is held to what a mature
server does: every case below has the answer class the gateway must give, and where
nginx (a reverse proxy to the same simulator) answers differently the case says why.
Classes, not exact statuses, are compared: `2xx`, `4xx`, `5xx`, `closed` (no answer),
`timeout` (no answer in time). The gateway must never give `5xx` or `timeout`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.procs import GatewayProc, Simulator, start_gateway, start_simulator
from tests.programs import require_program

CHAT = b'{"model":"r","messages":[{"role":"user","content":"x"}]}'
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
# Short timeouts so slowloris cases finish quickly; the defaults are 10 s / 60 s / 75 s.
LIMITS_ENV = {
    "SWITCHYARD_LIMITS__HEADER_TIMEOUT": "1",
    "SWITCHYARD_LIMITS__BODY_TIMEOUT": "1",
    "SWITCHYARD_LIMITS__KEEPALIVE_TIMEOUT": "2",
}


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return POST + headers + b"Connection: close\r\n\r\n" + body


def _get(headers: bytes = b"", target: bytes = b"/v1/models", version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\nHost: x\r\n%sConnection: close\r\n\r\n" % (target, version, headers)


WS = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"
LAST = b"0\r\n\r\n"
AS_XCHUNKED = "as TE xchunked"
NO_HOST = b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n"

# name -> (bytes, the gateway's class, nginx's class where it differs, and why)
CASES: dict[str, tuple[bytes, str, str | None, str]] = {
    "valid chat": (_post(b"Content-Length: %d\r\n" % len(CHAT), CHAT), "2xx", None, ""),
    "valid HTTP/1.0": (b"GET /v1/models HTTP/1.0\r\n\r\n", "2xx", None, ""),
    "absolute-form target": (_get(target=b"http://elsewhere.example/v1/models"), "2xx", None, ""),
    "chunked GET, empty": (_get(CHUNKED) + LAST, "2xx", None, ""),
    "CL and TE": (_post(b"Content-Length: 4\r\n" + CHUNKED, LAST), "4xx", None, ""),
    "two different CL": (
        _post(b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}x"),
        "4xx",
        None,
        "",
    ),
    "two equal CL": (_post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"), "4xx", None, ""),
    "obs-fold": (_get(b"X-A: a\r\n b\r\n"), "4xx", None, ""),
    "space before colon": (_get(b"Content-Length : 0\r\n"), "4xx", None, ""),
    "TE twice": (_post(CHUNKED + CHUNKED, LAST), "4xx", None, ""),
    "TE with space before colon": (
        _post(b"Transfer-Encoding : chunked\r\n", LAST),
        "4xx",
        None,
        "",
    ),
    "TE on HTTP/1.0": (
        b"POST /v1/chat/completions HTTP/1.0\r\n" + CHUNKED + b"\r\n" + LAST,
        "4xx",
        None,
        "",
    ),
    "TE xchunked": (
        _post(b"Transfer-Encoding: xchunked\r\n"),
        "4xx",
        "5xx",
        "nginx answers an unknown transfer coding 501; to the gateway a framing it cannot "
        "trust is the client's error",
    ),
    "TE identity": (_post(b"Transfer-Encoding: identity\r\n"), "4xx", "5xx", AS_XCHUNKED),
    "TE tab-chunked": (_post(b"Transfer-Encoding:\tchunked\r\n", LAST), "4xx", "5xx", AS_XCHUNKED),
    "CL negative": (_post(b"Content-Length: -1\r\n"), "4xx", None, ""),
    "CL with plus": (_post(b"Content-Length: +2\r\n", b"{}"), "4xx", None, ""),
    "CL hex": (_post(b"Content-Length: 0x2\r\n", b"{}"), "4xx", None, ""),
    "CL overflow": (_post(b"Content-Length: 99999999999999999999999\r\n"), "4xx", None, ""),
    "bad chunk size": (_post(CHUNKED, b"zz\r\n{}\r\n" + LAST), "4xx", None, ""),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "4xx", None, ""),
    "HTTP/3.0 version": (_get(version=b"3.0"), "4xx", "5xx", "nginx answers 505, the gateway 400"),
    "CONNECT authority-form": (
        b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\n\r\n",
        "4xx",
        None,
        "",
    ),
    "OPTIONS *": (_get(target=b"*").replace(b"GET", b"OPTIONS", 1), "4xx", None, ""),
    "NUL in header": (_get(b"X-A: a\x00b\r\n"), "4xx", None, ""),
    "control char in target": (_get(target=b"/v1/mo\x01dels"), "4xx", None, ""),
    "space in target": (_get(target=b"/v1/mo dels"), "4xx", None, ""),
    "bad method": (_get().replace(b"GET", b"G@T", 1), "4xx", None, ""),
    "lower-case method": (_get().replace(b"GET", b"get", 1), "4xx", None, ""),
    "empty header name": (_get(b": v\r\n"), "4xx", None, ""),
    "target over the limit": (_get(target=b"/v1/" + b"a" * 70_000), "4xx", None, ""),
    "header over the limit": (_get(b"X-Big: " + b"a" * 70_000 + b"\r\n"), "4xx", None, ""),
    "150 header fields": (
        _get(b"".join(b"X-H%d: v\r\n" % i for i in range(150))),
        "4xx",
        "2xx",
        "nginx limits header bytes only, the gateway their count too (limits.max_header_count)",
    ),
    "Expect other than 100-continue": (
        _post(b"Expect: 200-ok\r\nContent-Length: 2\r\n", b"{}"),
        "4xx",
        None,
        "",
    ),
    "TLS ClientHello": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "4xx", None, ""),
    "bare LF line ends": (
        b"GET /v1/models HTTP/1.1\nHost: x\nConnection: close\n\n",
        "4xx",
        "2xx",
        "RFC 9112 lets a server reject bare LF; llhttp does, nginx accepts",
    ),
    "header line without colon": (
        _get(b"BadHeader\r\n"),
        "4xx",
        "2xx",
        "nginx skips invalid header lines; the gateway refuses the request",
    ),
    "Upgrade: websocket": (
        _get(b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + WS),
        "4xx",
        "2xx",
        "nginx drops Upgrade unless configured to pass it; the gateway refuses upgrades",
    ),
    # RFC 9112 3.2: 400 for an HTTP/1.1 request without Host and for any with two.
    "no Host on HTTP/1.1": (NO_HOST, "4xx", None, ""),
    "two Host fields": (_get(b"Host: y\r\n"), "4xx", None, ""),
    "two Host fields on HTTP/1.0": (_get(b"Host: y\r\n", version=b"1.0"), "4xx", None, ""),
    "no Host on HTTP/1.0": (
        b"GET /v1/models HTTP/1.0\r\nConnection: close\r\n\r\n",
        "2xx",
        None,
        "",
    ),
}


def classify(answer: bytes) -> str:
    rest = answer
    while rest.startswith(b"HTTP/1.1 100 "):  # interim answers are not the answer
        rest = rest.partition(b"\r\n\r\n")[2]
    if rest.startswith(b"<timeout>"):
        return "timeout"
    if not rest:
        return "closed"
    status = rest.split(b" ", 2)[1] if rest.startswith(b"HTTP/") else b""
    return f"{status[:1].decode()}xx" if status[:1].isdigit() else "other"


def ask(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the first final response head is complete or the server
    closes (no half-close: nginx would treat it as the client giving up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while not _head_complete(out):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out + b"<timeout>"
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def _head_complete(out: bytes) -> bool:
    rest = out
    while rest.startswith(b"HTTP/1.1 100 ") and b"\r\n\r\n" in rest:
        rest = rest.partition(b"\r\n\r\n")[2]
    return b"\r\n\r\n" in rest


def read_all(s: socket.socket, limit: float = 10.0) -> bytes:
    s.settimeout(limit)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    s = start_simulator("raw-sim", "--tokens", "4")
    yield s
    s.proc.stop()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    folder = tmp_path_factory.mktemp("raw-policies")
    (folder / "r.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: r\n"
        f'variants: [{{name: main, endpoints: ["{sim.url}"]}}]\n'
    )
    g = start_gateway(folder, env=LIMITS_ENV)
    yield g
    g.proc.stop()
    assert "Traceback" not in g.proc.output(), g.proc.output()[-3000:]


@pytest.fixture(scope="module")
def nginx(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # In CI a missing nginx fails the comparison instead of skipping it (.ci/run installs it).
    exe = require_program("nginx", "apt-get install nginx: no comparison")
    work = tmp_path_factory.mktemp("nginx")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ""
    if os.geteuid() == 0:  # as root nginx's worker would become `nobody`: keep ours
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    temps = " ".join(f"{kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy"))
    temps += f" fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;"
    (work / "nginx.conf").write_text(
        f"{user}worker_processes 1; daemon off; master_process on; pid {work}/nginx.pid;\n"
        f"error_log {work}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{ access_log off; {temps}\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        f"    location / {{ proxy_pass {sim.url}; proxy_http_version 1.1;\n"
        '      proxy_set_header Connection ""; } } }\n'
    )
    proc = subprocess.Popen(
        [exe, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start: {(work / 'error.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.parametrize("name", list(CASES))
def test_gateway_answer_class(gw: GatewayProc, name: str) -> None:
    data, expected, _, _ = CASES[name]
    answer = ask(port_of(gw.url), data)
    assert classify(answer) == expected, answer[:300]
    if expected == "4xx":  # the gateway's own refusals say what is wrong
        assert b'"message"' in answer or b'"error"' in answer, answer[:300]


def test_answer_classes_next_to_nginx(gw: GatewayProc, nginx: int) -> None:
    rows = []
    for name, (data, expected, differs, why) in CASES.items():
        ours, theirs = classify(ask(port_of(gw.url), data)), classify(ask(nginx, data))
        rows.append(f"{name:32} gateway={ours:8} nginx={theirs:8} {why}")
        assert ours == expected, name
        assert theirs == (differs or expected), (
            f"{name}: nginx answered {theirs}; the table says {differs or expected}"
        )
    print("\n" + "\n".join(rows))


def test_host_field_rules_of_rfc_9112(gw: GatewayProc) -> None:
    """No Host on HTTP/1.1, or Host twice: 400 naming the problem, connection closed."""
    port = port_of(gw.url)
    for data, says in (
        (NO_HOST, b"has no Host header field"),
        (_get(b"Host: y\r\n"), b"has 2 Host header fields"),
        (_get(b"host: x\r\nHOST: z\r\n", version=b"1.0"), b"has 3 Host header fields"),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data.replace(b"Connection: close\r\n", b""))  # kept alive, but...
            answer = read_all(s)  # ...closed after the 400: the framing is not trusted
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "bad_request", error
        assert says in error["message"].encode() and b"RFC 9112" in error["message"].encode()
    # HTTP/1.0 predates Host: served without one, and an empty Host is a Host.
    for data in (
        b"GET /v1/models HTTP/1.0\r\n\r\n",
        _get(b"", version=b"1.1").replace(b"Host: x", b"Host: "),
    ):
        assert ask(port, data).startswith(b"HTTP/1.1 200 "), data


def test_smuggled_request_behind_cl_te_is_never_served(gw: GatewayProc, sim: Simulator) -> None:
    before = int(sim.stats()["started"])  # type: ignore[call-overload]
    smuggled = _post(b"Content-Length: %d\r\n" % len(CHAT), CHAT)
    attempts = [
        # CL.TE: a front end using CL sends it all; one using TE sees a second request.
        POST
        + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s"
        % (5 + len(smuggled), smuggled),
        # TE.CL with an obfuscated TE the gateway must not half-understand.
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\nContent-Length: 4\r\n\r\n"
        b"5c\r\n" + smuggled + b"\r\n0\r\n\r\n",
        # Duplicate CL with the shorter one first.
        POST + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled),
    ]
    for data in attempts:
        with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=5) as s:
            s.sendall(data)
            answer = read_all(s)
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert classify(answer) == "4xx"
    assert int(sim.stats()["started"]) == before  # type: ignore[call-overload]


def test_slowloris_head_and_body_are_timed_out_while_others_are_served(gw: GatewayProc) -> None:
    port = port_of(gw.url)
    slow_head = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow_body = socket.create_connection(("127.0.0.1", port), timeout=10)
    with slow_head, slow_body:
        slow_body.sendall(POST + b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT[:5])
        started = time.monotonic()
        head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
        answers: dict[str, bytes] = {}
        for i, byte in enumerate(head):  # one byte every 50 ms: never a complete head
            if select.select([slow_head], [], [], 0)[0]:
                break  # answered: sending more would earn a reset that loses the answer
            slow_head.send(bytes([byte]))
            if i % 10 == 0:  # a normal client is not held up meanwhile
                assert httpx.get(f"{gw.url}/v1/models", timeout=5).status_code == 200
            if time.monotonic() - started > 4:
                break
            time.sleep(0.05)
        answers["head"] = read_all(slow_head)
        answers["body"] = read_all(slow_body)
        elapsed = time.monotonic() - started
    for what, answer in answers.items():
        assert answer.startswith(b"HTTP/1.1 408"), (what, answer)
        assert b"not received in time" in answer
    assert elapsed < 8


def test_idle_connections_are_closed_and_block_nobody(gw: GatewayProc) -> None:
    port = port_of(gw.url)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    try:
        assert httpx.get(f"{gw.url}/v1/models", timeout=5).status_code == 200
        for s in idle:  # keepalive_timeout is 2 s here: each sees EOF, not a hang
            assert read_all(s) == b""
    finally:
        for s in idle:
            s.close()


def test_pipelining_flood_is_answered_in_order(gw: GatewayProc) -> None:
    count = 1000
    requests = b"".join(
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: flood-%d\r\n\r\n" % i
        for i in range(count)
    )
    chat = b"".join(
        POST + b"X-Request-Id: chat-%d\r\nContent-Length: %d\r\n\r\n%s" % (i, len(CHAT), CHAT)
        for i in range(100)
    )
    last = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=20) as s:
        s.sendall(requests + chat + last)
        answer = read_all(s, limit=30)
    ids = [
        line.split(b":", 1)[1].strip()
        for line in answer.split(b"\r\n")
        if line.lower().startswith(b"x-request-id:")
    ]
    expected = [b"flood-%d" % i for i in range(count)] + [b"chat-%d" % i for i in range(100)]
    assert ids[:-1] == expected
    assert answer.count(b"HTTP/1.1 200 OK") == count + 101


def test_answers_to_head_have_no_body(gw: GatewayProc) -> None:
    """A body after a HEAD answer would be read as the next response: a desync."""
    heads = b"".join(
        b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % target
        for target in (b"/v1/models", b"/v1/chat/completions", b"/nowhere")
    )
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=10) as s:
        s.sendall(heads + _get())
        answer = read_all(s)
    parts = answer.split(b"HTTP/1.1 ")
    assert [p[:3] for p in parts[1:]] == [b"405", b"405", b"404", b"200"], answer
    for head in parts[1:4]:
        assert head.endswith(b"\r\n\r\n"), head  # nothing after the blank line


def test_half_closed_client_gets_its_whole_stream(gw: GatewayProc) -> None:
    body = b'{"model":"r","stream":true,"messages":[{"role":"user","content":"x"}]}'
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=10) as s:
        s.sendall(POST + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        s.shutdown(socket.SHUT_WR)  # no more requests; the answer must still come
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" in answer and answer.endswith(b"0\r\n\r\n")


def test_request_fed_one_byte_at_a_time(gw: GatewayProc) -> None:
    data = _post(b"Content-Length: %d\r\n" % len(CHAT), CHAT)
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in data:
            s.send(bytes([byte]))
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200") and b"chat.completion" in answer


_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
    min_size=1,
    max_size=20,
)
_TRICKY_HEADERS = st.sampled_from(
    [
        b"Content-Length: 0\r\n",
        b"Content-Length: 1\r\n",
        b"Content-Length: abc\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive, x-foo\r\n",
        b"Expect: 100-continue\r\n",
        b"Host: \r\n",
        b"X-Request-Id: \xff\xfe\r\n",
        b" leading-space: v\r\n",
        b"X-Folded: a\r\n\tb\r\n",
        b"x-switchyard-backend: http://127.0.0.1:1\r\n",
    ]
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH"]))
    method = draw(st.one_of(st.just(method), _TOKEN.map(str.encode)))
    target = draw(
        st.one_of(
            st.sampled_from([b"/v1/models", b"/v1/chat/completions", b"/api/chat", b"/", b"*"]),
            st.binary(min_size=1, max_size=60),
            _TOKEN.map(lambda t: b"/" + t.encode()),
        )
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/9.9", b""]))
    headers = b"".join(
        draw(
            st.lists(
                st.one_of(
                    _TRICKY_HEADERS,
                    st.tuples(_TOKEN, st.binary(max_size=40)).map(
                        lambda nv: nv[0].encode() + b": " + nv[1] + b"\r\n"
                    ),
                ),
                max_size=6,
            )
        )
    )
    body = draw(st.one_of(st.just(b""), st.just(CHAT), st.binary(max_size=80)))
    framing = b"Content-Length: %d\r\n" % len(body) if draw(st.booleans()) else b""
    line = method + b" " + target + (b" " + version if version else b"")
    return line + b"\r\nHost: x\r\n" + framing + headers + b"Connection: close\r\n\r\n" + body


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(data=raw_requests())
def test_random_requests_always_get_an_answer_never_a_5xx(gw: GatewayProc, data: bytes) -> None:
    answer = ask(port_of(gw.url), data, timeout=5)
    assert classify(answer) in {"2xx", "4xx"}, (data, answer[:300])
    assert gw.proc.popen.poll() is None


class _EndlessLineBackend:
    """An Ollama-speaking backend whose stream's second NDJSON line never ends."""

    def __init__(self) -> None:
        first = (
            b'{"model":"m","created_at":"2026-01-01T00:00:00Z",'
            b'"message":{"role":"assistant","content":"hi"},"done":false}\n'
        )

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = self.rfile.readline()
                    if not line:
                        return
                    head += line
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.rfile.read(length)
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
                for _ in range(8):  # 8 x 1 KiB of one line, no newline in sight
                    piece = b'{"model":"' + b"m" * 1000 + b'"'
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    time.sleep(0.05)
                self.wfile.write(b"1\r\n\n\r\n0\r\n\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stream_chunk_limit_ends_a_translated_stream_in_error(tmp_path: Path) -> None:
    backend = _EndlessLineBackend()
    (tmp_path / "t.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: t\n"
        f'variants: [{{name: main, endpoints: ["{backend.url}"], backend_protocol: ollama}}]\n'
    )
    gw = start_gateway(tmp_path, env={"SWITCHYARD_LIMITS__MAX_STREAM_CHUNK_BYTES": "4096"})
    try:
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "t", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        ) as reply:
            assert reply.status_code == 200
            parts: list[bytes] = []
            with pytest.raises(httpx.RemoteProtocolError):  # no final chunk: incomplete
                parts.extend(reply.iter_raw())
        body = b"".join(parts)
        assert b'"content":"hi"' in body  # what came before the limit was relayed
        assert b"max_stream_chunk_bytes" in body and b"data: [DONE]" not in body
    finally:
        gw.proc.stop()
        backend.close()
