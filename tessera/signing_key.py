"""The secret that signs artifact links, made once per data directory by `tessera up`.

Every gateway must sign with the same secret, or a link made by one is refused by another
(gateway.links). `tessera up` keeps it in `<data dir>/url-signing.key` (readable by its owner only),
so its links survive a restart; an operator's own TESSERA_URL_SIGNING_KEY wins over the file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from base.config import Settings


def path(settings: Settings) -> Path:
    return settings.data_dir / "url-signing.key"


def ensure(settings: Settings) -> str:
    """The deployment's link-signing secret: the operator's, else the data directory's, made now if
    there is none yet (256 random bits)."""
    if settings.url_signing_key:
        return settings.url_signing_key
    file = path(settings)
    try:
        existing = file.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    secret = secrets.token_urlsafe(32)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret
