"""Which variant serves a request: a pure function of snapshot, request head and RNG.

Sticky assignment hashes the key with CRC-32 (stable across processes and machines,
unlike `hash()`), salted with the route name, onto the route's cumulative weights. So
every replica agrees on a user's variant without shared state, and raising a canary's
weight only moves users *into* the canary band: nobody already in it flips back.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from gateway.dataplane.snapshot import Route, RuntimeSnapshot, Variant
from gateway.errors import Unavailable, UnknownRoute

_HASH_SPACE = float(1 << 32)


# Not frozen: frozen dataclasses pay object.__setattr__ per field, and these are built
# per request. Treat them as immutable all the same.
@dataclass(slots=True)
class RequestHead:
    """What routing may look at: the route asked for, headers and the parsed body.

    Header names are lower-case bytes, as the data plane's parser stores them.
    """

    route: str
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: Mapping[str, Any] | None = None
    # The headers as a dict (lower-case name -> value), when the caller already has one:
    # lookups are then O(1) instead of a scan. The data plane passes it.
    fields: Mapping[bytes, bytes] | None = None


@dataclass(slots=True)
class Decision:
    route: Route
    variant: Variant
    reason: str  # "override", "sticky", "weighted" or "single"
    order: tuple[Variant, ...]  # the chosen variant, then the fallbacks to try
    sticky_key: str | None = None


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a header; `name` must be lower-case."""
    for key, value in headers:
        if key == name:
            return value
    return None


def sticky_key(route: Route, head: RequestHead) -> str | None:
    sticky = route.sticky
    if sticky is None:
        return None
    if sticky.source == "header":
        fields = head.fields
        raw = (
            fields.get(sticky.key_bytes)
            if fields is not None
            else header_value(head.headers, sticky.key_bytes)
        )
        # UTF-8, so the same id hashes alike whether it comes in a header or the body.
        return raw.decode("utf-8", "replace") if raw else None
    if head.body is None:
        return None
    value = head.body.get(sticky.key)
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def sticky_point(route: Route, key: str) -> float:
    """Where a sticky key lands on [0, total_weight)."""
    return crc32(key.encode(), route.salt_crc) / _HASH_SPACE * route.total_weight


def decide(snapshot: RuntimeSnapshot, head: RequestHead, rng: random.Random) -> Decision:
    route = snapshot.routes.get(head.route)
    if route is None:
        raise UnknownRoute(head.route)
    if route.unavailable is not None:
        raise Unavailable(route.unavailable, route=route.name)
    variants = route.variants
    key: str | None = None
    chosen: int | None = None
    reason = "single"
    fields = head.fields
    for override in route.overrides:
        for name, value in override.headers:
            got = fields.get(name) if fields is not None else header_value(head.headers, name)
            if got != value:
                break
        else:
            chosen, reason = override.variant, "override"
            break
    if chosen is None:
        if len(variants) == 1:
            chosen = 0
        else:
            key = sticky_key(route, head)
            if key is not None:
                point, reason = sticky_point(route, key), "sticky"
            else:
                point, reason = rng.random() * route.total_weight, "weighted"
            chosen = min(bisect_right(route.cumulative, point), len(variants) - 1)
    primary = variants[chosen]
    if route.fallback:
        order = (primary, *(variants[i] for i in route.fallback if i != chosen))
    else:
        order = (primary,)
    return Decision(route, primary, reason, order, key)
