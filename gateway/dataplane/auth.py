"""Optional client API keys, each with its own rate limit, quotas and budgets.

With `--api-keys FILE` every data-plane request must carry a key the file lists, as
`Authorization: Bearer <key>` (what the openai SDK sends from `api_key=`) or
`x-api-key: <key>`. A missing or unknown key is answered 401, a key over its rate or a
limit 429 with `Retry-After`; both in the error shape of the front the client speaks.
Without the option the data plane holds no `ApiKeys` at all and pays one `is None` test.

The file is JSON (the data plane imports no YAML), re-read when it changes:

    {"keys": [
      {"name": "team-a", "key": "sk-team-a-...", "rate": 20, "burst": 40,
       "tenant": "acme", "priority": "high",
       "limits": [{"route": "*", "rpm": 600, "tpm": 200000,
                   "budget": {"day": 50, "month": 1000}}]},
      {"name": "batch", "sha256": "<hex digest of the key>", "rate": 200}
    ],
     "tenants": {"acme": {"limits": [{"route": "chat", "tpm": 1000000}]}},
     "prices": [{"route": "chat", "prompt": 0.5, "completion": 1.5},
                {"route": "chat", "version": "7", "prompt": 0.25, "completion": 1.0}],
     "default_max_tokens": 256}

`rate` is requests per second (omitted: unlimited), `burst` the bucket size (default:
`rate`, at least 1); both per process. `limits` (per key, and per tenant for all its
keys together) count requests (`rpm`) and prompt + completion tokens (`tpm`) per
`window` seconds (default 60), and spend in USD per UTC day and month (`budget`), at
the `prices` (USD per 1M tokens, per route or route and registry version); see
`gateway.dataplane.quota`. `priority` is an integer 0..9 or low (0), normal (1, the
default), high (2). A `sha256` entry keeps the key itself out of the file. Keys are
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
from typing import Any, TypeGuard

import orjson

from gateway.dataplane.flow import LEVELS
from gateway.dataplane.http.wire import Request
from gateway.dataplane.quota import (
    DAY,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PRIORITY,
    MONTH,
    RPM,
    TPM,
    KeyState,
    Meter,
    Price,
    Quotas,
)
from gateway.errors import AuthRejected, QuotaExceeded, QuotaStoreDown
from gateway.observability.flow_metrics import PRIORITY_NAMES
from gateway.observability.quota_metrics import PICO, QuotaMetrics

__all__ = [
    "ApiKeys",
    "AuthRejected",
    "KeyState",
    "KeysFile",
    "KeysFileError",
    "MissingKey",
    "QuotaExceeded",
    "QuotaStoreDown",
    "RateLimited",
    "UnknownKey",
    "parse_file",
    "parse_keys",
]

log = logging.getLogger("switchyard.auth")

RECHECK_EVERY = 2.0  # seconds between looks at the keys file's modification time
_KEY_PREFIXES = (b"authorization:", b"x-api-key:")
_TOP_FIELDS = frozenset({"keys", "tenants", "prices", "default_max_tokens"})
_ALLOWED_FIELDS = frozenset(
    {"name", "key", "sha256", "rate", "burst", "tenant", "priority", "limits"}
)
_TENANT_FIELDS = frozenset({"limits"})
_LIMIT_FIELDS = frozenset({"route", "rpm", "tpm", "budget", "window"})
_BUDGET_FIELDS = frozenset({"day", "month"})
_PRICE_FIELDS = frozenset({"route", "version", "prompt", "completion"})
DEFAULT_WINDOW = 60.0  # seconds of an rpm / tpm window


class KeysFileError(ValueError):
    """The keys file cannot be used; the message says which entry and why."""


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


def digest(key: bytes) -> bytes:
    """How a key is held and looked up: its SHA-256, raw bytes."""
    return hashlib.sha256(key).digest()


@dataclass
class KeysFile:
    """What a keys file defines: keys by digest, every meter by ident, prices."""

    keys: dict[bytes, KeyState]
    meters: dict[str, Meter] = field(default_factory=dict)
    prices: dict[tuple[str, str], Price] = field(default_factory=dict)
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    tenants: dict[str, tuple[Meter, ...]] = field(default_factory=dict)


def parse_keys(text: bytes, source: str) -> dict[bytes, KeyState]:
    """The keys a file's text defines, by digest; raises `KeysFileError` naming the entry."""
    return parse_file(text, source).keys


def parse_file(text: bytes, source: str) -> KeysFile:
    """Everything a keys file defines; raises `KeysFileError` naming the entry and field."""
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise KeysFileError(f"{source}: not valid JSON: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f'{source}: expected {{"keys": [...]}}')
    _known(data, _TOP_FIELDS, source, "top-level fields")
    meters: dict[str, Meter] = {}
    default_max = data.get("default_max_tokens", DEFAULT_MAX_TOKENS)
    if not _positive_int(default_max):
        raise KeysFileError(f"{source}: 'default_max_tokens' must be a positive integer")
    prices = _prices(data.get("prices"), source)
    tenants = _tenants(data.get("tenants"), source, meters)
    keys: dict[bytes, KeyState] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: keys[{i}]"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{where}: expected an object")
        _known(entry, _ALLOWED_FIELDS, where)
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
        tenant = entry.get("tenant", "")
        if not isinstance(tenant, str) or len(tenant) > 64 or ("tenant" in entry and not tenant):
            raise KeysFileError(f"{where}: 'tenant' must be a string of 1-64 characters")
        priority = _priority(entry.get("priority"), where)
        own = _limits(entry.get("limits"), where, "key", name, meters)
        keys[key_digest] = KeyState(
            name, rate, burst, tenant, priority, own + tenants.get(tenant, ())
        )
    return KeysFile(keys, meters, prices, default_max, tenants)


def _known(entry: dict[str, Any], allowed: frozenset[str], at: str, what: str = "fields") -> None:
    """Raise `KeysFileError` when `entry` has a field other than those `allowed`."""
    unknown = set(entry) - allowed
    if unknown:
        raise KeysFileError(
            f"{at}: unknown {what} {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _priority(value: object, where: str) -> int:
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, str) and value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < LEVELS:
        return value
    names = ", ".join(f"{n} ({v})" for n, v in PRIORITY_NAMES.items())
    raise KeysFileError(
        f"{where}: 'priority' must be an integer 0..{LEVELS - 1} (larger is served "
        f"first) or one of {names}"
    )


def _tenants(value: object, source: str, meters: dict[str, Meter]) -> dict[str, tuple[Meter, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KeysFileError(
            f'{source}: \'tenants\' must be an object {{"NAME": {{"limits": [...]}}}}'
        )
    found: dict[str, tuple[Meter, ...]] = {}
    for name, entry in value.items():
        where = f"{source}: tenant {name!r}"
        if not name or len(name) > 64:
            raise KeysFileError(f"{where}: a tenant's name must be 1-64 characters")
        if not isinstance(entry, dict):
            raise KeysFileError(f"{where}: expected an object with 'limits'")
        _known(entry, _TENANT_FIELDS, where)
        found[name] = _limits(entry.get("limits"), where, "tenant", name, meters)
    return found


def _limits(
    value: object, where: str, owner_kind: str, owner: str, meters: dict[str, Meter]
) -> tuple[Meter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise KeysFileError(f"{where}: 'limits' must be a list of {{route, rpm, tpm, budget}}")
    own: list[Meter] = []
    for i, entry in enumerate(value):
        at = f"{where}: limits[{i}]"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{at}: expected an object {{route, rpm, tpm, budget}}")
        _known(entry, _LIMIT_FIELDS, at)
        route = entry.get("route", "*")
        if not isinstance(route, str) or not route:
            raise KeysFileError(f"{at}.route: must be a route name or '*'")
        at = f"{where}: limits[{i}] (route {route!r})"
        window = entry.get("window", DEFAULT_WINDOW)
        if not _number(window) or not 1 <= window <= 86400:
            raise KeysFileError(f"{at}.window: must be a number of seconds, 1..86400")
        found: list[tuple[int, int]] = []
        for kind, name in ((RPM, "rpm"), (TPM, "tpm")):
            if name in entry:
                if not _positive_int(entry[name]):
                    raise KeysFileError(f"{at}.{name}: must be a positive integer")
                found.append((kind, entry[name]))
        budget = entry.get("budget")
        if budget is not None:
            if not isinstance(budget, dict) or not budget:
                raise KeysFileError(f"{at}.budget: must be an object {{day: USD, month: USD}}")
            _known(budget, _BUDGET_FIELDS, f"{at}.budget")
            for kind, name in ((DAY, "day"), (MONTH, "month")):
                if name in budget:
                    amount = budget[name]
                    if not _number(amount) or not 0 < amount < 1e9:
                        raise KeysFileError(
                            f"{at}.budget.{name}: must be a USD amount above 0 and below "
                            f"1e9, not {amount!r}"
                        )
                    found.append((kind, round(amount * PICO)))
        if not found:
            raise KeysFileError(f"{at}: give at least one of rpm, tpm, budget")
        for kind, limit in found:
            meter = Meter(
                owner_kind, owner, route, kind, limit, float(window) if kind < DAY else 0.0
            )
            if meter.ident in meters:
                raise KeysFileError(
                    f"{at}: a second {meter.ident.split(':')[3]} limit on route {route!r}"
                    + (f" with window {window:g}s" if kind < DAY else "")
                )
            meters[meter.ident] = meter
            own.append(meter)
    return tuple(own)


def _prices(value: object, source: str) -> dict[tuple[str, str], Price]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise KeysFileError(
            f"{source}: 'prices' must be a list of {{route, version?, prompt, completion}}"
        )
    prices: dict[tuple[str, str], Price] = {}
    for i, entry in enumerate(value):
        at = f"{source}: prices[{i}]"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{at}: expected an object {{route, version?, prompt, completion}}")
        _known(entry, _PRICE_FIELDS, at)
        route = entry.get("route")
        if not isinstance(route, str) or not route:
            raise KeysFileError(f"{at}.route: must be a route name or '*'")
        version = entry.get("version", "")
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or ("version" in entry and not version):
            raise KeysFileError(f'{at}.version: must be a registry version (e.g. "7")')
        if route == "*" and version:
            raise KeysFileError(f"{at}.version: the '*' price applies to every version")
        at = f"{at} (route {route!r}" + (f", version {version!r})" if version else ")")
        per_token = []
        for name in ("prompt", "completion"):
            amount = entry.get(name)
            if not _number(amount) or not 0 <= amount < 1e6:
                raise KeysFileError(f"{at}.{name}: must be USD per 1M tokens, 0 or more")
            pico = round(amount * 1_000_000)
            if abs(amount * 1_000_000 - pico) > 1e-6:
                raise KeysFileError(f"{at}.{name}: at most 6 decimals (USD per 1M tokens)")
            per_token.append(pico)
        if (route, version) in prices:
            raise KeysFileError(f"{at}: a second price for the same route and version")
        prices[(route, version)] = Price(per_token[0], per_token[1])
    return prices


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
    if not _number(value):
        raise KeysFileError(f"{where}: {what!r} must be a number")
    if not 0 < value < math.inf:
        raise KeysFileError(f"{where}: {what!r} must be positive")
    return float(value)


class ApiKeys:
    """The keys in force, checked per request; follows changes of the file."""

    def __init__(
        self,
        path: str,
        counts: dict[tuple[str, str], int],
        quotas: Quotas | None = None,
    ) -> None:
        self.path = Path(path)
        # (key name, outcome) -> requests; the metrics render it ("" for no/unknown key).
        self.counts = counts
        # Every key's quotas and budgets, and how this process spends them.
        self.quotas = quotas if quotas is not None else Quotas(QuotaMetrics())
        self._stamp = self._file_stamp()
        self.file = parse_file(self._read(), str(self.path))
        self.keys = self.file.keys
        self._install(self.file)
        self._next_check = 0.0
        self.problem = ""  # why the file on disk is not in force ("" when it is)

    def _install(self, parsed: KeysFile) -> None:
        self.quotas.install(
            list(parsed.keys.values()), parsed.meters, parsed.prices, parsed.default_max_tokens
        )

    def by_name(self, name: str) -> KeyState | None:
        for state in self.keys.values():
            if state.name == name:
                return state
        return None

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
            parsed = parse_file(self._read(), str(self.path))
        except KeysFileError as exc:
            self.problem = str(exc)
            log.error("api keys: %s; keeping the %d keys in force", exc, len(self.keys))
            return False
        self.problem = ""
        fresh = parsed.keys
        old = self.keys
        for key_digest, state in fresh.items():
            kept = old.get(key_digest)
            if kept is not None and kept.name == state.name and kept.rate == state.rate:
                state.tokens, state.updated = min(kept.tokens, state.burst), kept.updated
        self._install(parsed)
        self.file = parsed
        self.keys = fresh
        log.info("api keys: %d keys in force (reloaded from %s)", len(fresh), self.path)
        return True

    def check(self, request: Request, now: float) -> KeyState:
        """Admit the request or raise `AuthRejected`; strips the key from what goes
        upstream. The checked key rides on the request (`request.key`): its quotas are
        charged once the route is decided (`gateway.dataplane.proxy`)."""
        state = request.key = self.admit(request.fields or {}, now)
        request.forward = _without_key_headers(request.forward)
        return state

    def admit(self, fields: Mapping[bytes, bytes], now: float) -> KeyState:
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
        return state

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
