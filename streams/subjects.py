"""Subject and stream names. Tokens that come from users are checked by `token()`."""

from __future__ import annotations

import re

PREFIX = "tessera"

# Streams and buckets (JetStream). Names read well in `nats stream ls`.
COMMANDS_STREAM = "TESSERA_COMMANDS"
DISPATCH_STREAM = "TESSERA_DISPATCH"
EVENTS_STREAM = "TESSERA_EVENTS"
NOTIFY_STREAM = "TESSERA_NOTIFY"
DEAD_LETTER_STREAM = "TESSERA_DEADLETTER"
WORKERS_BUCKET = "TESSERA_WORKERS"
ARTIFACTS_BUCKET = "TESSERA_ARTIFACTS"

# Durable consumer names.
SCHEDULER_CONSUMER = "scheduler"

# Commands: everything the scheduler decides on.
COMMANDS_ALL = f"{PREFIX}.cmd.>"
CMD_SUBMIT = f"{PREFIX}.cmd.job.submit"
CMD_CANCEL = f"{PREFIX}.cmd.job.cancel"
# A worker's reports: one subject per worker (`report()`), so its NATS user may publish only its own.
CMD_STARTED = f"{PREFIX}.cmd.job.started"
CMD_COMPLETED = f"{PREFIX}.cmd.job.completed"
CMD_FAILED = f"{PREFIX}.cmd.job.failed"
CMD_ADMIN_PREFIX = f"{PREFIX}.cmd.admin"
CMD_KEY_ISSUE = f"{PREFIX}.cmd.key.issue"
CMD_USER_REGISTER = f"{PREFIX}.cmd.user.register"  # a website sign-up
CMD_KEY_REVOKE = f"{PREFIX}.cmd.key.revoke"
CMD_UPLOAD_STORE = f"{PREFIX}.cmd.upload.store"
CMD_UPLOAD_DELETE = f"{PREFIX}.cmd.upload.delete"
# Webhook endpoints: the gateway creates and changes them (update: also rotate, delete, re-enable).
CMD_WEBHOOK_CREATE = f"{PREFIX}.cmd.webhook.create"
CMD_WEBHOOK_UPDATE = f"{PREFIX}.cmd.webhook.update"
# Core NATS requests the webhook service answers: an endpoint's delivery log, a replay.
WEBHOOK_DELIVERIES = f"{PREFIX}.webhooks.deliveries"
WEBHOOK_REPLAY = f"{PREFIX}.webhooks.replay"
WEBHOOK_REQUESTS = f"{PREFIX}.webhooks.*"
# Revocations, as the events stream carries them: gateways drop a revoked key from their caches.
KEYS_REVOKED = [f"{PREFIX}.events.user.*.ApiKeyRevoked_v1", f"{PREFIX}.events.frontend.*.FrontendKeyRevoked_v1"]

# Progress: `tessera.progress.<frontend>.<bot>.<job>` (core NATS), so a bot may hear only its own jobs.
PROGRESS_ALL = f"{PREFIX}.progress.>"
CONTROL_ALL = f"{PREFIX}.control.*"
REPLY_ALL = f"{PREFIX}.reply.>"
DISPATCH_ALL = f"{PREFIX}.dispatch.>"
EVENTS_ALL = f"{PREFIX}.events.>"
NOTIFY_ALL = f"{PREFIX}.done.>"
DEAD_LETTER_ALL = f"{PREFIX}.dead.>"
# Core NATS, in no stream: the scheduler says "the log has grown to seq N" after each commit.
COMMITTED = f"{PREFIX}.committed"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Headers.
HDR_MSG_ID = "Nats-Msg-Id"
HDR_REPLY_TO = "Tessera-Reply-To"
HDR_SEQ = "Tessera-Seq"
HDR_ERROR = "Tessera-Error"


def is_token(value: str) -> bool:
    """Whether `value` can stand as one subject token (letters, digits, '_' and '-')."""
    return bool(_TOKEN.match(value))


def token(value: str | None, empty: str = "_") -> str:
    if not value:
        return empty
    if not is_token(value):
        raise ValueError(f"{value!r} cannot be a subject token")
    return value


def admin(action: str) -> str:
    return f"{CMD_ADMIN_PREFIX}.{token(action)}"


def report(kind: str, worker_id: str) -> str:
    """A worker's report subject: `kind` is CMD_STARTED, CMD_COMPLETED or CMD_FAILED."""
    return f"{kind}.{token(worker_id)}"


def dispatch(worker_id: str) -> str:
    """Per-worker dispatch subject: only that worker consumes it."""
    return f"{PREFIX}.dispatch.{token(worker_id)}"


def control(worker_id: str) -> str:
    """Core NATS subject a worker listens on for cancels of running jobs."""
    return f"{PREFIX}.control.{token(worker_id)}"


def event(stream_type: str, stream_id: str, event_type: str) -> str:
    """`tessera.events.job.<job id>.JobCompleted_v1`: filterable by aggregate, id and type."""
    return f"{PREFIX}.events.{stream_type}.{stream_id}.{event_type.replace('.', '_')}"


def job_events(job_id: str) -> str:
    return f"{PREFIX}.events.job.{job_id}.*"


def progress(frontend: str | None, bot_id: str | None, job_id: str) -> str:
    """Core NATS subject for ephemeral progress of a running job, scoped by the frontend and bot that
    submitted it (`tessera.progress.<frontend>.<bot>.<job>`; `_` for none), like its completion."""
    return f"{PREFIX}.progress.{token(frontend)}.{token(bot_id)}.{job_id}"


def job_progress(job_id: str) -> str:
    """Filter for one job's progress, whoever submitted it (the gateway's SSE)."""
    return f"{PREFIX}.progress.*.*.{job_id}"


def progress_for(frontend: str, bot_id: str | None = None) -> str:
    """Filter for the progress of one bot's jobs (what its NATS user may subscribe to)."""
    return f"{PREFIX}.progress.{token(frontend)}.{token(bot_id)}.*"


def done(frontend: str, bot_id: str | None, job_id: str) -> str:
    """Completion subject a frontend subscribes to: `tessera.done.<frontend>.<bot>.<job>`."""
    return f"{PREFIX}.done.{token(frontend)}.{token(bot_id)}.{job_id}"


def done_for(frontend: str, bot_id: str | None = None) -> str:
    """Filter for one frontend's (or one bot's) completions."""
    bot = token(bot_id) if bot_id else "*"
    return f"{PREFIX}.done.{token(frontend)}.{bot}.*"


def reply_inbox(instance: str) -> str:
    return f"{PREFIX}.reply.{token(instance)}"


def is_reply(subject: str) -> bool:
    """Whether `subject` is a reply subject: the only place the scheduler sends a decision."""
    return subject.startswith(f"{PREFIX}.reply.") and " " not in subject


def dead_letter(original_subject: str) -> str:
    return f"{PREFIX}.dead.{original_subject.removeprefix(PREFIX + '.')}"
