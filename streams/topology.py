"""Create or update every stream and bucket, idempotently, at start."""

from __future__ import annotations

import dataclasses
import logging

from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PersistMode,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from base.config import Settings
from streams import connection
from streams import subjects as s

log = logging.getLogger(__name__)

DAY = 24 * 3600

# Streams that hold only what PostgreSQL can give again: their messages are acknowledged before they
# reach the disk (nats-server's async persist mode, flushed in batches) instead of one fsync each, and
# a stream made with another persist mode is replaced, since nats-server cannot change it in place.
RELAYS = frozenset({s.EVENTS_STREAM})


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamLimits:
    """How much of the events and notifications streams nats-server keeps, by age and by bytes.

    Both streams put a job id in every subject, and nats-server holds an index entry per subject it
    retains: what it keeps, not what was ever made, must be bounded for its memory and restart time
    not to grow with history (bench/nats_subjects.py, docs/scaling.md). PostgreSQL is the source of
    truth: nothing consumes the events stream from JetStream (the gateway hears events live on core
    NATS, the projector and the webhook service read the log), so it keeps one hour for operators;
    notifications wait for bots that are down, three days or the byte limit, whichever comes first.
    """

    events_max_age_s: float = 3600.0
    events_max_bytes: int = 128 * 2**20
    notify_max_age_s: float = 3 * DAY
    notify_max_bytes: int = 256 * 2**20

    @classmethod
    def of(cls, settings: Settings) -> StreamLimits:
        return cls(
            events_max_age_s=settings.events_max_age_s,
            events_max_bytes=settings.events_max_bytes,
            notify_max_age_s=settings.notify_max_age_s,
            notify_max_bytes=settings.notify_max_bytes,
        )


def stream_configs(limits: StreamLimits | None = None) -> list[StreamConfig]:
    limits = limits or StreamLimits()
    return [
        StreamConfig(
            name=s.COMMANDS_STREAM,
            subjects=[s.COMMANDS_ALL],
            description="Commands for the scheduler: job submit/cancel, worker reports, admin actions",
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=DAY,
            duplicate_window=120,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=s.DISPATCH_STREAM,
            subjects=[s.DISPATCH_ALL],
            description="Jobs dispatched by the scheduler, one subject per worker: tessera.dispatch.<worker>",
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=DAY,
            duplicate_window=120,
        ),
        StreamConfig(
            name=s.EVENTS_STREAM,
            subjects=[s.EVENTS_ALL],
            description="Committed events relayed from PostgreSQL: tessera.events.<aggregate>.<id>.<type>",
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=limits.events_max_age_s,
            max_bytes=limits.events_max_bytes,
            discard=DiscardPolicy.OLD,
            # The outbox retries a send within seconds; a longer window only holds more ids in memory.
            duplicate_window=120,
            # A relay for operators: the log is in PostgreSQL, and nothing consumes this stream. An
            # fsync per event was half of nats-server's work per job (docs/performance.md).
            persist_mode=PersistMode.ASYNC,
        ),
        StreamConfig(
            name=s.NOTIFY_STREAM,
            subjects=[s.NOTIFY_ALL],
            description="Terminal job notifications for frontends: tessera.done.<frontend>.<bot>.<job>",
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=limits.notify_max_age_s,
            max_bytes=limits.notify_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=600,
        ),
        StreamConfig(
            name=s.DEAD_LETTER_STREAM,
            subjects=[s.DEAD_LETTER_ALL],
            description="Commands that could not be decoded or handled, moved aside with the reason",
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=30 * DAY,
        ),
    ]


async def ensure(js: JetStreamContext, *, artifact_ttl_s: float = 7 * DAY, limits: StreamLimits | None = None) -> None:
    """Bring streams and buckets to the configuration above; safe to run from every process."""
    for config in stream_configs(limits):
        assert config.name is not None  # every configuration above names its stream
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
            continue
        if config.name in RELAYS and _persist_mode(info.config.persist_mode) != _persist_mode(config.persist_mode):
            log.warning(
                "stream %s: persist mode %s -> %s; replacing it (it relays what PostgreSQL holds)",
                config.name,
                _persist_mode(info.config.persist_mode),
                _persist_mode(config.persist_mode),
            )
            await js.delete_stream(config.name)
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    try:
        await js.key_value(s.WORKERS_BUCKET)
    except BucketNotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=s.WORKERS_BUCKET,
                description="Worker announcements and heartbeats, one key per worker",
                history=1,
                ttl=3600,
                storage=StorageType.FILE,
            )
        )
    try:
        await js.object_store(s.ARTIFACTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(
            s.ARTIFACTS_BUCKET,
            ObjectStoreConfig(
                bucket=s.ARTIFACTS_BUCKET,
                description="Job artifacts (images, audio, video) written by workers",
                ttl=artifact_ttl_s,
                storage=StorageType.FILE,
            ),
        )


def _persist_mode(mode: PersistMode | str | None) -> str:
    """nats-server leaves the default out of a stream's configuration: None and "default" are one."""
    return PersistMode(mode).value if mode else PersistMode.DEFAULT.value


async def ensure_at(
    nats_url: str,
    *,
    name: str = "ensure-streams",
    artifact_ttl_s: float = 7 * DAY,
    limits: StreamLimits | None = None,
) -> None:
    """`ensure` over a connection of its own, for a process about to start (the scheduler, `migrate`)."""
    async with connection.opened_once(nats_url, name) as nc:
        await ensure(nc.jetstream(), artifact_ttl_s=artifact_ttl_s, limits=limits)


async def durable_pull(
    js: JetStreamContext, *, stream: str, subject: str, durable: str, config: ConsumerConfig
) -> JetStreamContext.PullSubscription:
    """Bind a pull subscription to `durable`, recreating the consumer if its ack policy changed.

    A consumer's ack policy cannot be updated in place. An old one is replaced by a consumer that
    starts right after its ack floor, so every message it had not acknowledged is delivered again.
    """
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    if info is not None and info.config.ack_policy != config.ack_policy:
        floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        log.warning(
            "consumer %s on %s: ack policy %s -> %s; recreating it from stream sequence %d",
            durable,
            stream,
            info.config.ack_policy,
            config.ack_policy,
            floor + 1,
        )
        await js.delete_consumer(stream, durable)
        config = dataclasses.replace(config, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1)
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
