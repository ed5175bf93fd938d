"""How a Tessera service connects to NATS: retrying forever, and soon after the server is back.

nats-py waits two seconds between reconnect attempts by default; a service that comes back that
late after a short nats-server restart misses heartbeats it would otherwise have seen.
"""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client as NATS

RECONNECT_WAIT_S = 0.5


async def connect(url: str, name: str, **callbacks: Any) -> NATS:
    """A connection that reconnects forever, every RECONNECT_WAIT_S; `callbacks` are nats-py's
    (`disconnected_cb`, `reconnected_cb`, ...)."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_S,
                              **callbacks)
