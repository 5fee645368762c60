"""The channel to the drift worker: addresses (udp:// for a fleet's worker, with clear
errors), numbered datagrams, and the UDP link over real loopback sockets."""

from __future__ import annotations

import asyncio
import hmac
import random
import socket
from pathlib import Path

import orjson
import pytest

from gateway.cli import main as cli_main
from gateway.drift.channel import (
    BAD_TAG,
    HEAD_MAX,
    MALFORMED,
    UNAUTHENTICATED,
    AddressError,
    ChannelKey,
    Config,
    Rows,
    Stream,
    UdpAddress,
    UdpLink,
    Unreadable,
    _chunked,
    decode,
    describe,
    encode,
    encode_config,
    parse_host_port,
    parse_udp,
    read,
    receiver_socket,
    sender_of,
    signed,
    target,
    worker_address,
)
from gateway.drift.feed import drift_settings_problem
from gateway.drift.remote import parse_status_url
from gateway.drift.sender import DriftSender
from gateway.drift.tap import DriftTap
from gateway.observability.drift_metrics import DriftCounters
from gateway.settings import Settings
from tests.unit.test_drift_tap import decisions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp://switchyard-drift:9300", UdpAddress("switchyard-drift", 9300)),
        ("udp://127.0.0.1:1", UdpAddress("127.0.0.1", 1)),
        ("UDP://[::1]:9300", UdpAddress("::1", 9300)),
        (
            " udp://drift.ml.svc.cluster.local:65535 ",
            UdpAddress("drift.ml.svc.cluster.local", 65535),
        ),
    ],
)
def test_udp_addresses(text: str, expected: UdpAddress) -> None:
    assert parse_udp(text) == expected
    assert parse_udp(str(expected)) == expected  # it prints as it parses


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("switchyard-drift:9300", "no scheme"),
        ("tcp://switchyard-drift:9300", "scheme 'tcp' is not supported"),
        ("unix:///tmp/x", "scheme 'unix' is not supported"),
        ("udp://switchyard-drift", "no port"),
        ("udp://:9300", "no host"),
        ("udp://switchyard-drift:drift", "Port could not be cast"),
        ("udp://switchyard-drift:70000", "out of range"),
        ("udp://switchyard-drift:9300/samples", "no path or query"),
        ("udp://user@switchyard-drift:9300", "no user or password"),
        ("udp://switchyard-drift:0", "port 0 is no destination"),
    ],
)
def test_bad_udp_addresses_say_what_was_expected(text: str, why: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_udp(text)
    message = str(caught.value)
    assert repr(text) in message and "expected udp://HOST:PORT" in message
    assert why.lower() in message.lower()


def test_listening_addresses() -> None:
    assert parse_udp("udp://0.0.0.0:0", listening=True) == UdpAddress("0.0.0.0", 0)
    assert parse_host_port("0.0.0.0:9301", "--http") == ("0.0.0.0", 9301)
    assert parse_host_port("[::]:0", "--http") == ("::", 0)
    for bad in ("http://0.0.0.0:9301", "0.0.0.0", "9301"):
        with pytest.raises(AddressError, match=r"--http .*expected HOST:PORT"):
            parse_host_port(bad, "--http")


def test_status_urls() -> None:
    assert parse_status_url("http://switchyard-drift:9301/") == "http://switchyard-drift:9301"
    assert parse_status_url("https://drift.example/api") == "https://drift.example/api"
    for bad in ("switchyard-drift:9301", "udp://x:1", "http://x:1?a=b", "http://x:port"):
        with pytest.raises(AddressError, match="drift status URL"):
            parse_status_url(bad)


def test_the_target_is_the_fleet_worker_or_this_machines(tmp_path: object) -> None:
    assert target("udp://w:9300", "/x") == UdpAddress("w", 9300)
    assert target(None, "/x") == worker_address("/x")
    assert describe(UdpAddress("::1", 9)) == "udp://[::1]:9"
    assert describe(b"\0switchyard-drift-ab") == "unix:@switchyard-drift-ab"


def test_serve_refuses_bad_drift_settings_with_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert drift_settings_problem(Settings()) is None
    assert drift_settings_problem(Settings(drift_worker_address="udp://w:9300")) is None
    assert cli_main(["serve", "--drift-worker-address", "udp://w"]) == 2
    assert "drift worker address 'udp://w': expected udp://HOST:PORT" in capsys.readouterr().err
    assert cli_main(["serve", "--drift-status-url", "switchyard-drift:9301"]) == 2
    assert "drift status URL" in capsys.readouterr().err
    assert cli_main(["drift-worker", "--listen", "tcp://0.0.0.0:9300"]) == 2
    assert "--listen 'tcp://0.0.0.0:9300'" in capsys.readouterr().err
    # The worker's fleet secret: unreadable or too short stops it, saying which.
    missing = tmp_path / "no-such-secret"
    assert cli_main(["drift-worker", "--fleet-secret-file", str(missing)]) == 2
    assert f"cannot read the fleet secret file {missing}" in capsys.readouterr().err
    (tmp_path / "short").write_text("tiny\n")
    assert cli_main(["drift-worker", "--fleet-secret-file", str(tmp_path / "short")]) == 2
    assert "is 4 bytes long; use at least 16" in capsys.readouterr().err


def test_every_datagram_carries_its_sender_number_and_rows_before() -> None:
    stream = Stream()
    [(payload, n)] = list(encode("r", "v", "1", [{"a": 1.0}, {"a": 2.0}]))
    first = decode(stream.frame(payload))
    stream.sent(n)
    config = decode(stream.datagram(encode_config([{"route": "r"}]), 0))
    third = decode(stream.frame(payload))
    assert isinstance(first, Rows) and isinstance(config, Config) and isinstance(third, Rows)
    assert (first.head.sender, first.head.seq, first.head.rows_before) == (stream.sender, 0, 0)
    assert (config.head.seq, config.head.rows_before) == (1, 2)
    assert (third.head.seq, third.head.rows_before) == (2, 2)  # not sent yet: still 2
    assert Stream().sender != stream.sender  # random per process


def test_other_wire_versions_and_garbage_are_told_apart() -> None:
    old = b'{"v":1,"route":"r","variant":"v","version":"1","rows":[]}'  # before numbering
    unsigned = b'{"v":2,"s":"a","n":0,"r":0,"route":"r","variant":"v","version":"1","rows":[]}'
    for datagram in (old, unsigned):  # version 2 had no tags
        for key in (None, ChannelKey(SECRET)):
            verdict = read(datagram, key)
            assert isinstance(verdict, Unreadable) and verdict.reason == "wire_version"
    for junk in (b"", b"[]", b'{"route": "r"}', b'{"v":3,"s":"x","n":-1,"r":0}'):
        verdict = decode(junk)
        assert isinstance(verdict, Unreadable) and verdict.reason == "malformed", junk
    # At a worker with the secret, only what is none of ours is still "malformed":
    # a datagram of this version without a tag is refused as such, unparsed.
    for junk in (b"", b"[]", b'{"route": "r"}'):
        assert read(junk, ChannelKey(SECRET)) is MALFORMED
    assert read(b'{"v":3,"s":"x","n":-1,"r":0}', ChannelKey(SECRET)) is UNAUTHENTICATED


SECRET = b"0123456789abcdef-fleet-secret"


def test_a_tagged_datagram_reads_back_and_its_tag_is_the_documented_hmac() -> None:
    key = ChannelKey(SECRET)
    stream = Stream(key=key)
    [(payload, n)] = list(encode("r", "v", "1", [{"a": 1.0}, {"a": 2.0}]))
    datagram = stream.datagram(payload, n)
    message = read(datagram, key)
    assert isinstance(message, Rows) and message.rows == [{"a": 1.0}, {"a": 2.0}]
    assert (message.head.sender, message.head.seq, message.head.rows_before) == (
        stream.sender,
        0,
        0,
    )
    assert isinstance(read(stream.datagram(encode_config([{"route": "r"}]), 0), key), Config)
    # docs/drift.md: {"v":3,"t":"<tag>",...}, the tag the first 16 bytes (hex) of
    # HMAC-SHA256(K, the datagram without `"t":"<tag>",`), K = HMAC-SHA256(secret,
    # "switchyard drift channel v1"): not the feedback ids' label, so not their key.
    assert datagram.startswith(b'{"v":3,"t":"')
    tag = datagram[12:44]
    unsigned = datagram[:7] + datagram[46:]
    assert unsigned == Stream(stream.sender).frame(payload)  # as sent without a key
    derived = hmac.digest(SECRET, b"switchyard drift channel v1", "sha256")
    assert tag == hmac.new(derived, unsigned, "sha256").digest()[:16].hex().encode()
    assert derived != hmac.digest(SECRET, b"switchyard feedback id v1", "sha256")
    # A worker without the secret reads it as it reads an unsigned one.
    assert isinstance(read(datagram, None), Rows) and signed(datagram)
    assert isinstance(read(unsigned, None), Rows) and not signed(unsigned)


def test_missing_wrong_and_altered_tags_are_refused() -> None:
    key = ChannelKey(SECRET)
    [(payload, _)] = list(encode("r", "v", "1", [{"a": 1.0}]))
    stream = Stream(key=key)
    good = stream.frame(payload)
    assert isinstance(read(good, key), Rows)
    # No tag: a gateway without the secret, or anyone at all.
    assert read(Stream(stream.sender).frame(payload), key) is UNAUTHENTICATED
    # Another secret.
    other = Stream(stream.sender, key=ChannelKey(b"another-secret-of-16-bytes")).frame(payload)
    assert read(other, key) is BAD_TAG
    # Any byte changed: the number (a replayed datagram renumbered), a row, the tag.
    renumbered = good.replace(b'"n":0,', b'"n":7,')
    assert renumbered != good and read(renumbered, key) is BAD_TAG
    altered_row = good.replace(b'"a":1.0', b'"a":9.0')
    assert altered_row != good and read(altered_row, key) is BAD_TAG
    flipped = bytearray(good)
    flipped[12] = ord("0") if flipped[12] != ord("0") else ord("1")
    assert read(bytes(flipped), key) is BAD_TAG
    for broken in (good[:30], good[:44] + b"x" + good[45:], good.replace(b'","s"', b'"x"s"')):
        assert read(broken, key) is BAD_TAG, broken
    assert sender_of(other) == stream.sender  # for the log line, unchecked
    assert sender_of(b'{"v":3,"s":"\n<script>","n":0}') == "?"


def test_rows_datagrams_over_udp_stay_small() -> None:
    rows = [{"text": "x" * 100} for _ in range(1000)]
    for stream in (Stream(), Stream(key=ChannelKey(SECRET))):
        stream.seq = stream.rows = 10**19  # the longest numbers: 20 digits each
        sizes = [len(stream.frame(p)) for p, _ in encode("r", "v", "1", rows, 16_000)]
        assert len(sizes) > 5 and max(sizes) <= 16_000


@pytest.mark.parametrize("limit", [16_000, 60_000])
def test_rows_fitting_one_datagram_encode_as_row_by_row(limit: int) -> None:
    # encode puts rows that fit one datagram in it with one orjson call: the payload
    # must be the one the row-by-row chunking gives, at and around the budget's edge.
    prefix = b'"route":"r","variant":"v","version":"1","rows":['
    budget = limit - HEAD_MAX - len(prefix) - 2
    datagrams = set()
    for count in (0, 1, 2, 3, 7):
        edge = budget // max(count, 1) - 12  # a row {"text":"x..."} is 11 bytes more
        for size in range(edge - 2, edge + 3):
            rows = [{"text": "x" * size} for _ in range(count)]
            expected = list(_chunked(prefix, (orjson.dumps(row) for row in rows), limit))
            assert list(encode("r", "v", "1", rows, limit)) == expected, (count, size)
            datagrams.add(len(expected))
    assert datagrams == {0, 1, 2}  # both sides of the edge were tried
    big = [{"text": "y" * limit}, {"text": "z"}]  # a row too large for any datagram
    assert list(encode("r", "v", "1", big, limit)) == [(prefix + b'{"text":"z"}]}', 1)]


def free_udp_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


async def test_udp_sender_holds_rows_while_the_port_is_closed_then_sends_config_first() -> None:
    policies, d = decisions()
    address = UdpAddress("127.0.0.1", free_udp_port())
    counters = DriftCounters()
    tap = DriftTap(1000, rng=random.Random(1))
    sender = DriftSender(tap, address, counters)
    sender.configure(policies)  # nobody there: ICMP port unreachable comes back
    tap.configure({"chat": 1.0})
    for _ in range(6):
        tap.offer(d["chat"], {"messages": [{"role": "user", "content": "hi"}]})
    sent = sender.flush()
    for _ in range(3):  # the refusal shows on the send after the unanswered one
        sent += sender.flush()
    assert sent == 0 and sender.backlog_rows == 6 and counters.dropped == {}
    receiver = receiver_socket(address)  # the worker is up
    try:
        assert sender.flush() == 6
        received = []
        for _ in range(100):
            try:
                received.append(decode(receiver.recv(65536)))
            except BlockingIOError:
                if received:
                    break
                await asyncio.sleep(0.01)
        probe, config, rows = received[-3:]
        assert isinstance(probe, Unreadable)  # the empty probe: the worker ignores it
        assert isinstance(config, Config) and isinstance(rows, Rows) and len(rows.rows) == 6
        # Only the very first config went to nobody numbered (the kernel took it, and
        # the worker counts the gap); while the port stayed closed, probes took the
        # sends that only make the next one fail, and refused sends number nothing.
        assert (config.head.seq, rows.head.seq, rows.head.rows_before) == (1, 2, 0)
        assert counters.sent == {("chat", "3"): 6}
    finally:
        sender.close()
        receiver.close()


async def test_udp_link_resolves_host_names_off_the_request_path() -> None:
    port = free_udp_port()
    receiver = receiver_socket(UdpAddress("127.0.0.1", port))
    link = UdpLink(UdpAddress("localhost", port))
    try:
        with pytest.raises(OSError, match="not resolved yet"):
            link.send(b"x")  # a name is never looked up in send
        assert await link.resolve()
        link.send(b"hello")
        for _ in range(100):
            try:
                assert receiver.recv(100) == b"hello"
                break
            except BlockingIOError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("nothing arrived")
        unknown = UdpLink(UdpAddress("no-such-host.invalid", port))
        assert not await unknown.resolve()
    finally:
        link.close()
        receiver.close()
