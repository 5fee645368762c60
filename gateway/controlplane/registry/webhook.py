"""MLflow registry webhooks: verify the signature, then say which alias changed.

MLflow (3.3+) signs each delivery with HMAC-SHA256 over
`{delivery_id}.{timestamp}.{body}` and sends `X-MLflow-Signature: v1,<base64>`, with
the id and Unix timestamp in `X-MLflow-Delivery-Id` and `X-MLflow-Timestamp`. A
delivery older than `MAX_AGE` seconds is refused, so a captured request cannot be
replayed later. A verified alias event only *pokes* the resolver: the gateway still
reads the alias from the registry itself and never trusts a version in the payload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
MAX_AGE = 300.0
ALIAS_EVENTS = frozenset({("model_version_alias", "created"), ("model_version_alias", "deleted")})


class WebhookRejected(Exception):
    """The delivery is not a genuine, fresh MLflow webhook."""


@dataclass(frozen=True, slots=True)
class AliasEvent:
    """A verified delivery: which entity/action, and the model and alias it names."""

    entity: str
    action: str
    model: str
    alias: str

    @property
    def moves_alias(self) -> bool:
        """Whether this event can move traffic (an alias created or deleted)."""
        return (self.entity, self.action) in ALIAS_EVENTS


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> AliasEvent:
    """Check signature and age of one delivery; raises `WebhookRejected` if either fails."""
    signature = headers.get(SIGNATURE_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    delivery = headers.get(DELIVERY_HEADER, "")
    if not signature or not timestamp or not delivery:
        raise WebhookRejected("missing X-MLflow-Signature, -Timestamp or -Delivery-Id header")
    try:
        sent = float(timestamp)
    except ValueError:
        raise WebhookRejected("X-MLflow-Timestamp is not a Unix timestamp") from None
    if abs(now - sent) > MAX_AGE:
        raise WebhookRejected(f"delivery is {now - sent:.0f}s old; more than {MAX_AGE:.0f}s")
    expected = sign(secret, delivery, timestamp, body)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise WebhookRejected("signature does not match (check the webhook secret)")
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookRejected("body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookRejected("body is not a JSON object")
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    return AliasEvent(
        entity=str(payload.get("entity", "")),
        action=str(payload.get("action", "")),
        model=str(data.get("name", "")),
        alias=str(data.get("alias", "")),
    )
