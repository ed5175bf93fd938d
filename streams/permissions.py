"""Who may publish and subscribe to what on NATS: one user per role, each with only what it needs.

The lists are data: `tessera up` writes them into the embedded nats-server's configuration, and
`tessera workers credentials` prints them for an operator who runs their own server. Each user
reads replies only under its own inbox prefix (`connection.inbox_prefix`), so no client can read
another's JetStream answers, fetched messages or watcher deliveries.

The JetStream API subjects are the ones nats-py 2.16 sends to nats-server 2.10+ (found by running
every role against a server with these permissions and reading its permission violations):
`CONSUMER.CREATE.<stream>.<consumer>.<filter>` names the filter in the subject, so a worker may
create its own consumer on its own dispatch subject and no other.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams import subjects as s
from streams.connection import inbox_prefix

_JS = "$JS.API"
_KV_STREAM = f"KV_{s.WORKERS_BUCKET}"
_OBJ_STREAM = f"OBJ_{s.ARTIFACTS_BUCKET}"
_OBJECTS = f"$O.{s.ARTIFACTS_BUCKET}.>"


@dataclass(frozen=True)
class Role:
    """A NATS user and its permissions; `publish`/`subscribe` None means every subject (admin)."""

    name: str
    user: str
    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    responses: bool = False  # may answer core-NATS requests sent to it (its replies only)

    @property
    def inbox(self) -> str:
        return inbox_prefix(self.user)

    def permissions(self) -> dict[str, dict[str, list[str]]] | None:
        """nats-server's `permissions` map for this user, or None for all subjects."""
        if self.publish is None and self.subscribe is None:
            return None
        result: dict[str, dict[str, list[str]]] = {}
        for key, allow, deny in (
            ("publish", self.publish, self.publish_deny),
            ("subscribe", self.subscribe, self.subscribe_deny),
        ):
            entry: dict[str, list[str]] = {}
            if allow is not None:
                entry["allow"] = list(allow)
            if deny:
                entry["deny"] = list(deny)
            result[key] = entry
        if self.responses:
            result["allow_responses"] = True  # type: ignore[assignment]  # nats-server's flag beside the two maps
        return result


def _pull_consumer(stream: str, consumer: str, filter_subject: str) -> tuple[str, ...]:
    """Look up, create (on `filter_subject` only), fetch from and acknowledge one durable pull consumer."""
    return (
        f"{_JS}.CONSUMER.INFO.{stream}.{consumer}",
        f"{_JS}.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}",
        f"{_JS}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def _read_objects() -> tuple[str, ...]:
    """Get objects from the artifacts bucket: its info, an object's metadata, an ordered consumer on its chunks."""
    return (
        f"{_JS}.STREAM.INFO.{_OBJ_STREAM}",
        f"{_JS}.STREAM.NAMES",
        f"{_JS}.DIRECT.GET.{_OBJ_STREAM}.>",
        f"{_JS}.STREAM.MSG.GET.{_OBJ_STREAM}",
        f"{_JS}.CONSUMER.CREATE.{_OBJ_STREAM}",
        f"{_JS}.CONSUMER.CREATE.{_OBJ_STREAM}.>",
        f"{_JS}.CONSUMER.INFO.{_OBJ_STREAM}.>",
        f"{_JS}.CONSUMER.DELETE.{_OBJ_STREAM}.>",
    )


def _watch_workers() -> tuple[str, ...]:
    """Follow the workers bucket (an ordered consumer replaying every key, then each change)."""
    return (
        f"{_JS}.STREAM.INFO.{_KV_STREAM}",
        f"{_JS}.CONSUMER.CREATE.{_KV_STREAM}",
        f"{_JS}.CONSUMER.CREATE.{_KV_STREAM}.>",
        f"{_JS}.CONSUMER.INFO.{_KV_STREAM}.>",
        f"{_JS}.CONSUMER.DELETE.{_KV_STREAM}.>",
    )


def admin() -> Role:
    """The operator's CLI, `tessera up` itself and migrations: everything."""
    return Role("admin", "admin", None, None)


def scheduler() -> Role:
    """The single writer: the only role that publishes events, dispatches, notifications and decisions.

    It manages the streams (creates and updates them at start, purges a gone worker's dispatches,
    deletes expired objects), so it may use the whole JetStream API.
    """
    return Role(
        "scheduler",
        "scheduler",
        publish=(
            f"{_JS}.>",
            f"$JS.ACK.{s.COMMANDS_STREAM}.{s.SCHEDULER_CONSUMER}.>",
            s.DISPATCH_ALL,
            s.EVENTS_ALL,
            s.NOTIFY_ALL,
            s.DEAD_LETTER_ALL,
            s.CONTROL_ALL,
            s.COMMITTED,
            s.REPLY_ALL,
            _OBJECTS,
        ),
        subscribe=(f"{inbox_prefix('scheduler')}.>",),
    )


def gateway() -> Role:
    """The HTTP API: sends the public commands, reads job events, progress, objects and the fleet.

    It never consumes dispatches, never writes events and never sends a worker's report or an
    operator's command.
    """
    return Role(
        "gateway",
        "gateway",
        publish=(
            s.CMD_SUBMIT,
            s.CMD_CANCEL,
            s.CMD_KEY_ISSUE,
            s.CMD_KEY_REVOKE,
            s.CMD_USER_REGISTER,
            s.CMD_UPLOAD_STORE,
            s.CMD_UPLOAD_DELETE,
            s.CMD_WEBHOOK_CREATE,
            s.CMD_WEBHOOK_UPDATE,
            s.WEBHOOK_DELIVERIES,
            s.WEBHOOK_REPLAY,
            _OBJECTS,
            f"{_JS}.STREAM.PURGE.{_OBJ_STREAM}",
            *_read_objects(),
            *_watch_workers(),
        ),
        subscribe=(f"{inbox_prefix('gateway')}.>", s.REPLY_ALL, s.EVENTS_ALL, s.PROGRESS_ALL),
        subscribe_deny=(s.DISPATCH_ALL,),
    )


def projector() -> Role:
    """Folds the log from PostgreSQL; on NATS it only hears that the log has grown."""
    return Role(
        "projector",
        "projector",
        publish=(f"{_JS}.CONSUMER.DELETE.{s.EVENTS_STREAM}.projector",),  # an old projector's consumer
        subscribe=(f"{inbox_prefix('projector')}.>", s.COMMITTED),
    )


def webhooks() -> Role:
    """The webhook service: reads the log from PostgreSQL; on NATS it hears the log grow and the jobs'
    progress, answers the gateway's questions about deliveries, and disables an endpoint."""
    return Role(
        "webhooks",
        "webhooks",
        publish=(s.CMD_WEBHOOK_UPDATE,),
        subscribe=(f"{inbox_prefix('webhooks')}.>", s.COMMITTED, s.PROGRESS_ALL, s.WEBHOOK_REQUESTS),
        responses=True,
    )


def worker_user(worker_id: str) -> str:
    return f"worker-{s.token(worker_id)}"


def worker(worker_id: str) -> Role:
    """A worker (possibly on a machine the operator does not fully trust): its own dispatches, its
    own status key, its own reports, progress, and the artifacts bucket (it stores results and
    reads uploaded inputs)."""
    user = worker_user(worker_id)
    return Role(
        f"worker:{worker_id}",
        user,
        publish=(
            *_pull_consumer(s.DISPATCH_STREAM, user, s.dispatch(worker_id)),
            f"{_JS}.STREAM.INFO.{_KV_STREAM}",
            f"$KV.{s.WORKERS_BUCKET}.{s.token(worker_id)}",
            s.report(s.CMD_STARTED, worker_id),
            s.report(s.CMD_COMPLETED, worker_id),
            s.report(s.CMD_FAILED, worker_id),
            s.PROGRESS_ALL,
            f"$O.{s.ARTIFACTS_BUCKET}.C.>",
            f"$O.{s.ARTIFACTS_BUCKET}.M.>",
            *_read_objects(),
        ),
        subscribe=(f"{inbox_prefix(user)}.>", s.control(worker_id)),
    )


def bot_user(frontend: str, bot_id: str | None) -> str:
    """Also the name of the bot's durable consumer on the notify stream (bots/completions.py)."""
    return f"bot-{s.token(frontend)}-{s.token(bot_id)}"


def bot(frontend: str, bot_id: str | None) -> Role:
    """A bot: its own completion notifications and its own jobs' progress, nothing else (it reaches
    the rest over HTTP)."""
    user = bot_user(frontend, bot_id)
    return Role(
        f"bot:{frontend}:{bot_id or ''}",
        user,
        publish=_pull_consumer(s.NOTIFY_STREAM, user, s.done_for(frontend, bot_id)),
        subscribe=(f"{inbox_prefix(user)}.>", s.progress_for(frontend, bot_id)),
    )


def role(name: str) -> Role:
    """A role from its name: `scheduler`, `gateway`, `projector`, `admin`, `worker:<id>`,
    `bot:<frontend>:<bot id>`."""
    kind, _, rest = name.partition(":")
    match kind:
        case "admin" | "scheduler" | "gateway" | "projector" | "webhooks" if not rest:
            roles = {"admin": admin, "scheduler": scheduler, "gateway": gateway, "projector": projector}
            return {**roles, "webhooks": webhooks}[kind]()
        case "worker" if rest:
            return worker(rest)
        case "bot" if rest:
            frontend, _, bot_id = rest.partition(":")
            return bot(frontend, bot_id or None)
    raise ValueError(
        f"{name!r} is not a role: scheduler, gateway, projector, webhooks, admin, worker:<id>, bot:<frontend>:<bot id>"
    )
