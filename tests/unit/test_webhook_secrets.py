"""Webhook secrets are sealed with AES-256-GCM for the event log; what another key sealed, or what was
altered, does not open; secrets sealed by the earlier scheme (v1) still open."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from gateway.webhook_secrets import SealError, SecretBox, new_secret

# Sealed under "tests-key" by this module's first scheme (HMAC keystream, commit ef7b9ca and before).
V1_SEALED = (
    "v1.CCcirVcBeP2d-jev88p5NrtMsetQ32_ZyNi_hZIGuSnzn0BkcglRJg11AMhh2R4V2ZxIKp2FRk38FC8go1TU6fCSRVRjq73xNXn5KU042GZNd"
    "O_6n58vL9w4ggJFK4FC5so="
)
V1_SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def test_a_sealed_secret_opens_with_the_same_key_only() -> None:
    box, secret = SecretBox("tests-key"), new_secret()
    sealed = box.seal(secret)
    assert sealed.startswith("v2.") and secret not in sealed
    assert box.open(sealed) == secret
    assert box.seal(secret) != sealed  # a fresh nonce each time
    with pytest.raises(SealError):
        SecretBox("another-key").open(sealed)


def test_an_altered_or_malformed_seal_does_not_open() -> None:
    box = SecretBox("tests-key")
    raw = bytearray(base64.urlsafe_b64decode(box.seal(new_secret())[3:]))
    raw[20] ^= 1
    for bad in ("v2." + base64.urlsafe_b64encode(bytes(raw)).decode(), "v2.AAAA", "v3.AAAA", "v2.!!!", "plain"):
        with pytest.raises(SealError):
            box.open(bad)


def test_a_secret_sealed_by_the_first_scheme_still_opens() -> None:
    assert SecretBox("tests-key").open(V1_SEALED) == V1_SECRET
    with pytest.raises(SealError):
        SecretBox("another-key").open(V1_SEALED)


def test_per_job_secrets_did_not_change_with_the_cipher() -> None:
    """Receivers verify per-job webhooks with a secret derived from the user's id: it must stay put."""
    user = uuid.UUID(int=7)
    per_user = hmac.new(b"tests-key", b"tessera-webhook-secrets:per-user", hashlib.sha256).digest()
    expected = "whsec_" + base64.b64encode(hmac.new(per_user, user.bytes, hashlib.sha256).digest()).decode()
    assert SecretBox("tests-key").job_secret(user) == expected
