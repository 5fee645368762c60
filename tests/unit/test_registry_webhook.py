"""MLflow webhook deliveries: genuine and fresh ones pass, anything else is refused."""

from __future__ import annotations

import json

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from gateway.controlplane.registry.webhook import AliasEvent, WebhookRejected, sign, verify

BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-11-26T05:00:00+00:00",
        "data": {"name": "chat", "alias": "champion", "version": "2"},
    }
).encode()
NOW = 1_800_000_000.0


def headers(signature: str, timestamp: float = NOW) -> dict[str, str]:
    return {
        "x-mlflow-signature": signature,
        "x-mlflow-timestamp": str(int(timestamp)),
        "x-mlflow-delivery-id": "d-1",
    }


def test_signature_matches_mlflows_own() -> None:
    ours = sign("s3cret", "d-1", str(int(NOW)), BODY)
    assert ours == _generate_hmac_signature("s3cret", "d-1", str(int(NOW)), BODY.decode())


def test_a_genuine_delivery_names_the_alias() -> None:
    event = verify("s3cret", headers(sign("s3cret", "d-1", str(int(NOW)), BODY)), BODY, NOW + 5)
    assert event == AliasEvent("model_version_alias", "created", "chat", "champion")
    assert event.moves_alias


@pytest.mark.parametrize(
    ("secret", "timestamp", "message"),
    [
        ("wrong", NOW, "signature does not match"),
        ("s3cret", NOW - 3600, "old; more than 300s"),
    ],
)
def test_forged_or_replayed_deliveries_are_refused(
    secret: str, timestamp: float, message: str
) -> None:
    signature = sign(secret, "d-1", str(int(timestamp)), BODY)
    with pytest.raises(WebhookRejected, match=message):
        verify("s3cret", headers(signature, timestamp), BODY, NOW)


def test_missing_headers_are_refused() -> None:
    with pytest.raises(WebhookRejected, match="missing"):
        verify("s3cret", {}, BODY, NOW)
