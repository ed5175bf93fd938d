"""API keys: generated once, shown once, stored as SHA-256 hashes.

Two kinds: user keys (`tsk_…`) act as their user; frontend keys (`tfk_…`) are held by a bot or
the website and act for the `user_ref` (`telegram:123456`) they name on each request.
"""

from __future__ import annotations

import hashlib
import secrets

USER_KEY_PREFIX = "tsk_"
FRONTEND_KEY_PREFIX = "tfk_"
PLATFORMS = ("telegram", "discord", "web")


def new_key(prefix: str) -> tuple[str, str, str]:
    """(key, its hash, the short prefix kept for people to recognise it)."""
    key = prefix + secrets.token_urlsafe(32)
    return key, hash_key(key), key[:10]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
