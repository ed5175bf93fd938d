"""Waking a user's event streams (`/api/v1/events`) when that user submits a job through this gateway."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Iterator

Merged = asyncio.Queue[tuple[uuid.UUID, str, bytes, int | None]]  # (job, item kind, data, version)
WAKE = uuid.UUID(int=0)


class Wakers:
    """Per user, the streams open on this gateway: a submit here wakes them to look for the new job."""

    def __init__(self) -> None:
        self._by_user: defaultdict[uuid.UUID, set[Merged]] = defaultdict(set)

    def submitted(self, user_id: uuid.UUID) -> None:
        for queue in self._by_user.get(user_id, ()):
            queue.put_nowait((WAKE, "wake", b"", None))

    @contextlib.contextmanager
    def watching(self, user_id: uuid.UUID, queue: Merged) -> Iterator[None]:
        self._by_user[user_id].add(queue)
        try:
            yield
        finally:
            self._by_user[user_id].discard(queue)
            if not self._by_user[user_id]:
                del self._by_user[user_id]
