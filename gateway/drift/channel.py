"""The channel from gateway processes to the drift worker: Unix datagrams.

Datagrams suit a lossy, one-way feed: each `sendto` is one non-blocking system call,
a worker that is down answers at once (ECONNREFUSED / ENOENT) and a worker that is
behind fills its queue, so the sender gets EAGAIN; either way the sender drops and
counts instead of waiting. The kernel keeps message boundaries, so there is no framing
and no reconnect logic; a restarted worker simply binds the same address again.

Two kinds of message: rows of samples, and (every few seconds, and on every policy
change) the drift blocks of the policies the sending gateway serves, so the worker
needs no access to the policy files or ConfigMap itself.

The address derives from the drift folder, so the supervisor, its gateway workers and
the drift worker agree on it without passing it around. On Linux it lives in the
abstract namespace (no file to clean up, no path-length limit); elsewhere it is a
socket file in the drift folder.
"""

from __future__ import annotations

import hashlib
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Address = str | bytes
# Well below the default socket send buffer (208 KiB), so one datagram always fits.
MAX_DATAGRAM = 60_000
WIRE_VERSION = 1


def worker_address(drift_dir: str | Path) -> Address:
    """Where the drift worker of `drift_dir` receives samples."""
    folder = Path(drift_dir).resolve()
    if sys.platform.startswith("linux"):
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:20]
        return b"\0switchyard-drift-" + digest.encode()
    return str(folder / "worker.sock")


def sender_socket() -> socket.socket:
    """An unbound, non-blocking datagram socket for `sendto` to the worker."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def receiver_socket(address: Address, buffer_bytes: int = 4 * 1024 * 1024) -> socket.socket:
    """The worker's bound, non-blocking socket. Raises OSError if the address is taken
    (another worker serves this drift folder)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        # A bigger queue rides out an evaluation holding the worker's GIL (the kernel
        # may cap it at net.core.rmem_max; that only means earlier drops).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        if isinstance(address, str):
            Path(address).parent.mkdir(parents=True, exist_ok=True)
            Path(address).unlink(missing_ok=True)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def encode(
    route: str, variant: str, version: str, rows: Sequence[Any]
) -> Iterator[tuple[bytes, int]]:
    """(datagram, rows in it) carrying `rows` of one (route, variant, version), each
    within MAX_DATAGRAM; a single row too large to fit any datagram is left out."""
    head = orjson.dumps({"v": WIRE_VERSION, "route": route, "variant": variant, "version": version})
    prefix = head[:-1] + b',"rows":['
    budget = MAX_DATAGRAM - len(prefix) - 2
    chunk: list[bytes] = []
    size = 0
    for row in rows:
        encoded = orjson.dumps(row)
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
class Rows:
    """Samples of one route, variant and model version."""

    route: str
    variant: str
    version: str
    rows: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Config:
    """The drift blocks of the policies a gateway process serves (see `config.py`)."""

    digest: str
    routes: list[dict[str, Any]]


def encode_config(routes: Sequence[Mapping[str, Any]]) -> bytes:
    """A config datagram; its digest lets the worker skip configs it already has."""
    body = orjson.dumps(list(routes), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(body).hexdigest()[:16]
    return b'{"v":%d,"kind":"config","digest":"%s","routes":%s}' % (
        WIRE_VERSION,
        digest.encode(),
        body,
    )


def decode(datagram: bytes) -> Rows | Config | None:
    """The message in a datagram, or None if it is not one of ours."""
    try:
        message = orjson.loads(datagram)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("v") != WIRE_VERSION:
        return None
    if message.get("kind") == "config":
        routes = message.get("routes")
        if not isinstance(routes, list):
            return None
        return Config(str(message.get("digest", "")), [r for r in routes if isinstance(r, dict)])
    route, variant, version = message.get("route"), message.get("variant"), message.get("version")
    rows = message.get("rows")
    if not (isinstance(route, str) and isinstance(variant, str) and isinstance(version, str)):
        return None
    if not isinstance(rows, list):
        return None
    return Rows(route, variant, version, [r for r in rows if isinstance(r, dict)])
