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
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from streams import connection
from streams import subjects as s

log = logging.getLogger(__name__)

DAY = 24 * 3600


def stream_configs(events_max_age_s: float = 30 * DAY) -> list[StreamConfig]:
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
            max_age=events_max_age_s,
            duplicate_window=600,
        ),
        StreamConfig(
            name=s.NOTIFY_STREAM,
            subjects=[s.NOTIFY_ALL],
            description="Terminal job notifications for frontends: tessera.done.<frontend>.<bot>.<job>",
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=3 * DAY,
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


async def ensure(js: JetStreamContext, *, artifact_ttl_s: float = 7 * DAY) -> None:
    """Bring streams and buckets to the configuration above; safe to run from every process."""
    for config in stream_configs():
        assert config.name is not None  # every configuration above names its stream
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
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


async def ensure_at(nats_url: str, *, name: str = "ensure-streams", artifact_ttl_s: float = 7 * DAY) -> None:
    """`ensure` over a connection of its own, for a process about to start (the scheduler, `migrate`)."""
    async with connection.opened_once(nats_url, name) as nc:
        await ensure(nc.jetstream(), artifact_ttl_s=artifact_ttl_s)


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
