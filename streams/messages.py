"""Wire messages (JSON) between gateway, scheduler, workers and frontends.

Commands are requests the scheduler may refuse; events (events/types.py) are facts it recorded.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from events.types import Artifact
from streams import subjects as s


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every command on `tessera.cmd.>`."""


class SubmitJob(Command, frozen=True, kw_only=True, tag="job.submit"):
    command_id: uuid.UUID
    job_id: uuid.UUID
    user_id: uuid.UUID
    user_ref: str | None = None
    frontend: str
    bot_id: str | None = None
    capability: str
    model: str | None = None
    params: dict[str, Any]
    reply_context: dict[str, Any] | None = None
    deadline: datetime  # the scheduler refuses the command after this: the gateway gave up
    request_digest: str | None = None  # SHA-256 of the request: an Idempotency-Key reused with another body is refused
    webhook: str | None = None  # a URL told of this job's start, progress and completion (docs/webhooks.md)
    webhook_events: list[str] | None = None  # of start, progress, completed; None: all


class CancelJob(Command, frozen=True, kw_only=True, tag="job.cancel"):
    command_id: uuid.UUID
    job_id: uuid.UUID
    user_id: uuid.UUID
    reason: str = "cancelled by user"


class ReportStarted(Command, frozen=True, kw_only=True, tag="job.started"):
    job_id: uuid.UUID
    worker_id: str
    attempt: int


class ReportCompleted(Command, frozen=True, kw_only=True, tag="job.completed"):
    job_id: uuid.UUID
    worker_id: str
    attempt: int
    artifacts: list[Artifact]
    execution_time_seconds: float
    usage: dict[str, float] = {}  # measured units the price depends on: output_tokens, audio_seconds, ...
    started_at: datetime | None = None  # when the engine began; set when no ReportStarted was sent


class ReportFailed(Command, frozen=True, kw_only=True, tag="job.failed"):
    job_id: uuid.UUID
    worker_id: str
    attempt: int
    code: str
    message: str
    started_at: datetime | None = None


class CreateUser(Command, frozen=True, kw_only=True, tag="user.create"):
    """Register a user (if new) and issue an API key; only the key's hash travels."""

    command_id: uuid.UUID
    platform: str
    platform_user_id: str
    plan: str
    display_name: str | None = None
    key_id: uuid.UUID
    key_hash: str
    key_prefix: str


class CreateFrontendKey(Command, frozen=True, kw_only=True, tag="frontend.create"):
    command_id: uuid.UUID
    frontend: str
    bot_id: str | None = None
    key_id: uuid.UUID
    key_hash: str
    key_prefix: str


class RegisterUser(Command, frozen=True, kw_only=True, tag="user.register"):
    """A person signed up on the website: register `platform:platform_user_id` on the free plan
    (nothing changes when the user exists)."""

    command_id: uuid.UUID
    platform: str
    platform_user_id: str


class IssueApiKey(Command, frozen=True, kw_only=True, tag="key.issue"):
    """Give an existing user another key (only its hash travels); with `replaces`, the old key is
    revoked in the same commit (a rotation)."""

    command_id: uuid.UUID
    user_id: uuid.UUID
    key_id: uuid.UUID
    key_hash: str
    key_prefix: str
    label: str | None = None
    replaces: uuid.UUID | None = None
    by: str = "user"  # user | operator


class RevokeKey(Command, frozen=True, kw_only=True, tag="key.revoke"):
    """Revoke a user's key (`user_id`) or a frontend's (`frontend`, `bot_id`)."""

    command_id: uuid.UUID
    key_id: uuid.UUID
    user_id: uuid.UUID | None = None
    frontend: str | None = None
    bot_id: str | None = None
    by: str = "user"  # user | operator
    reason: str | None = None


class StoreUpload(Command, frozen=True, kw_only=True, tag="upload.store"):
    """Count an upload the gateway has put in the object store against the user's plan; refused,
    the gateway removes it again."""

    command_id: uuid.UUID
    user_id: uuid.UUID
    upload_id: uuid.UUID
    object_name: str
    content_type: str
    size_bytes: int
    duration_seconds: float | None = None
    bits_per_sample: int | None = None
    expires_at: datetime


class DeleteUpload(Command, frozen=True, kw_only=True, tag="upload.delete"):
    command_id: uuid.UUID
    user_id: uuid.UUID
    upload_id: uuid.UUID


class ChangeUserPlan(Command, frozen=True, kw_only=True, tag="user.plan"):
    command_id: uuid.UUID
    platform: str
    platform_user_id: str
    plan: str
    changed_by: str = "operator"


class DefinePlan(Command, frozen=True, kw_only=True, tag="plan.define"):
    """Create a plan or change the terms given (None: unchanged)."""

    command_id: uuid.UUID
    tier: str
    name: str | None = None
    daily_token_limit: int | None = None
    unlimited_tokens: bool = False  # set daily_token_limit to unlimited
    requests_per_minute: int | None = None
    max_concurrent_jobs: int | None = None
    max_queued_jobs: int | None = None
    priority: int | None = None
    max_resolution: int | None = None
    allowed_models: list[str] | None = None
    price_cents: int | None = None
    description: str | None = None
    uploads_per_day: int | None = None
    upload_bytes_per_day: int | None = None
    max_upload_bytes: int | None = None


class CreateWebhook(Command, frozen=True, kw_only=True, tag="webhook.create"):
    """A user's webhook endpoint: a new one, or (UpdateWebhook) changed where a field is not None;
    secrets travel sealed (gateway.webhook_secrets)."""

    command_id: uuid.UUID
    webhook_id: uuid.UUID
    user_id: uuid.UUID
    url: str
    events: list[str]
    description: str | None = None
    secret_sealed: str


class UpdateWebhook(Command, frozen=True, kw_only=True, tag="webhook.update"):
    command_id: uuid.UUID
    webhook_id: uuid.UUID
    user_id: uuid.UUID
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None
    rotate_to: str | None = None  # a new sealed secret; the old one signs beside it for grace_seconds
    grace_seconds: int = 0
    delete: bool = False
    disable_reason: str | None = None  # the webhook service's own (410 Gone, failing for days)


AnyCommand = (
    SubmitJob
    | CancelJob
    | ReportStarted
    | ReportCompleted
    | ReportFailed
    | CreateUser
    | CreateFrontendKey
    | IssueApiKey
    | RegisterUser
    | RevokeKey
    | StoreUpload
    | DeleteUpload
    | ChangeUserPlan
    | DefinePlan
    | CreateWebhook
    | UpdateWebhook
)

# The subject each kind of command must arrive on. NATS permissions say who may publish on a
# subject; the scheduler refuses a command that came on another kind's subject, so a worker that
# may publish only its own reports cannot slip a submit or an admin action into one.
_SUBJECTS: dict[type[Command], str] = {
    SubmitJob: s.CMD_SUBMIT,
    CancelJob: s.CMD_CANCEL,
    CreateUser: s.admin("user-create"),
    CreateFrontendKey: s.admin("frontend-create"),
    IssueApiKey: s.CMD_KEY_ISSUE,
    RegisterUser: s.CMD_USER_REGISTER,
    RevokeKey: s.CMD_KEY_REVOKE,
    StoreUpload: s.CMD_UPLOAD_STORE,
    DeleteUpload: s.CMD_UPLOAD_DELETE,
    ChangeUserPlan: s.admin("user-plan"),
    DefinePlan: s.admin("plan-define"),
    CreateWebhook: s.CMD_WEBHOOK_CREATE,
    UpdateWebhook: s.CMD_WEBHOOK_UPDATE,
}


def subject_of(command: AnyCommand) -> str:
    """Where `command` must be published; a worker's report names its worker in the subject."""
    match command:
        case ReportStarted():
            return s.report(s.CMD_STARTED, command.worker_id)
        case ReportCompleted():
            return s.report(s.CMD_COMPLETED, command.worker_id)
        case ReportFailed():
            return s.report(s.CMD_FAILED, command.worker_id)
    return _SUBJECTS[type(command)]


class JobSummary(msgspec.Struct, frozen=True, kw_only=True):
    job_id: uuid.UUID
    status: str
    cost_tokens: float
    queue_position: int | None = None
    estimated_time_seconds: float | None = None


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    """The user's request budget for the sliding minute (RateLimit-* headers)."""

    limit: int
    remaining: int
    reset_seconds: float


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The scheduler's answer to a command, sent once the outcome is committed."""

    ok: bool
    code: str | None = None  # a refusal's code: a scheduler.admission.RefusalCode (the gateway maps it to HTTP)
    detail: str | None = None
    job: JobSummary | None = None
    seq: int = 0  # newest event sequence written for this command (read-your-writes)
    user_id: uuid.UUID | None = None
    rate: RateLimit | None = None
    retry_after: int | None = None  # seconds, for a refusal worth retrying later


class Dispatch(msgspec.Struct, frozen=True, kw_only=True):
    """A job handed to one worker on its own subject."""

    job_id: uuid.UUID
    attempt: int
    capability: str
    model: str
    params: dict[str, Any]
    timeout_seconds: float
    dispatched_at: datetime
    # The instance of the worker this attempt is meant for: a restarted worker (a new instance)
    # drops the dispatches of its previous life, whose attempts the scheduler has fenced.
    instance_id: uuid.UUID | None = None
    # Who submitted the job: its progress goes to `subjects.progress(frontend, bot_id, job)`, which
    # only that bot (and the gateway) may read. None on a dispatch from before this field.
    frontend: str | None = None
    bot_id: str | None = None


class EnginePool(msgspec.Struct, frozen=True, kw_only=True):
    """One engine of a worker: the models it serves and how many of their jobs it runs at once."""

    engine: str
    models: list[str]
    slots: int


class WorkerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker announces in the workers bucket at start and on every heartbeat.

    `slots` caps the jobs it runs at once in all; each of its `pools` (one per engine) caps the
    jobs of that engine's models. A worker that lists no pools has one pool of all its models.
    """

    worker_id: str
    instance_id: uuid.UUID
    capabilities: list[str]
    engines: list[str]
    models: list[str]
    loaded_models: list[str]
    slots: int
    running: list[uuid.UUID]
    # The attempts it holds (fetched, running, or reporting), and the command stream's sequence
    # of its newest stored report. An attempt the scheduler believes is on this worker that the
    # worker does not hold, once the scheduler has read the commands up to `reported_seq` (so no
    # report of it is still on its way), was lost: it is requeued after a grace period.
    # None from a worker that does not say (then only its heartbeats are judged).
    held: dict[uuid.UUID, int] | None = None
    reported_seq: int = 0
    draining: bool = False
    sent_at: datetime
    heartbeat_interval_s: float = 2.0
    gpu: dict[str, Any] | None = None
    max_resolution: int | None = None  # the largest image side it can render; None: no limit
    pools: list[EnginePool] = []

    def engine_pools(self) -> list[EnginePool]:
        return self.pools or [EnginePool(engine="*", models=self.models, slots=self.slots)]

    def slots_for(self, model: str) -> int:
        """How many jobs of `model` it can run at once (0 when it does not serve it)."""
        for pool in self.engine_pools():
            if model in pool.models:
                return min(pool.slots, self.slots)
        return 0


class CancelRunning(msgspec.Struct, frozen=True, kw_only=True):
    job_id: uuid.UUID
    attempt: int


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    job_id: uuid.UUID
    attempt: int
    fraction: float | None = None
    message: str | None = None
    partial_text: str | None = None


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """A job reached its terminal state: what a bot needs to reply to its user."""

    job_id: uuid.UUID
    status: str
    frontend: str
    bot_id: str | None = None
    user_ref: str | None = None
    reply_context: dict[str, Any] | None = None
    cost_tokens: float = 0
    artifacts: list[Artifact] = []
    error: dict[str, Any] | None = None


_encoder = msgspec.json.Encoder()
command_decoder = msgspec.json.Decoder(AnyCommand)


def encode(value: object) -> bytes:
    return _encoder.encode(value)
