"""The machinery every part of the scheduler's state decides through: emit, reply, refuse.

A handler reads the state, emits events (folded into the state at once, so later commands of the
same batch see them) and records what to carry out once the batch commits: replies, dispatches,
controls, purges. The aggregates (accounts, quota, fleet, queue, jobs) share one `Emitter`, and
this module imports none of them, so splitting the state creates no import cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from events.store import PendingEvent
from events.types import AnyEvent, RecordedEvent, StreamType
from scheduler.admission import Refused
from streams.messages import CancelRunning, Decision, Dispatch


@dataclass
class Effects:
    """What a batch decided, carried out once its events are committed."""

    pending: list[PendingEvent] = field(default_factory=list)
    replies: list[tuple[str, uuid.UUID | None, Decision]] = field(default_factory=list)
    dispatches: list[tuple[str, Dispatch]] = field(default_factory=list)
    controls: list[tuple[str, CancelRunning]] = field(default_factory=list)
    purge_workers: list[str] = field(default_factory=list)
    discard_objects: list[str] = field(default_factory=list)
    activated: list[uuid.UUID] = field(default_factory=list)
    finished: list[uuid.UUID] = field(default_factory=list)


class Emitter:
    """The wall clock, the batch's effects, and the fold that applies each emitted event."""

    def __init__(self, clock: Callable[[], float], fold: Callable[[RecordedEvent], None]) -> None:
        self.clock = clock
        self.fold = fold
        self.effects = Effects()

    def emit(
        self, stream_type: StreamType, stream_id: uuid.UUID, version: int, event: AnyEvent, cause: str | None
    ) -> None:
        """Record an event at `version` of its stream and fold it into the state."""
        pending = PendingEvent(
            stream_type=stream_type, stream_id=stream_id, version=version, data=event, causation_id=cause
        )
        self.effects.pending.append(pending)
        self.fold(pending.recorded(seq=0))

    def reply(self, reply_to: str | None, decision: Decision, job_id: uuid.UUID | None = None) -> None:
        """Answer the command's sender once the batch commits (with the job's summary, if any)."""
        if reply_to:
            self.effects.replies.append((reply_to, job_id, decision))

    def refuse(self, reply_to: str | None, refused: Refused, job_id: uuid.UUID | None = None) -> None:
        self.reply(reply_to, refused.decision(), job_id)

    def take(self) -> Effects:
        """The batch's effects, leaving none behind."""
        effects, self.effects = self.effects, Effects()
        return effects
