"""How a Tessera service connects to NATS: retrying forever, and soon after the server is back.

nats-py waits two seconds between reconnect attempts by default; a service that comes back that
late after a short nats-server restart misses heartbeats it would otherwise have seen.

Credentials travel in the URL (`nats://user:password@host:4222`). A connection that logs in as a
user takes its replies under that user's own inbox prefix, the only one its permissions let it
read (streams/permissions.py). A `tls://` URL is verified against the system's certificate
authorities, or against the one in the file `TESSERA_NATS_CA` names (a self-signed one).
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS

RECONNECT_WAIT_S = 0.5
DEFAULT_INBOX = "_INBOX"


def inbox_prefix(user: str | None) -> str:
    """The reply subjects a user may read: `_INBOX_<user>.>`; the default inbox without a user."""
    return f"{DEFAULT_INBOX}_{user}" if user else DEFAULT_INBOX


def user_of(url: str) -> str | None:
    """The user a NATS URL logs in as, if any (the first server's, for a list)."""
    return urlsplit(url.split(",", 1)[0].strip()).username or None


def redacted(url: str) -> str:
    """`url` with its password replaced, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username}:***@{parts.hostname}:{parts.port}").geturl()


def tls_context(url: str) -> ssl.SSLContext | None:
    """A context trusting `TESSERA_NATS_CA` for a `tls://` URL; None to let nats-py use the system's."""
    ca_file = os.environ.get("TESSERA_NATS_CA")
    if not ca_file or not url.startswith("tls://"):
        return None
    return ssl.create_default_context(cafile=ca_file)


def _options(url: str) -> dict[str, Any]:
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(user_of(url))}
    tls = tls_context(url)
    if tls is not None:
        options["tls"] = tls
    return options


async def connect(url: str, name: str, **callbacks: Any) -> NATS:
    """A connection that reconnects forever, every RECONNECT_WAIT_S; `callbacks` are nats-py's
    (`disconnected_cb`, `reconnected_cb`, ...)."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S,
                              **_options(url), **callbacks)


async def connect_once(url: str, name: str, **callbacks: Any) -> NATS:
    """A connection for a short task (creating streams, one command): it fails rather than waits."""
    return await nats.connect(url, name=name, **_options(url), **callbacks)
