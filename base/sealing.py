"""Text sealed for storage with AES-256-GCM (the `cryptography` package), under a key derived with
HKDF-SHA256 from a secret the sealing process holds and a purpose that keeps keys apart.

A sealed text is URL-safe base64 of a random 96-bit nonce and the ciphertext with its tag. Used
where something secret must travel in an event, which is kept for good: webhook signing secrets
(gateway.webhook_secrets) and Discord interaction tokens (bots.reply).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12


class Unsealable(ValueError):
    """Not sealed by this key and purpose: another key, altered, or not a sealed text at all."""


class Sealer:
    def __init__(self, secret: str, purpose: str) -> None:
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        self._aead = AESGCM(kdf.derive(secret.encode()))
        self._purpose = purpose.encode()  # bound to every ciphertext as associated data

    def seal(self, text: str) -> str:
        nonce = os.urandom(_NONCE)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, text.encode(), self._purpose)).decode()

    def open(self, sealed: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._purpose).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise Unsealable("sealed with another key, or altered, or not sealed") from None
