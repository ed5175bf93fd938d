"""Errors of the event store and of the job state machine."""

from __future__ import annotations

from base.errors import TesseraError


class ConcurrencyError(TesseraError):
    """Another writer appended to this stream first: the expected version is stale."""

    def __init__(self, stream_id: object, expected_version: int) -> None:
        self.stream_id = stream_id
        self.expected_version = expected_version
        super().__init__(f"stream {stream_id} is no longer at version {expected_version}")


class IllegalTransition(TesseraError):
    """The job state machine does not allow this transition."""

    def __init__(self, job_id: object, current: object, event_type: str) -> None:
        self.job_id = job_id
        self.current = current
        self.event_type = event_type
        super().__init__(f"job {job_id}: {event_type} is not allowed in state {current}")
