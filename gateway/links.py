"""Signed, expiring artifact links: a URL that downloads an artifact with no key until it expires.

A bot posts such a link when a result is too large to upload to its chat; the person who follows
it has no Tessera key. The link carries its expiry (`expires`, Unix seconds) and an HMAC-SHA256 of
the artifact's id and that expiry under the deployment's secret (`signature`, base64url), so no
state is kept and any gateway with the same secret (TESSERA_URL_SIGNING_KEY) serves it. Changing an
id, stretching an expiry or forging a signature gives a signature that does not match, compared in
constant time. docs/security.md#signed-artifact-links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from datetime import UTC, datetime

from gateway.errors import Problem

log = logging.getLogger(__name__)

_MAX_EXPIRES_DIGITS = 12  # Unix seconds until the year 33658: a longer number is no expiry of ours


class LinkSigner:
    """Signs and checks artifact links with one secret; a link works for `ttl_s` seconds after it was
    made, and never past its artifact's own expiry."""

    def __init__(self, secret: str | None, ttl_s: float) -> None:
        if not secret:
            log.warning(
                "TESSERA_URL_SIGNING_KEY is not set: this gateway signs artifact links with a secret of its own, "
                "so they work only on this gateway and only until it stops (tessera up sets one)"
            )
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def signature(self, artifact_id: uuid.UUID, expires: int) -> str:
        digest = hmac.new(self._key, f"tessera-artifact:{artifact_id}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def link(
        self, base_url: str, artifact_id: uuid.UUID, not_after: datetime | None, now: float | None = None
    ) -> tuple[str, datetime]:
        """A signed URL of the artifact and when it stops working."""
        expires = math.floor((time.time() if now is None else now) + self.ttl_s)
        if not_after is not None:
            expires = min(expires, math.floor(not_after.timestamp()))
        query = f"expires={expires}&signature={self.signature(artifact_id, expires)}"
        return f"{base_url}/api/v1/artifacts/{artifact_id}?{query}", datetime.fromtimestamp(expires, UTC)

    def check(
        self, artifact_id: uuid.UUID, expires: str | None, signature: str | None, now: float | None = None
    ) -> None:
        """Raise a Problem (403) unless this is a link this deployment signed for `artifact_id` that has
        not expired: LINK_INVALID for anything not signed so, LINK_EXPIRED for a genuine link too old."""
        invalid = Problem(403, "LINK_INVALID", "this artifact link is not valid: ask its owner for a new one")
        if expires is None or signature is None or not (expires.isascii() and expires.isdigit()):
            raise invalid
        if len(expires) > _MAX_EXPIRES_DIGITS or not signature.isascii():
            raise invalid
        at = int(expires)
        if not hmac.compare_digest(self.signature(artifact_id, at).encode(), signature.encode()):
            raise invalid
        if at < (time.time() if now is None else now):
            raise Problem(
                403,
                "LINK_EXPIRED",
                f"this artifact link expired at {datetime.fromtimestamp(at, UTC).isoformat()}: "
                "ask its owner for a new one",
            )
