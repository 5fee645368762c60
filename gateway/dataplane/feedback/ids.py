"""Signed feedback ids: the id itself says route, variant, version and when it was served.

Any process of the fleet attributes feedback for such an id without a lookup: it checks
the MAC with the fleet secret, reads the payload and the age. Format, version 1 (URL-safe
ASCII, 60 to 512 characters):

    fb1.<payload>.<mac>

- payload: base64url, unpadded, of
    6 bytes   served at: Unix time in milliseconds, big-endian
    8 bytes   nonce: 4 random bytes per process, then a 32-bit counter
    route, variant, version: each one length byte, then that many bytes of UTF-8
- mac: base64url, unpadded, of the first 16 bytes of HMAC-SHA256(K, "fb1." + payload)
  where K = HMAC-SHA256(fleet secret, "switchyard feedback id v1"): the secret is
  never used as-is, so it may sign other things under other labels.

Version 2 (routes with a `ground_truth` block): the same request's id once its response
is whole, also carrying what the version predicted, so a label can be joined with the
prediction by any process, with no store:

    fb2.<payload>.<prediction>.<mac>

- payload: exactly the version 1 payload of the request (the same base64url text);
- prediction: base64url, unpadded, of
    1 byte    flags: bit 0 set when a score follows
    8 bytes   score (only with bit 0): IEEE 754 double, big-endian, in [0, 1]
    class: one length byte, then that many bytes of UTF-8 (at most 64)
- mac: as for version 1, over "fb2." + payload + "." + prediction.

Both versions of one request share one claim key: the version 1 MAC (base64url) of its
payload, so feedback by either id counts once. A verifier recomputes it for a fb2 id.

A name longer than 255 bytes cannot be encoded: that request gets no signed id and falls
back to the per-process log (`log.ExposureLog`). The MAC is checked (in constant time)
before any byte of the payload is parsed. Its canonical text is the key under which the
first feedback claims the id (`claims`).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import struct
import time
from typing import Final

from gateway.errors import BadRequest, RequestExpired, UnknownRequest

SIGNED_PREFIX: Final = b"fb1."
PREDICTION_PREFIX: Final = b"fb2."
MAX_SIGNED_ID: Final = 512
MAX_PREDICTION_ID: Final = 640  # a version 1 id plus at most 100 characters
MAX_PREDICTED_BYTES: Final = 64
_LABEL: Final = b"switchyard feedback id v1"
_MAC_BYTES: Final = 16
MAC_TEXT: Final = 22  # base64url characters of 16 bytes, unpadded (a claim key's length)
_MAC_TEXT: Final = MAC_TEXT
_FIXED: Final = 14  # served at (6) + nonce (8)
_BLOCK: Final = 64  # SHA-256's block size, for the precomputed HMAC pads
_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
_FROM_URL: Final = bytes.maketrans(b"-_", b"+/")
_B64URL: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_NAMES: Final = 4096  # cached (route, variant, version) encodings; cleared beyond


class SignedFeedback:
    """What a verified id says: who served it and when; `key` is its claim key."""

    def __init__(
        self,
        route: str,
        variant: str,
        version: str,
        served_at: float,
        key: bytes,
        predicted: str | None = None,
        score: float | None = None,
    ):
        self.route = route
        self.variant = variant
        self.version = version
        self.served_at = served_at  # Unix time, seconds
        self.key = key
        # What the version predicted (a fb2 id; None for fb1) and its positive score.
        self.predicted = predicted
        self.score = score


def is_signed(rid: bytes) -> bool:
    """Whether `rid` looks like a signed id of either version."""
    return rid.startswith(SIGNED_PREFIX) or rid.startswith(PREDICTION_PREFIX)


class FeedbackIds:
    """Mints and verifies signed ids under one fleet secret (one per process)."""

    def __init__(self, secret: bytes) -> None:
        key = hmac.digest(secret, _LABEL, "sha256").ljust(_BLOCK, b"\0")
        # HMAC with its two pads hashed once: each MAC then costs two copies and two
        # updates (~0.6 us) instead of hmac.digest's key schedule (~1.3 us).
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._nonce = os.urandom(4)
        self._counter = 0
        self._names: dict[tuple[str, str, str], bytes] = {}

    def _mac(self, text: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(text)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]

    def sign(self, text: bytes) -> bytes:
        """The fleet's 16-byte MAC of `text`, for the gateway's other signed tokens
        (session tokens, `dataplane.session_tokens`): their texts start with their own
        prefix, never "fb1.", so no token of one kind verifies as another."""
        return self._mac(text)

    def mint(self, route: str, variant: str, version: str) -> bytes:
        """A signed id for a request of `route` served now by `variant` at `version`,
        or b"" when a name is too long to encode (the request keeps a plain id)."""
        key = (route, variant, version)
        names = self._names.get(key)
        if names is None:
            names = _encode_names(key)
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()  # reloads renamed things; never grows without bound
            self._names[key] = names
        if not names:
            return b""
        counter = self._counter = (self._counter + 1) & 0xFFFFFFFF
        payload = b"".join(
            (
                int(time.time() * 1000).to_bytes(6, "big"),
                self._nonce,
                counter.to_bytes(4, "big"),
                names,
            )
        )
        text = SIGNED_PREFIX + _b64(payload)
        return text + b"." + _b64(self._mac(text))

    def with_prediction(self, fid: bytes, predicted: str, score: float | None) -> bytes:
        """The version 2 id of the request whose version 1 id is `fid`, carrying
        `predicted` (at most 64 bytes of UTF-8) and `score`; b"" when it cannot be
        (no fid, a class too long). Called once per captured response."""
        raw = predicted.encode()
        if not fid or len(raw) > MAX_PREDICTED_BYTES:
            return b""
        if score is None:
            extension = b"\0" + bytes((len(raw),)) + raw
        else:
            extension = b"\x01" + struct.pack(">d", score) + bytes((len(raw),)) + raw
        payload = fid[len(SIGNED_PREFIX) : fid.rfind(b".")]
        text = PREDICTION_PREFIX + payload + b"." + _b64(extension)
        return text + b"." + _b64(self._mac(text))

    def verify(self, fid: bytes, now: float, window: float) -> SignedFeedback:
        """What `fid` says, if this fleet signed it and it is younger than `window`
        seconds at Unix time `now`. Raises BadRequest (malformed), UnknownRequest
        (signature) or RequestExpired."""
        if fid.startswith(PREDICTION_PREFIX):
            return self._verify_prediction(fid, now, window)
        shown = _shown(fid)
        if len(fid) > MAX_SIGNED_ID:
            raise _malformed(shown, f"it is {len(fid)} characters long, at most {MAX_SIGNED_ID}")
        if not fid.startswith(SIGNED_PREFIX):
            raise _malformed(shown, "it does not start with 'fb1.' or 'fb2.'")
        parts = fid[len(SIGNED_PREFIX) :].split(b".")
        if len(parts) != 2:
            raise _malformed(shown, "it is not 'fb1.<payload>.<mac>'")
        payload_text, mac_text = parts
        if not payload_text:
            raise _malformed(shown, "its payload is empty")
        if not _B64URL.issuperset(payload_text) or not _B64URL.issuperset(mac_text):
            raise _malformed(shown, "it holds characters other than base64url")
        expected = self._check_mac(shown, fid[: len(SIGNED_PREFIX) + len(payload_text)], mac_text)
        try:
            payload = _unb64(payload_text)
            route, variant, version = _decode_names(payload)
        except (ValueError, binascii.Error) as exc:
            # Signed by the fleet yet unreadable: only a gateway bug gets here.
            raise _malformed(shown, f"its payload does not decode ({exc})") from None
        served_at = _served_at(shown, payload, now, window)
        return SignedFeedback(route, variant, version, served_at, _b64(expected))

    def _check_mac(self, shown: str, text: bytes, mac_text: bytes) -> bytes:
        """The MAC of `text`, if `mac_text` is it (in constant time); else the error."""
        if len(mac_text) != _MAC_TEXT:
            raise _malformed(shown, f"its signature is {len(mac_text)} characters, not 22")
        expected = self._mac(text)
        if not hmac.compare_digest(expected, _unb64(mac_text)):
            raise UnknownRequest(
                f"request {shown!r} is unknown: its signature does not match: not issued by "
                "this fleet, or the replicas do not share the fleet secret "
                "(--fleet-secret-file or SWITCHYARD_FLEET_SECRET)",
                param="request_id",
            )
        return expected

    def _verify_prediction(self, fid: bytes, now: float, window: float) -> SignedFeedback:
        shown = _shown(fid)
        if len(fid) > MAX_PREDICTION_ID:
            raise _malformed(
                shown, f"it is {len(fid)} characters long, at most {MAX_PREDICTION_ID}"
            )
        parts = fid[len(PREDICTION_PREFIX) :].split(b".")
        if len(parts) != 3:
            raise _malformed(shown, "it is not 'fb2.<payload>.<prediction>.<mac>'")
        payload_text, extension_text, mac_text = parts
        if not payload_text or not extension_text:
            raise _malformed(shown, "its payload or prediction is empty")
        if not all(_B64URL.issuperset(p) for p in parts):
            raise _malformed(shown, "it holds characters other than base64url")
        self._check_mac(shown, fid[: -len(mac_text) - 1], mac_text)
        try:
            payload = _unb64(payload_text)
            route, variant, version = _decode_names(payload)
            predicted, score = _decode_prediction(_unb64(extension_text))
        except (ValueError, binascii.Error, struct.error) as exc:
            raise _malformed(shown, f"its payload does not decode ({exc})") from None
        served_at = _served_at(shown, payload, now, window)
        # The claim key of the request's version 1 id: either id claims the same.
        key = _b64(self._mac(SIGNED_PREFIX + payload_text))
        return SignedFeedback(route, variant, version, served_at, key, predicted, score)


def _served_at(shown: str, payload: bytes, now: float, window: float) -> float:
    """When the request was served (Unix time), if within `window` of `now`."""
    served_at = int.from_bytes(payload[:6], "big") / 1000.0
    age = now - served_at
    if age > window:
        raise RequestExpired(
            f"request {shown!r} expired: it was served {age:.0f}s ago and feedback is "
            f"accepted for {window:g}s",
            param="request_id",
        )
    return served_at


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    """base64url (unpadded, characters already checked) -> bytes; binascii.Error if the
    length cannot be base64."""
    return binascii.a2b_base64(text.translate(_FROM_URL) + b"=" * (-len(text) % 4))


def _encode_names(names: tuple[str, str, str]) -> bytes:
    parts: list[bytes] = []
    for name in names:
        raw = name.encode()
        if len(raw) > 255:
            return b""
        parts.append(bytes((len(raw),)))
        parts.append(raw)
    return b"".join(parts)


def _decode_names(payload: bytes) -> tuple[str, str, str]:
    if len(payload) < _FIXED + 3:
        raise ValueError(f"{len(payload)} bytes, at least {_FIXED + 3}")
    names: list[str] = []
    at = _FIXED
    for _ in range(3):
        if at >= len(payload):
            raise ValueError("truncated")
        n = payload[at]
        end = at + 1 + n
        if end > len(payload):
            raise ValueError("truncated")
        names.append(payload[at + 1 : end].decode())  # UnicodeDecodeError is a ValueError
        at = end
    if at != len(payload):
        raise ValueError(f"{len(payload) - at} bytes after the version")
    return names[0], names[1], names[2]


def _decode_prediction(data: bytes) -> tuple[str, float | None]:
    if not data:
        raise ValueError("empty prediction")
    flags, at = data[0], 1
    score: float | None = None
    if flags & 1:
        (score,) = struct.unpack(">d", data[1:9])
        at = 9
    if at >= len(data) or at + 1 + data[at] != len(data):
        raise ValueError("truncated prediction")
    return data[at + 1 :].decode(), score


def _shown(fid: bytes) -> str:
    text = fid.decode("utf-8", "replace")
    return text if len(text) <= 80 else text[:77] + "..."


def _malformed(shown: str, why: str) -> BadRequest:
    return BadRequest(
        f"request id {shown!r} is not a valid signed feedback id: {why}; send the "
        "x-request-id or x-switchyard-feedback-id response header as it came",
        param="request_id",
    )
