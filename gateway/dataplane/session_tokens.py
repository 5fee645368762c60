"""Session tokens the gateway issues (a picker's `session: {key: issued}`): one signed
token pins a conversation to its canary variant and, through the session table, to its
endpoint, on any replica of the fleet.

A request of such a route without a token gets one, minted for the variant that serves
it, in the `x-switchyard-session` response header; the client sends it back in that
request header on its next turns (every response the route relays from a backend
carries the token in force, so echoing the last one received is always right). A valid
token keeps its variant for as long as that variant is in the route with a weight above
0 (a rollback that zeroes or removes a canary moves its sessions: they get a new token
for the variant that serves them), whatever the weights do otherwise: unlike a sticky
cohort's hash, raising a canary's weight moves no conversation mid-way. A header
override still wins (it names a variant on purpose). The endpoint pin is the session
table's (the session key is the token), with its idle `ttl`.

A token that does not verify (forged, damaged, of another route, signed with another
fleet secret) is not an error: the request is served as a new session, with a new token,
and counted `invalid` (switchyard_picker_sessions). Affinity is an optimisation, and a
400 would break every conversation in flight when the fleet secret rotates.

Format, version 1 (URL-safe ASCII): `ss1.<payload>.<mac>`

- payload: base64url, unpadded, of 6 bytes issue time (Unix milliseconds, big-endian),
  8 random bytes, then route and variant, each one length byte and that many bytes of
  UTF-8 (names over 255 bytes get no token: no session);
- mac: the fleet's 16-byte MAC of "ss1." + payload (`FeedbackIds.sign`: HMAC-SHA256
  under a key derived from the fleet secret, the one feedback ids use; their texts start
  with "fb1.", so neither kind of token verifies as the other). One process without a
  configured secret signs with a random one: its tokens hold on that process only.

The MAC is checked (in constant time) before the payload is read. Cost: a verify or a
mint is one HMAC (~1 us) and a base64 pass; a token verified once is remembered in the
decided pool's `PoolState.verified` (bounded by max_sessions), so a conversation's later
turns cost a dict read; a request of a route without issued sessions pays nothing.
"""

from __future__ import annotations

import binascii
import hmac
import os
import time
from collections.abc import Mapping
from typing import Final

from gateway.dataplane.decide import Decision
from gateway.dataplane.feedback.ids import FeedbackIds
from gateway.dataplane.snapshot import Variant

SESSION_HEADER: Final = b"x-switchyard-session"
PREFIX: Final = b"ss1."
MAX_TOKEN: Final = 1024  # longer headers are not tokens of ours: not even decoded
_MAC_TEXT: Final = 22  # base64url characters of a 16-byte MAC, unpadded
_FIXED: Final = 14  # issue time (6) + random (8)
_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URL: Final = bytes.maketrans(b"-_", b"+/")


class Pinned:
    """What `pin` found: the decision (its variant possibly the token's), the token in
    force (b"" for none: names too long), and whether the request's token was rejected."""

    __slots__ = ("decision", "rejected", "token")

    def __init__(self, decision: Decision, token: bytes, rejected: bool) -> None:
        self.decision = decision
        self.token = token
        self.rejected = rejected


def mint(signer: FeedbackIds, route: str, variant: str) -> bytes:
    """A new session token of `route` pinned to `variant`; b"" if a name is too long."""
    r = route.encode()
    v = variant.encode()
    if len(r) > 255 or len(v) > 255:
        return b""
    payload = b"".join(
        (
            int(time.time() * 1000).to_bytes(6, "big"),
            os.urandom(8),
            bytes((len(r),)),
            r,
            bytes((len(v),)),
            v,
        )
    )
    text = PREFIX + _b64(payload)
    return text + b"." + _b64(signer.sign(text))


def verify(signer: FeedbackIds, token: bytes, route: str) -> str | None:
    """The variant `token` pins, if this fleet signed it for `route`; None otherwise."""
    if len(token) > MAX_TOKEN or not token.startswith(PREFIX):
        return None
    dot = token.rfind(b".")
    if dot <= len(PREFIX) or len(token) - dot - 1 != _MAC_TEXT:
        return None
    text = token[:dot]
    # The MAC compared as text: one token has one spelling (base64's spare bits too).
    if not hmac.compare_digest(_b64(signer.sign(text)), token[dot + 1 :]):
        return None
    try:
        payload = _unb64(text[len(PREFIX) :])
    except (binascii.Error, ValueError):
        return None
    at = _FIXED
    if len(payload) < at + 2:
        return None
    n = payload[at]
    got_route = payload[at + 1 : at + 1 + n]
    at += 1 + n
    if got_route != route.encode() or at >= len(payload):
        return None
    n = payload[at]
    if at + 1 + n != len(payload):
        return None
    try:
        return payload[at + 1 :].decode()
    except UnicodeDecodeError:
        return None


def issues(variant: Variant) -> bool:
    """Whether `variant`'s picker issues session tokens."""
    picker = variant.picker
    return picker is not None and picker.session_issue


def pin(decision: Decision, fields: Mapping[bytes, bytes] | None, signer: FeedbackIds) -> Pinned:
    """The request's session token applied to `decision` (whose variant issues tokens):
    the token's variant serves it when that variant is in the route with a weight above
    0 and issues tokens too, unless a header override chose; otherwise a new token for
    the decided variant. See the module's text for what a bad token does."""
    route = decision.route
    sent = fields.get(SESSION_HEADER, b"") if fields is not None else b""
    if sent:
        picker = decision.variant.picker
        assert picker is not None  # pin is called for variants that issue
        pool = picker.pool
        name = pool.verified.get(sent)
        if name is None:
            name = verify(signer, sent, route.name)
            if name is not None:
                if len(pool.verified) >= pool.max_sessions:
                    pool.verified.clear()  # bounded; the tokens in use come back at once
                pool.verified[sent] = name
        if name is None:
            token = mint(signer, route.name, decision.variant.name)
            return Pinned(decision, token, True)
        if name == decision.variant.name or decision.reason == "override":
            # An override serves this one request elsewhere: the session keeps its pin.
            return Pinned(decision, sent, False)
        for variant in route.variants:
            if variant.name == name and variant.weight > 0 and issues(variant):
                # The fallbacks as `decide` orders them for a variant it chose.
                others = tuple(route.variants[i] for i in route.fallback)
                order = (variant, *(v for v in others if v is not variant))
                return Pinned(
                    Decision(route, variant, "session", order, decision.sticky_key),
                    sent,
                    False,
                )
        # Its variant is gone or out of the rotation: a new session where it is served.
    return Pinned(decision, mint(signer, route.name, decision.variant.name), False)


def header_line(token: bytes) -> bytes:
    """The response header line that hands the client its token."""
    return SESSION_HEADER + b": " + token + b"\r\n" if token else b""


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    """base64url, unpadded -> bytes; binascii.Error on other characters or lengths."""
    return binascii.a2b_base64(
        text.translate(_FROM_URL) + b"=" * (-len(text) % 4), strict_mode=True
    )
