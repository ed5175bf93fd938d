"""Webhook signing secrets: made, sealed for the event log, opened again by the webhook service.

A Standard Webhooks secret must be kept so the sender can sign with it (a hash would not do), and
the event log keeps what it is given forever. So the gateway seals a new secret before it leaves
the process: it travels in the command and is stored in the event sealed, and only a process that
holds the deployment's key (TESSERA_URL_SIGNING_KEY: the gateway and the webhook service) can open
it. Sealing is encrypt-then-MAC with two keys derived from the deployment's: a keystream of
HMAC-SHA256(encryption key, nonce || counter) XORed with the secret, and an HMAC-SHA256 tag over
the nonce and the ciphertext, checked in constant time before anything is opened.

Per-job webhooks (`webhook` on a submit) are signed with one secret per user, derived from the
same key and the user's id, so nothing need be stored for them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

SECRET_PREFIX = "whsec_"
_VERSION = b"v1"


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
        self._encrypt = _derive(root, "encrypt")
        self._mac = _derive(root, "mac")
        self._per_user = _derive(root, "per-user")

    def _keystream(self, nonce: bytes, length: int) -> bytes:
        blocks = [
            hmac.new(self._encrypt, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
            for counter in range((length + 31) // 32)
        ]
        return b"".join(blocks)[:length]

    def seal(self, secret: str) -> str:
        nonce = secrets.token_bytes(16)
        plain = secret.encode()
        cipher = bytes(a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True))
        tag = hmac.new(self._mac, _VERSION + nonce + cipher, hashlib.sha256).digest()
        return "v1." + base64.urlsafe_b64encode(nonce + cipher + tag).decode()

    def open(self, sealed: str) -> str:
        version, _, body = sealed.partition(".")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
        except ValueError:
            raise SealError("not a sealed secret") from None
        if version != "v1" or len(raw) < 48:
            raise SealError("not a sealed secret")
        nonce, cipher, tag = raw[:16], raw[16:-32], raw[-32:]
        if not hmac.compare_digest(tag, hmac.new(self._mac, _VERSION + nonce + cipher, hashlib.sha256).digest()):
            raise SealError("sealed with another key, or altered")
        return bytes(a ^ b for a, b in zip(cipher, self._keystream(nonce, len(cipher)), strict=True)).decode()

    def job_secret(self, user_id: uuid.UUID) -> str:
        """The secret that signs the per-job webhooks of one user."""
        return (
            SECRET_PREFIX + base64.b64encode(hmac.new(self._per_user, user_id.bytes, hashlib.sha256).digest()).decode()
        )
