"""Quotas: each user's tokens per quota day, their rate window, and their uploads per day.

The token ledger is kept in step by the job aggregate (reserved at admission, charged or released
at the end); the upload commands are decided here, against the plan's upload limits.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from events.types import RecordedEvent, StreamType, UploadDeleted, UploadExpired, UploadStored
from scheduler import rules
from scheduler.accounts import Accounts
from scheduler.admission import RATE_WINDOW_S, RefusalCode, Refused
from scheduler.effects import Emitter
from streams.messages import Decision, DeleteUpload, StoreUpload


@dataclass
class Ledger:
    """A user's tokens for one quota day: charged for completed jobs, and held for running ones."""

    used: float = 0.0
    reserved: float = 0.0


@dataclass
class UploadView:
    user_id: uuid.UUID
    object_name: str
    version: int
    stored: bool  # not deleted or expired


class Quota:
    """Tokens, request rates and uploads, per user and quota day."""

    def __init__(self, out: Emitter, accounts: Accounts, zone: ZoneInfo) -> None:
        self.out = out
        self.accounts = accounts
        self.zone = zone
        self.ledger: dict[tuple[uuid.UUID, date], Ledger] = {}
        self.upload_ledger: dict[tuple[uuid.UUID, date], list[int]] = {}  # (user, day) -> [uploads, bytes]
        # Uploads a command of the batch refers to, loaded for it and forgotten after it.
        self.uploads: dict[uuid.UUID, UploadView] = {}
        self.requests: dict[uuid.UUID, deque[float]] = {}  # user -> submit times in the last minute

    def apply(self, rec: RecordedEvent) -> None:
        """Fold one event of an upload stream."""
        event = rec.data
        if isinstance(event, UploadStored):
            self.uploads[rec.stream_id] = UploadView(
                user_id=event.user_id, object_name=event.object_name, version=rec.version, stored=True
            )
        elif isinstance(event, UploadDeleted | UploadExpired):
            upload = self.uploads.get(rec.stream_id)
            if upload is not None:
                upload.version, upload.stored = rec.version, False

    # --- days and tokens -----------------------------------------------------------------------

    def quota_day(self, at: float | None = None) -> date:
        return rules.quota_day(self.out.clock() if at is None else at, self.zone)

    def quota_resets_at(self, day: date) -> datetime:
        """When `day`'s quota ends (midnight after it, in the quota time zone), in UTC."""
        return rules.quota_resets_at(day, self.zone).astimezone(UTC)

    def of(self, user_id: uuid.UUID, day: date) -> Ledger:
        """The user's ledger for `day` (a new, empty one the first time)."""
        ledger = self.ledger.get((user_id, day))
        if ledger is None:
            ledger = self.ledger[(user_id, day)] = Ledger()
            if len(self.ledger) > 4 * max(len(self.accounts.users), 1024):
                self._forget_old_days()
        return ledger

    def _forget_old_days(self) -> None:
        cutoff = self.quota_day() - timedelta(days=2)
        for key in [k for k, v in self.ledger.items() if k[1] < cutoff and abs(v.reserved) < 1e-9]:
            del self.ledger[key]
        now = self.out.clock()
        for user_id in [u for u, w in self.requests.items() if not w or now - w[-1] >= RATE_WINDOW_S]:
            del self.requests[user_id]

    # --- rate windows --------------------------------------------------------------------------

    def window(self, user_id: uuid.UUID, now: float) -> deque[float]:
        """The user's submit times in the sliding minute before `now`, oldest first."""
        window = self.requests.setdefault(user_id, deque())
        while window and now - window[0] >= RATE_WINDOW_S:
            window.popleft()
        return window

    def count_request(self, user_id: uuid.UUID, now: float) -> None:
        self.requests.setdefault(user_id, deque()).append(now)

    # --- uploads -------------------------------------------------------------------------------

    def store_upload(self, cmd: StoreUpload, reply_to: str | None, cause: str) -> None:
        """Count an upload against the user's plan: its size, and its uploads and bytes today."""
        if cmd.upload_id in self.uploads:  # the same command again: one upload
            self.out.reply(reply_to, Decision(ok=True))
            return
        plan = self.accounts.plan_of(cmd.user_id)
        day = self.quota_day()
        count, size = self.upload_ledger.get((cmd.user_id, day), (0, 0))
        resets = self.quota_resets_at(day)
        retry = max(1, math.ceil(resets.timestamp() - self.out.clock()))
        refused = None
        if plan.max_upload_bytes is not None and cmd.size_bytes > plan.max_upload_bytes:
            refused = Refused(
                code=RefusalCode.UPLOAD_TOO_LARGE,
                detail=(
                    f"the {plan.name} plan takes uploads of up to {plan.max_upload_bytes} bytes; "
                    f"this one has {cmd.size_bytes}"
                ),
            )
        elif plan.uploads_per_day is not None and count >= plan.uploads_per_day:
            refused = Refused(
                code=RefusalCode.UPLOAD_QUOTA_EXCEEDED,
                retry_after=retry,
                detail=(
                    f"the {plan.name} plan takes {plan.uploads_per_day} uploads a day; the quota resets at "
                    f"{resets.isoformat()}"
                ),
            )
        elif plan.upload_bytes_per_day is not None and size + cmd.size_bytes > plan.upload_bytes_per_day:
            refused = Refused(
                code=RefusalCode.UPLOAD_QUOTA_EXCEEDED,
                retry_after=retry,
                detail=(
                    f"the {plan.name} plan takes {plan.upload_bytes_per_day} bytes of uploads a day and {size} are "
                    f"used; the quota resets at {resets.isoformat()}"
                ),
            )
        if refused is not None:
            self.out.refuse(reply_to, refused)
            return
        self.out.emit(
            StreamType.UPLOAD,
            cmd.upload_id,
            1,
            UploadStored(
                user_id=cmd.user_id,
                object_name=cmd.object_name,
                content_type=cmd.content_type,
                size_bytes=cmd.size_bytes,
                duration_seconds=cmd.duration_seconds,
                bits_per_sample=cmd.bits_per_sample,
                quota_day=day,
                expires_at=cmd.expires_at,
            ),
            cause,
        )
        self.upload_ledger[(cmd.user_id, day)] = [count + 1, size + cmd.size_bytes]
        self.out.reply(reply_to, Decision(ok=True))

    def delete_upload(self, cmd: DeleteUpload, reply_to: str | None, cause: str) -> None:
        upload = self.uploads.get(cmd.upload_id)
        if upload is None or upload.user_id != cmd.user_id:  # another user's is indistinguishable from none
            self.out.refuse(reply_to, Refused(code=RefusalCode.UPLOAD_NOT_FOUND, detail=f"no upload {cmd.upload_id}"))
            return
        if upload.stored:
            self.out.emit(
                StreamType.UPLOAD,
                cmd.upload_id,
                upload.version + 1,
                UploadDeleted(user_id=cmd.user_id, object_name=upload.object_name),
                cause,
            )
            self.out.effects.discard_objects.append(upload.object_name)
        self.out.reply(reply_to, Decision(ok=True))

    def expire_uploads(self, expired: list[tuple[uuid.UUID, str, int]]) -> None:
        """Record the expiry of uploads past their time (id, object name, stream version)."""
        now = datetime.fromtimestamp(self.out.clock(), UTC)
        for upload_id, object_name, version in expired:
            self.out.emit(
                StreamType.UPLOAD,
                upload_id,
                version + 1,
                UploadExpired(object_name=object_name, expired_at=now),
                "scheduler:upload-expiry",
            )
            self.out.effects.discard_objects.append(object_name)
