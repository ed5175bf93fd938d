"""How a Tessera service connects to NATS: retrying forever, and soon after the server is back.

nats-py waits two seconds between reconnect attempts by default; a service that comes back that
late after a short nats-server restart misses heartbeats it would otherwise have seen.

Credentials travel in the URL (`nats://user:password@host:4222`). A connection that logs in as a
user takes its replies under that user's own inbox prefix, the only one its permissions let it
read (streams/permissions.py). A `tls://` URL is verified against the system's certificate
authorities, or against the one in the file `TESSERA_NATS_CA` names (a self-signed one).

Services hold their connection through `opened` (or `opened_once` for a short task), which drains
it on exit: the server stops sending, the subscriptions' handlers finish what they already
received, what was published is flushed, and only then does the connection close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5
DRAIN_TIMEOUT_S = 5.0  # how long a connection's handlers get to finish before it is closed anyway
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
    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S, **_options(url), **callbacks
    )


async def connect_once(url: str, name: str, **callbacks: Any) -> NATS:
    """A connection for a short task (creating streams, one command): it fails rather than waits."""
    return await nats.connect(url, name=name, **_options(url), **callbacks)


async def drain(nc: NATS, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Drain `nc`, then close it; close it at once when NATS is away (nothing can be flushed), and
    anyway once `timeout_s` has passed."""
    if nc.is_closed:
        return
    try:
        await _drop_unread(nc)
        # nats-py bounds the subscriptions' part by the connection's drain_timeout; this bounds the rest.
        await asyncio.wait_for(nc.drain(), timeout_s + 2)
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        log.info("%s: closing without a drain (%r)", nc.options.get("name") or "nats", exc)
    finally:
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout_s)


async def _drop_unread(nc: NATS) -> None:
    """Unsubscribe the subscriptions without a handler first: their owner reads them itself (a pull
    consumer's fetch, `next_msg`) and has stopped, so a drain would wait its whole timeout for what
    they still hold (a pull request's late timeout status, say). nats-py has no public list of a
    connection's subscriptions, hence the private attributes."""
    for sub in list(nc._subs.values()):
        if getattr(sub, "_cb", None) is None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


@contextlib.asynccontextmanager
async def opened(
    url: str, name: str, *, drain_timeout_s: float = DRAIN_TIMEOUT_S, **callbacks: Any
) -> AsyncIterator[NATS]:
    """A connection as `connect` makes it (reconnecting forever), drained on exit."""
    nc = await connect(url, name, drain_timeout=max(1, round(drain_timeout_s)), **callbacks)
    try:
        yield nc
    finally:
        await drain(nc, drain_timeout_s)


@contextlib.asynccontextmanager
async def opened_once(
    url: str, name: str, *, drain_timeout_s: float = DRAIN_TIMEOUT_S, **callbacks: Any
) -> AsyncIterator[NATS]:
    """A connection as `connect_once` makes it (failing rather than waiting), drained on exit."""
    nc = await connect_once(url, name, drain_timeout=max(1, round(drain_timeout_s)), **callbacks)
    try:
        yield nc
    finally:
        await drain(nc, drain_timeout_s)
