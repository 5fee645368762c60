"""The channel from gateway processes to the drift worker: numbered datagrams.

Datagrams suit a lossy, one-way feed: each `send` is one non-blocking system call,
and the kernel keeps message boundaries, so there is no framing, no connection to keep
and no reconnect logic; a restarted worker simply binds the same address again. Two
transports:

- Unix datagrams (the default, one machine). The address derives from the drift
  folder, so the supervisor, its gateway workers and the drift worker agree on it
  without passing it around; on Linux it lives in the abstract namespace (no file to
  clean up, no path-length limit), elsewhere it is a socket file in the drift folder.
  A worker that is down answers at once (ECONNREFUSED / ENOENT) and one that is behind
  fills its queue (EAGAIN): the sender holds the datagram for later, never waits.
- UDP (`udp://HOST:PORT`, a fleet: one worker fed by every replica). The sender's
  socket is connected, so where the network answers a datagram to a closed port with
  ICMP port unreachable (loopback, a Kubernetes Service without endpoints) the next
  send fails with ECONNREFUSED and the sender holds datagrams as for a Unix socket.
  But UDP does not tell the sender that the worker's receive queue is full, nor that a
  datagram was lost on the way.

So that nothing is lost uncounted over either, every datagram carries its sender's
random id, its number in that sender's stream and the rows the sender sent before it
(`Stream`); the worker counts the gaps per sender (`gateway.drift.senders`).

Three kinds of message: rows of samples; (every few seconds, and on every policy
change) the drift blocks of the policies the sending gateway serves, so the worker
needs no access to the policy files or ConfigMap itself; and `labels`: true labels the
gateway joined with their predictions (`gateway.drift.labeled.LabeledRecord`, one per
accepted `POST /v1/feedback` with a `label` on a route with a drift block). A labels
datagram is numbered like any other but carries no rows (`Stream.sent(0)`): the
ledger counts a lost one as a lost datagram.

Signed datagrams. With a fleet secret (`SWITCHYARD_FLEET_SECRET` or
`--fleet-secret-file`, as for feedback ids) every datagram carries a tag: a datagram
reads `{"v":3,"t":"<tag>","s":...}`, and the tag is the first 16 bytes, in hex, of
HMAC-SHA256(K, the same datagram without its `"t":"<tag>",`), where
K = HMAC-SHA256(fleet secret, "switchyard drift channel v1") (another label than the
feedback ids' key, so neither key can stand for the other). So the tag covers every
byte the worker reads: version, sender, number, rows before, the message. The worker
checks it (in constant time, before any byte is parsed) by `read`'s rule:

- a worker with the secret takes only datagrams whose tag checks out: one without a
  tag is dropped as `unauthenticated`, one with a wrong tag (another secret, altered,
  forged) as `bad_tag`; neither reaches the senders' ledger, so forged numbers cannot
  make up losses either;
- a worker without the secret takes every datagram, signed or not (it has nothing to
  check a tag with, and refusing signed ones would only lose the samples of gateways
  given the secret before it: an open worker is no safer for dropping them). It
  counts the signed ones it took unchecked and says so in its log.

Wire version 3 (version 2 had no tag; version 1 had no sender, number or rows-before
fields): a worker counts datagrams of another version as `wire_version` drops, so a
gateway and a worker of different releases show up in the metrics instead of silently
feeding nothing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from gateway.drift.labeled import LabeledRecord, LabeledRecordError

log = logging.getLogger("switchyard.drift")

# Well below the default socket send buffer (208 KiB), so one datagram always fits.
MAX_DATAGRAM = 60_000
# Rows datagrams over UDP stay smaller: a datagram crosses a network as IP fragments
# (about 11 of them at a 1500-byte MTU for this size) and losing any one loses it all.
UDP_ROWS_DATAGRAM = 16_000
WIRE_VERSION = 3
# The longest head `Stream.frame` puts before a payload: {"v":3,"t":"<32 hex>",
# "s":"<16 hex>","n":<20 digits>,"r":<20 digits>, (119 bytes; the budget of a
# datagram's payload leaves room).
HEAD_MAX = 136
# The tag: HMAC-SHA256 under a key derived from the fleet secret with this label,
# truncated to TAG_BYTES, in hex. Every datagram of this version starts with UNSIGNED;
# a signed one goes on with SIGNED's `"t":"`, the tag, `",`, then what an unsigned one
# would hold after UNSIGNED.
CHANNEL_LABEL = b"switchyard drift channel v1"
TAG_BYTES = 16
UNSIGNED = b'{"v":%d,' % WIRE_VERSION
SIGNED = UNSIGNED + b'"t":"'
_TAG_END = len(SIGNED) + 2 * TAG_BYTES
_SIGNED_REST = _TAG_END + 2  # after the tag's closing `",`
_BLOCK = 64  # SHA-256's block size, for the precomputed HMAC pads
_SENDER = re.compile(rb'"s":"([0-9A-Za-z_.-]{1,64})"')
# An empty datagram: numbered nothing, says nothing; the worker ignores it. A sender
# whose last send was refused sends it first, so that over UDP the send that goes to a
# worker still down (and only makes the next send fail) is not a numbered one.
PROBE = b""
# The drift worker's exit code when its address (or HTTP port) is taken: another
# worker serves it, so whoever started this one should not retry as for a crash.
ADDRESS_TAKEN = 3
RESOLVE_EVERY = 30.0  # seconds between DNS lookups of a UDP worker's host name
RESOLVE_RETRY = 2.0  # ... while it does not resolve


class AddressError(ValueError):
    """A drift worker address that cannot be used, with what was expected."""


@dataclass(frozen=True, slots=True)
class UdpAddress:
    """A drift worker reached over UDP."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}"


Address = str | bytes | UdpAddress  # Unix socket (path or abstract name), or UDP


def worker_address(drift_dir: str | Path) -> bytes | str:
    """Where the drift worker of `drift_dir` receives samples on this machine."""
    folder = Path(drift_dir).resolve()
    if sys.platform.startswith("linux"):
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:20]
        return b"\0switchyard-drift-" + digest.encode()
    return str(folder / "worker.sock")


def describe(address: Address) -> str:
    """An address as people write it (logs, the status)."""
    if isinstance(address, UdpAddress):
        return str(address)
    if isinstance(address, bytes):
        return "unix:@" + address[1:].decode(errors="replace")
    return f"unix:{address}"


def _host_port(text: str, netloc: str, what: str, example: str) -> tuple[str, int]:
    """HOST and PORT of `netloc` (IPv6 in brackets), or AddressError quoting `text`."""
    expected = f"{what} {text!r}: expected {example}"
    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is no number or out of range
        raise AddressError(f"{expected} ({exc})") from None
    if not host:
        raise AddressError(f"{expected} (no host)")
    if port is None:
        raise AddressError(f"{expected} (no port)")
    if parts.username is not None or parts.password is not None:
        raise AddressError(f"{expected} (no user or password here)")
    return host, port


def parse_udp(
    text: str, what: str = "drift worker address", *, listening: bool = False
) -> UdpAddress:
    """`udp://HOST:PORT` (HOST a name, an IPv4 address or [IPv6]) as a UdpAddress; port
    0 (the kernel picks one) only for a socket that is `listening`."""
    example = "udp://HOST:PORT, such as udp://switchyard-drift:9300"
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        raise AddressError(f"{what} {text!r}: expected {example} (no scheme)")
    if scheme.lower() != "udp":
        raise AddressError(
            f"{what} {text!r}: expected {example} (scheme {scheme!r} is not supported)"
        )
    if "/" in rest or "?" in rest or "#" in rest:
        raise AddressError(f"{what} {text!r}: expected {example} (no path or query)")
    host, port = _host_port(text, rest, what, example)
    if port == 0 and not listening:
        raise AddressError(f"{what} {text!r}: expected {example} (port 0 is no destination)")
    return UdpAddress(host, port)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) for a listening socket; port 0 picks one."""
    if "://" in text or "/" in text:
        raise AddressError(f"{what} {text!r}: expected HOST:PORT, such as 0.0.0.0:9301")
    return _host_port(text, text.strip(), what, "HOST:PORT, such as 0.0.0.0:9301")


def target(configured: str | None, drift_dir: str | Path) -> Address:
    """Where a gateway sends: the configured `udp://` worker, else this machine's."""
    if configured:
        return parse_udp(configured)
    return worker_address(drift_dir)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _udp_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# Sending ------------------------------------------------------------------------------


class Link(Protocol):
    """One process's way to the worker (see `link_to`)."""

    rows_limit: int  # the largest rows datagram worth sending over it

    def send(self, datagram: bytes) -> None:
        """Hand one datagram to the kernel; raises OSError (never blocks)."""

    async def maintain(self) -> None:
        """Keep the link usable (DNS for UDP) until cancelled."""

    def close(self) -> None: ...


class UnixLink:
    """Unix datagrams to an address on this machine."""

    rows_limit = MAX_DATAGRAM

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, datagram: bytes) -> None:
        self._sock.sendto(datagram, self.address)

    async def maintain(self) -> None:
        return None

    def close(self) -> None:
        self._sock.close()


class UdpLink:
    """UDP to a worker by name or address, through a connected socket (so ICMP port
    unreachable comes back as ECONNREFUSED on the next send).

    A host name is looked up off the event loop (`maintain`), never in `send`: until it
    resolves, `send` fails with EHOSTUNREACH and the sender keeps its datagrams. It is
    looked up again every RESOLVE_EVERY seconds, so a Service that moves is followed.
    """

    rows_limit = UDP_ROWS_DATAGRAM

    def __init__(self, address: UdpAddress) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._peer: tuple[Any, ...] | None = None
        self._failed = False
        if _literal(address.host):  # no lookup needed: usable at once
            self._connect(_udp_family(address.host), (address.host, address.port))

    def _connect(self, family: socket.AddressFamily, peer: tuple[Any, ...]) -> None:
        if self._sock is not None and peer == self._peer:
            return
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(peer)  # UDP: only sets the destination, nothing is sent
        except OSError:
            sock.close()
            raise
        old, self._sock, self._peer = self._sock, sock, peer
        if old is not None:
            old.close()

    def send(self, datagram: bytes) -> None:
        if self._sock is None:
            raise OSError(errno.EHOSTUNREACH, f"{self.address}: host name not resolved yet")
        self._sock.send(datagram)

    async def resolve(self) -> bool:
        """Look the host up once; False if it did not resolve (logged once per outage)."""
        if _literal(self.address.host):
            return True
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(
                self.address.host, self.address.port, type=socket.SOCK_DGRAM
            )
            family, _, _, _, peer = found[0]
            self._connect(family, peer)
        except (OSError, IndexError) as exc:
            if not self._failed:
                log.warning("drift worker %s: cannot resolve it: %s", self.address, exc)
            self._failed = True
            return self._sock is not None  # the last address found still serves
        if self._failed:
            log.info("drift worker %s: resolved to %s", self.address, self._peer)
        self._failed = False
        return True

    async def maintain(self) -> None:
        while True:
            ok = await self.resolve()
            await asyncio.sleep(RESOLVE_EVERY if ok else RESOLVE_RETRY)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def link_to(address: Address) -> UnixLink | UdpLink:
    """The link of a gateway process to the worker at `address`."""
    if isinstance(address, UdpAddress):
        return UdpLink(address)
    return UnixLink(address)


def sender_socket() -> socket.socket:
    """An unbound, non-blocking Unix datagram socket for `sendto` (tests, tools)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def address_served(address: Address) -> bool:
    """Whether some process has bound this machine's worker `address` (a Unix one):
    a datagram socket connects only to a bound address. Sends nothing."""
    if isinstance(address, UdpAddress):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(address)
    except OSError:
        return False
    finally:
        probe.close()
    return True


# Receiving ----------------------------------------------------------------------------


def receiver_socket(address: Address, buffer_bytes: int = 4 * 1024 * 1024) -> socket.socket:
    """The worker's bound, non-blocking socket. Raises OSError if the address is taken
    (another worker serves this drift folder or port)."""
    bind_to: Any = address
    if isinstance(address, UdpAddress):
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, bind_to = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        # A bigger queue rides out an evaluation holding the worker's GIL (the kernel
        # may cap it at net.core.rmem_max; that only means earlier drops, which the
        # sequence numbers count for UDP). No SO_REUSEADDR: on Linux it would let a
        # second worker bind the same UDP port and take the datagrams from the first.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        if isinstance(bind_to, str):
            Path(bind_to).parent.mkdir(parents=True, exist_ok=True)
            Path(bind_to).unlink(missing_ok=True)
        sock.bind(bind_to)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bound_address(address: Address, sock: socket.socket) -> Address:
    """`address` with the port the kernel picked (UDP port 0)."""
    if isinstance(address, UdpAddress) and address.port == 0:
        return UdpAddress(address.host, int(sock.getsockname()[1]))
    return address


# Tags ---------------------------------------------------------------------------------


class ChannelKey:
    """Signs and checks datagrams under the fleet secret (see the module docstring)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        key = hmac.digest(secret, CHANNEL_LABEL, "sha256").ljust(_BLOCK, b"\0")
        # HMAC with its two pads hashed once: a tag then costs two copies of a hash
        # state and the updates, not hmac's key schedule each time.
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def tag(self, *parts: bytes | memoryview) -> bytes:
        """The tag (hex) of the unsigned datagram that `parts` make up."""
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TAG_BYTES].hex().encode()

    def verify(self, datagram: bytes) -> bool:
        """Whether `datagram` (starting with SIGNED) carries the right tag."""
        if len(datagram) < _SIGNED_REST or datagram[_TAG_END:_SIGNED_REST] != b'",':
            return False
        expected = self.tag(UNSIGNED, memoryview(datagram)[_SIGNED_REST:])
        return hmac.compare_digest(expected, datagram[len(SIGNED) : _TAG_END])


def signed(datagram: bytes) -> bool:
    """Whether a datagram of this version carries a tag (right or wrong)."""
    return datagram.startswith(SIGNED)


def sender_of(datagram: bytes) -> str:
    """The sender id a datagram claims, unchecked and only as safe characters: for log
    lines about datagrams the worker did not take ("?" if none is found)."""
    found = _SENDER.search(datagram, 0, HEAD_MAX)
    return found.group(1).decode() if found else "?"


# Messages -----------------------------------------------------------------------------


class Stream:
    """The numbering of one sender's datagrams: `frame` puts the head (and, with a
    `key`, the tag) on a payload, `sent` advances the numbers once the kernel took the
    datagram (a datagram held for later keeps its number, so the worker sees a gap only
    for a real loss)."""

    __slots__ = ("key", "rows", "sender", "seq")

    def __init__(self, sender: str | None = None, key: ChannelKey | None = None) -> None:
        self.sender = sender or secrets.token_hex(8)
        self.key = key
        self.seq = 0  # datagrams sent so far
        self.rows = 0  # rows in them

    def frame(self, payload: bytes) -> bytes:
        head = b'"s":"%s","n":%d,"r":%d,' % (self.sender.encode(), self.seq, self.rows)
        if self.key is None:
            return b"".join((UNSIGNED, head, payload))
        tag = self.key.tag(UNSIGNED, head, payload)
        return b"".join((SIGNED, tag, b'",', head, payload))

    def sent(self, rows: int) -> None:
        self.seq += 1
        self.rows += rows

    def datagram(self, payload: bytes, rows: int) -> bytes:
        """Frame and count as sent at once (tests and tools that send it themselves)."""
        framed = self.frame(payload)
        self.sent(rows)
        return framed


def encode(
    route: str, variant: str, version: str, rows: Sequence[Any], limit: int = MAX_DATAGRAM
) -> Iterator[tuple[bytes, int]]:
    """(payload, rows in it) carrying `rows` of one (route, variant, version), each
    framed (`Stream.frame`) within `limit`; a single row too large is left out."""
    head = orjson.dumps({"route": route, "variant": variant, "version": version})
    prefix = head[1:-1] + b',"rows":['
    # Usually a flush's rows fit one datagram: then one orjson call encodes them all
    # (`[` + the rows joined by `,` + `]`, byte for byte what `_chunked` would join),
    # not one call and one Python step per row. It fits where `_chunked` would put them
    # all in one datagram: the rows' lengths plus their commas within its budget.
    whole = orjson.dumps(rows)
    if len(whole) - 1 <= limit - HEAD_MAX - len(prefix) - 2:
        return iter(((prefix + whole[1:] + b"}", len(rows)),) if rows else ())
    return _chunked(prefix, (orjson.dumps(row) for row in rows), limit)


def encode_config(routes: Sequence[Mapping[str, Any]]) -> bytes:
    """A config payload; its digest lets the worker tell configs apart cheaply."""
    body = orjson.dumps(list(routes), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(body).hexdigest()[:16]
    return b'"kind":"config","digest":"%s","routes":%s}' % (digest.encode(), body)


def encode_labels(
    records: Sequence[LabeledRecord], limit: int = MAX_DATAGRAM
) -> Iterator[tuple[bytes, int]]:
    """(payload, records in it) of `labels` messages carrying `records`, each framed
    (`Stream.frame`) within `limit`; a single record too large is left out."""
    encoded = (orjson.dumps(record.to_json()) for record in records)
    return _chunked(b'"kind":"labels","labels":[', encoded, limit)


def _chunked(prefix: bytes, items: Iterable[bytes], limit: int) -> Iterator[tuple[bytes, int]]:
    """(payload, items in it): `prefix`, then as many JSON `items` as fit a datagram of
    `limit` bytes with its head, then `]}`; an item too large for any is left out."""
    budget = limit - HEAD_MAX - len(prefix) - 2
    chunk: list[bytes] = []
    size = 0
    for encoded in items:
        if len(encoded) > budget:
            continue
        if chunk and size + len(encoded) + 1 > budget:
            yield prefix + b",".join(chunk) + b"]}", len(chunk)
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded) + 1
    if chunk:
        yield prefix + b",".join(chunk) + b"]}", len(chunk)


@dataclass(frozen=True, slots=True)
class Head:
    """Who sent a datagram, its number, and the rows its sender sent before it."""

    sender: str
    seq: int
    rows_before: int


@dataclass(frozen=True, slots=True)
class Rows:
    """Samples of one route, variant and model version."""

    head: Head
    route: str
    variant: str
    version: str
    rows: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Config:
    """The drift blocks of the policies a gateway process serves (see `config.py`)."""

    head: Head
    digest: str
    routes: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Labels:
    """True labels joined with their predictions (any routes, variants, versions).
    `malformed` counts records of the datagram that did not parse (left out)."""

    head: Head
    records: list[LabeledRecord]
    malformed: int = 0


class Unreadable:
    """Why a datagram was not taken: `malformed`, `wire_version` (another release),
    `unauthenticated` (no tag, at a worker that has the fleet secret) or `bad_tag`."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


MALFORMED = Unreadable("malformed")
OTHER_VERSION = Unreadable("wire_version")
UNAUTHENTICATED = Unreadable("unauthenticated")
BAD_TAG = Unreadable("bad_tag")


def _head(message: Mapping[str, Any]) -> Head | None:
    sender, seq, before = message.get("s"), message.get("n"), message.get("r")
    if not isinstance(sender, str) or not sender or len(sender) > 64:
        return None
    if type(seq) is not int or type(before) is not int or seq < 0 or before < 0:
        return None
    return Head(sender, seq, before)


def decode(datagram: bytes) -> Rows | Config | Labels | Unreadable:
    """The message in a datagram, or why it is not one of ours."""
    try:
        message = orjson.loads(datagram)
    except orjson.JSONDecodeError:
        return MALFORMED
    if not isinstance(message, dict) or "v" not in message:
        return MALFORMED
    if message["v"] != WIRE_VERSION:
        return OTHER_VERSION
    head = _head(message)
    if head is None:
        return MALFORMED
    if message.get("kind") == "config":
        routes, digest = message.get("routes"), message.get("digest")
        if not isinstance(routes, list) or not isinstance(digest, str):
            return MALFORMED
        return Config(head, digest, [r for r in routes if isinstance(r, dict)])
    if message.get("kind") == "labels":
        items = message.get("labels")
        if not isinstance(items, list):
            return MALFORMED
        records: list[LabeledRecord] = []
        for item in items:
            try:
                records.append(LabeledRecord.from_json(item))
            except LabeledRecordError:
                continue
        return Labels(head, records, len(items) - len(records))
    route, variant, version = message.get("route"), message.get("variant"), message.get("version")
    rows = message.get("rows")
    if not (isinstance(route, str) and isinstance(variant, str) and isinstance(version, str)):
        return MALFORMED
    if not isinstance(rows, list):
        return MALFORMED
    return Rows(head, route, variant, version, [r for r in rows if isinstance(r, dict)])


def read(datagram: bytes, key: ChannelKey | None) -> Rows | Config | Labels | Unreadable:
    """The message in a datagram, as a worker holding `key` (None: no fleet secret)
    takes it: with a key, only a datagram whose tag checks out is parsed; one without a
    tag is `unauthenticated` (or, if it is another release's or no message of ours,
    `wire_version` or `malformed`, which say more), one with a wrong tag `bad_tag`.
    Without a key every datagram is read, signed or not (see the module docstring)."""
    if key is None:
        return decode(datagram)
    if datagram.startswith(SIGNED):
        return decode(datagram) if key.verify(datagram) else BAD_TAG
    if datagram.startswith(UNSIGNED):
        return UNAUTHENTICATED  # of this release, unsigned: no need to parse it
    found = decode(datagram)
    return found if isinstance(found, Unreadable) else UNAUTHENTICATED
