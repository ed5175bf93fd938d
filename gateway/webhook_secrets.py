"""Webhook signing secrets: made, sealed for the event log, opened again by the webhook service.

A Standard Webhooks secret must be kept so the sender can sign with it (a hash would not do), and
the event log keeps what it is given forever. So the gateway seals a new secret before it leaves
the process: it travels in the command and is stored in the event sealed, and only a process that
holds the deployment's key (TESSERA_URL_SIGNING_KEY: the gateway and the webhook service) can open
it. Sealing is `base.sealing` (AES-256-GCM under a key derived from the deployment's): `v2.` and
the sealed text.

Secrets sealed before that (`v1.`, an HMAC-SHA256 keystream with an HMAC tag, written by this
module until 2026-11-30) are still opened, never made: they are in event logs for good.

Per-job webhooks (`webhook` on a submit) are signed with one secret per user, derived from the
same key and the user's id, so nothing need be stored for them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

from base.sealing import Sealer, Unsealable

SECRET_PREFIX = "whsec_"
_V1 = b"v1"


class SealError(ValueError):
    """A sealed secret that this deployment's key did not seal (or that was altered)."""


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _derive(root: bytes, purpose: str) -> bytes:
    return hmac.new(root, f"tessera-webhook-secrets:{purpose}".encode(), hashlib.sha256).digest()


class SecretBox:
    """Seals and opens webhook secrets under keys derived from the deployment's key."""

    def __init__(self, deployment_key: str) -> None:
        root = deployment_key.encode()
        self._sealer = Sealer(deployment_key, "tessera-webhook-secret:v2")
        self._v1_encrypt = _derive(root, "encrypt")
        self._v1_mac = _derive(root, "mac")
        self._per_user = _derive(root, "per-user")

    def seal(self, secret: str) -> str:
        return "v2." + self._sealer.seal(secret)

    def open(self, sealed: str) -> str:
        version, _, body = sealed.partition(".")
        if version == "v2":
            try:
                return self._sealer.open(body)
            except Unsealable as exc:
                raise SealError(str(exc)) from None
        if version == "v1":
            try:
                raw = base64.urlsafe_b64decode(body.encode())
            except ValueError:
                raise SealError("not a sealed secret") from None
            if len(raw) >= 48:
                return self._open_v1(raw)
        raise SealError("not a sealed secret")

    def _open_v1(self, raw: bytes) -> str:
        nonce, cipher, tag = raw[:16], raw[16:-32], raw[-32:]
        if not hmac.compare_digest(tag, hmac.new(self._v1_mac, _V1 + nonce + cipher, hashlib.sha256).digest()):
            raise SealError("sealed with another key, or altered")
        blocks = [
            hmac.new(self._v1_encrypt, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
            for counter in range((len(cipher) + 31) // 32)
        ]
        return bytes(a ^ b for a, b in zip(cipher, b"".join(blocks), strict=False)).decode()

    def job_secret(self, user_id: uuid.UUID) -> str:
        """The secret that signs the per-job webhooks of one user."""
        return (
            SECRET_PREFIX + base64.b64encode(hmac.new(self._per_user, user_id.bytes, hashlib.sha256).digest()).decode()
        )
