"""Who a request acts for, once its key has been checked (key format: `base.keys`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    user_id: uuid.UUID
    frontend: str  # telegram | discord | web | api
    bot_id: str | None
    user_ref: str | None  # set when a frontend key acts for a platform user
