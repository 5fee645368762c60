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
from typing import Any
from zlib import crc32

from gateway.dataplane.snapshot import Route, RuntimeSnapshot, Variant
from gateway.errors import Unavailable, UnknownRoute

_HASH_SPACE = float(1 << 32)


# Plain classes with a written-out __init__, not dataclasses: one of each is built per
# request, and mypyc compiles a written __init__ but leaves a dataclass's generated one
# interpreted (measured ~1.6k and ~2.2k instructions a construction, against ~0.1k).
# Treat them as immutable all the same.
class RequestHead:
    """What routing may look at: the route asked for, headers and the parsed body.

    Header names are lower-case bytes, as the data plane's parser stores them.
    """

    __slots__ = ("body", "fields", "headers", "route")

    def __init__(
        self,
        route: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: Mapping[str, Any] | None = None,
        fields: Mapping[bytes, bytes] | None = None,
    ) -> None:
        self.route = route
        self.headers = headers
        self.body = body
        # The headers as a dict (lower-case name -> value), when the caller already has
        # one: lookups are then O(1) instead of a scan. The data plane passes it.
        self.fields = fields

    def __repr__(self) -> str:
        return f"RequestHead(route={self.route!r}, headers={self.headers!r}, body={self.body!r})"


class Decision:
    __slots__ = ("order", "reason", "route", "sticky_key", "variant")

    def __init__(
        self,
        route: Route,
        variant: Variant,
        reason: str,
        order: tuple[Variant, ...],
        sticky_key: str | None = None,
    ) -> None:
        self.route = route
        self.variant = variant
        self.reason = reason  # "override", "sticky", "weighted", "single" or "session"
        self.order = order  # the chosen variant, then the fallbacks to try
        self.sticky_key = sticky_key

    def __repr__(self) -> str:
        return (
            f"Decision(route={self.route.name!r}, variant={self.variant.name!r}, "
            f"reason={self.reason!r}, sticky_key={self.sticky_key!r})"
        )


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
    order = route.orders[chosen]
    return Decision(route, order[0], reason, order, key)
