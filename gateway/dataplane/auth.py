"""Optional client API keys, each with its own token-bucket rate limit.

With `--api-keys FILE` every data-plane request must carry a key the file lists, as
`Authorization: Bearer <key>` (what the openai SDK sends from `api_key=`) or
`x-api-key: <key>`. A missing or unknown key is answered 401, a key over its rate 429
with `Retry-After`; both in the error shape of the front the client speaks. Without the
option the data plane holds no `ApiKeys` at all and pays one `is None` test.

The file is JSON (the data plane imports no YAML), re-read when it changes:

    {"keys": [
      {"name": "team-a", "key": "sk-team-a-...", "rate": 20, "burst": 40},
      {"name": "batch", "sha256": "<hex digest of the key>", "rate": 200}
    ]}

`rate` is requests per second (omitted: unlimited), `burst` the bucket size (default:
`rate`, at least 1). A `sha256` entry keeps the key itself out of the file. Keys are
held only as SHA-256 digests, looked up by the digest of what the client sent, never
logged, never forwarded upstream (the backend sees neither header), and label metrics
by `name` only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.dataplane.http.wire import Request
from gateway.errors import GatewayError

log = logging.getLogger("switchyard.auth")

RECHECK_EVERY = 2.0  # seconds between looks at the keys file's modification time
_KEY_PREFIXES = (b"authorization:", b"x-api-key:")
_ALLOWED_FIELDS = frozenset({"name", "key", "sha256", "rate", "burst"})


class KeysFileError(ValueError):
    """The keys file cannot be used; the message says which entry and why."""


class AuthRejected(GatewayError):
    """A request refused by key checking; `extra` holds the response's extra headers."""

    extra = b""


class MissingKey(AuthRejected):
    status = 401
    type = "authentication_error"
    code = "missing_api_key"
    extra = b"www-authenticate: Bearer\r\n"


class UnknownKey(AuthRejected):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    extra = b"www-authenticate: Bearer\r\n"


class RateLimited(AuthRejected):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.extra = b"retry-after: %d\r\n" % retry_after


@dataclass(eq=False, slots=True)
class KeyState:
    """One key's identity and token bucket (the key itself is not kept)."""

    name: str
    rate: float | None  # tokens per second; None: unlimited
    burst: float
    tokens: float = 0.0
    updated: float = field(default=-math.inf)

    def take(self, now: float) -> float:
        """Spend one token; 0.0 when allowed, else the seconds until one is there."""
        rate = self.rate
        if rate is None:
            return 0.0
        tokens = self.tokens + (now - self.updated) * rate
        if tokens > self.burst:
            tokens = self.burst
        self.updated = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


def digest(key: bytes) -> bytes:
    """How a key is held and looked up: its SHA-256, raw bytes."""
    return hashlib.sha256(key).digest()


def parse_keys(text: bytes, source: str) -> dict[bytes, KeyState]:
    """The keys a file's text defines, by digest; raises `KeysFileError` naming the entry."""
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise KeysFileError(f"{source}: not valid JSON: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f'{source}: expected {{"keys": [...]}}')
    keys: dict[bytes, KeyState] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: keys[{i}]"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{where}: expected an object")
        unknown = set(entry) - _ALLOWED_FIELDS
        if unknown:
            raise KeysFileError(f"{where}: unknown fields {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise KeysFileError(f"{where}: 'name' must be a string of 1-64 characters")
        if name in names:
            raise KeysFileError(f"{where}: name {name!r} is used twice")
        names.add(name)
        where = f"{source}: key {name!r}"
        key_digest = _entry_digest(entry, where)
        if key_digest in keys:
            raise KeysFileError(f"{where}: the same key as {keys[key_digest].name!r}")
        rate = _positive(entry.get("rate"), where, "rate")
        burst = _positive(entry.get("burst"), where, "burst")
        if burst is None:
            burst = max(1.0, rate) if rate is not None else 1.0
        elif burst < 1:
            raise KeysFileError(f"{where}: 'burst' must be at least 1")
        keys[key_digest] = KeyState(name, rate, burst, tokens=burst)
    return keys


def _entry_digest(entry: dict[str, Any], where: str) -> bytes:
    plain, hashed = entry.get("key"), entry.get("sha256")
    if (plain is None) == (hashed is None):
        raise KeysFileError(f"{where}: give exactly one of 'key' and 'sha256'")
    if plain is not None:
        if not isinstance(plain, str) or len(plain) < 16 or not plain.isprintable():
            raise KeysFileError(f"{where}: 'key' must be a printable string of 16+ characters")
        if " " in plain:
            raise KeysFileError(f"{where}: 'key' must not contain spaces")
        return digest(plain.encode())
    try:
        raw = bytes.fromhex(hashed) if isinstance(hashed, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeysFileError(f"{where}: 'sha256' must be 64 hex digits")
    return raw


def _positive(value: object, where: str, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KeysFileError(f"{where}: {what!r} must be a number")
    if not 0 < value < math.inf:
        raise KeysFileError(f"{where}: {what!r} must be positive")
    return float(value)


class ApiKeys:
    """The keys in force, checked per request; follows changes of the file."""

    def __init__(self, path: str, counts: dict[tuple[str, str], int]) -> None:
        self.path = Path(path)
        # (key name, outcome) -> requests; the metrics render it ("" for no/unknown key).
        self.counts = counts
        self._stamp = self._file_stamp()
        self.keys = parse_keys(self._read(), str(self.path))
        self._next_check = 0.0

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise KeysFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> bool:
        """Re-read the file if it changed; a bad file keeps the keys in force (logged)."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            fresh = parse_keys(self._read(), str(self.path))
        except KeysFileError as exc:
            log.error("api keys: %s; keeping the %d keys in force", exc, len(self.keys))
            return False
        old = self.keys
        for key_digest, state in fresh.items():
            kept = old.get(key_digest)
            if kept is not None and kept.name == state.name and kept.rate == state.rate:
                state.tokens, state.updated = min(kept.tokens, state.burst), kept.updated
        self.keys = fresh
        log.info("api keys: %d keys in force (reloaded from %s)", len(fresh), self.path)
        return True

    def check(self, request: Request, now: float) -> None:
        """Admit the request or raise `AuthRejected`; strips the key from what goes
        upstream."""
        self.admit(request.fields or {}, now)
        request.forward = _without_key_headers(request.forward)

    def admit(self, fields: Mapping[bytes, bytes], now: float) -> None:
        """Admit a request with these (lower-cased) header or gRPC metadata fields, or
        raise `AuthRejected`. The caller keeps the key from going upstream."""
        if now >= self._next_check:
            self._next_check = now + RECHECK_EVERY
            self.refresh()
        given = fields.get(b"authorization")
        if given is not None:
            scheme, _, token = given.partition(b" ")
            given = token.strip() if scheme.lower() == b"bearer" else None
        if not given:
            given = fields.get(b"x-api-key")
        if not given:
            self._count("", "missing")
            raise MissingKey(
                "this gateway requires an API key: send 'Authorization: Bearer <key>' "
                "or 'x-api-key: <key>'"
            )
        state = self.keys.get(digest(given))
        if state is None:
            self._count("", "unknown")
            raise UnknownKey("the API key is not valid for this gateway")
        wait = state.take(now)
        if wait > 0.0:
            self._count(state.name, "rate_limited")
            raise RateLimited(
                f"API key '{state.name}' is over its limit of {state.rate:g} requests/s "
                f"(burst {state.burst:g}); retry after {wait:.2f}s",
                retry_after=max(1, math.ceil(wait)),
            )
        self._count(state.name, "accepted")

    def _count(self, name: str, outcome: str) -> None:
        key = (name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1


def _without_key_headers(forward: bytes) -> bytes:
    """The upstream-bound header lines (names lower-cased) minus the client's key."""
    if b"authorization:" not in forward and b"x-api-key:" not in forward:
        return forward
    return b"\r\n".join(
        line for line in forward.split(b"\r\n") if not line.startswith(_KEY_PREFIXES)
    )
