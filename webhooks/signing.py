"""Standard Webhooks signatures: `v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{timestamp}.{body}`
under the secret's bytes (the base64 after `whsec_`). During a rotation's grace period the header
carries one signature per secret, space-separated, so a receiver with either one verifies."""

from __future__ import annotations

import base64
import hashlib
import hmac

from gateway.webhook_secrets import SECRET_PREFIX


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secrets: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (its own timestamp, the message's id)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }
