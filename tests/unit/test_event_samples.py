"""Every event type ever stored still decodes: encoded samples are kept here forever."""

from __future__ import annotations

import msgspec
import pytest

from events.types import AnyEvent, decode_data, encode

SAMPLES = [
    b'{"type":"JobSubmitted.v1","user_id":"50342619-f3aa-5c55-9704-1fb5ee1505ba","user_ref":null,"frontend":"api",'
    b'"bot_id":null,"capability":"tts","model":"espeak-ng","params":{"prompt":"Hello"},"priority":2,'
    b'"cost_tokens":0.02,"reply_context":null}',
    b'{"type":"JobQueued.v1","priority":2,"reason":"admitted"}',
    b'{"type":"JobDispatched.v1","worker_id":"vm-0","attempt":1,"reason":"priority 2"}',
    b'{"type":"JobStarted.v1","worker_id":"vm-0","attempt":1}',
    b'{"type":"JobCompleted.v1","worker_id":"vm-0","attempt":1,"artifacts":[{"id":"2c47be06-3ddf-4eb9-9671-'
    b'84a5d664079b","kind":"audio","format":"wav","content_type":"audio/wav","size_bytes":45646,"object_name":'
    b'"jobs/x/1/y.wav","text":null,"width":null,"height":null,"duration_seconds":1.034,"expires_at":'
    b'"2026-11-29T12:28:52.686626Z"}],"execution_time_seconds":0.064,"cost_tokens":0.02}',
    b'{"type":"JobFailed.v1","code":"ENGINE_ERROR","message":"boom","worker_id":"vm-0","attempt":1}',
    b'{"type":"JobCancelled.v1","reason":"cancelled by user","requested_by":"user"}',
    b'{"type":"JobRequeued.v1","worker_id":"vm-0","attempt":1,"reason":"no heartbeat for 10s"}',
    b'{"type":"UserRegistered.v1","platform":"web","platform_user_id":"alice","plan":"pro","display_name":null}',
    b'{"type":"ApiKeyIssued.v1","key_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b","key_hash":"ab","prefix":"tsk_x"}',
    b'{"type":"PlanDefined.v1","tier":"free","name":"Free","daily_token_limit":20,"requests_per_minute":6,'
    b'"max_concurrent_jobs":1,"max_queued_jobs":3,"priority":0,"max_resolution":1024,"allowed_models":["sdxl"],'
    b'"price_cents":0,"description":"Free tier"}',
    # Fields added with defaults for quotas (issue 3): reservation, charge and release.
    b'{"type":"JobQueued.v1","priority":0,"reason":"admitted","reserved_tokens":1.0,"quota_day":"2026-11-22"}',
    b'{"type":"JobCompleted.v1","worker_id":"vm-0","attempt":1,"artifacts":[],"execution_time_seconds":1.5,'
    b'"cost_tokens":0.03,"reserved_tokens":0.04,"quota_day":"2026-11-22","usage":{"output_tokens":200.0}}',
    b'{"type":"JobFailed.v1","code":"QUEUE_TIMEOUT","message":"waited 600s","worker_id":null,"attempt":null,'
    b'"released_tokens":1.0,"quota_day":"2026-11-22"}',
    b'{"type":"JobCancelled.v1","reason":"cancelled by user","requested_by":"user","released_tokens":2.0,'
    b'"quota_day":"2026-11-22"}',
    b'{"type":"JobCompleted.v1","worker_id":"vm-0","attempt":1,"artifacts":[],"execution_time_seconds":0.001,'
    b'"cost_tokens":0.0,"reserved_tokens":0.0,"quota_day":"2026-11-22","usage":{},'
    b'"started_at":"2026-11-22T13:50:01.123456Z"}',
    b'{"type":"ArtifactExpired.v1","job_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b","object_name":"jobs/x/1/y.wav",'
    b'"expired_at":"2026-11-29T12:28:52.686626Z"}',
    b'{"type":"UserPlanChanged.v1","plan":"pro","previous_plan":"free","changed_by":"operator"}',
    b'{"type":"PlanDefined.v1","tier":"admin","name":"Admin","daily_token_limit":null,"requests_per_minute":600,'
    b'"max_concurrent_jobs":64,"max_queued_jobs":10000,"priority":3,"max_resolution":4096,"allowed_models":["*"],'
    b'"price_cents":0,"description":"Unlimited"}',
    b'{"type":"FrontendKeyIssued.v1","frontend":"telegram","bot_id":"tg-1","key_id":'
    b'"2c47be06-3ddf-4eb9-9671-84a5d664079b","key_hash":"ab","prefix":"tfk_x"}',
    b'{"type":"ApiKeyRevoked.v1","key_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b","revoked_by":"user"}',
    b'{"type":"FrontendKeyRevoked.v1","key_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b","revoked_by":"operator",'
    b'"reason":"rotated"}',
    b'{"type":"UploadStored.v1","user_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b","object_name":"uploads/u/1",'
    b'"content_type":"audio/wav","size_bytes":32044,"duration_seconds":1.0,"bits_per_sample":16,'
    b'"quota_day":"2026-11-29","expires_at":"2026-12-06T20:00:00Z"}',
    b'{"type":"UploadDeleted.v1","user_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b","object_name":"uploads/u/1"}',
    b'{"type":"UploadExpired.v1","object_name":"uploads/u/1","expired_at":"2026-12-06T20:00:01Z"}',
    # Webhooks (issue 15): the submit's digest and per-job webhook, and the endpoints' own stream.
    b'{"type":"JobSubmitted.v1","user_id":"50342619-f3aa-5c55-9704-1fb5ee1505ba","user_ref":null,"frontend":"api",'
    b'"bot_id":null,"capability":"tts","model":"espeak-ng","params":{"prompt":"Hello"},"priority":2,'
    b'"cost_tokens":0.02,"reply_context":null,"request_digest":"ab","webhook":"https://example.com/h",'
    b'"webhook_events":["completed"]}',
    b'{"type":"WebhookEndpointCreated.v1","user_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b",'
    b'"url":"https://example.com/h","events":["start","completed"],"description":null,"secret_sealed":"v1.x"}',
    b'{"type":"WebhookEndpointUpdated.v1","url":"https://example.com/h","events":["completed"],"description":null,'
    b'"enabled":false,"disabled_reason":"the receiver answered 410 Gone","by":"delivery"}',
    b'{"type":"WebhookSecretRotated.v1","secret_sealed":"v1.y","previous_sealed":"v1.x",'
    b'"previous_expires_at":"2026-12-01T00:00:00Z"}',
    b'{"type":"WebhookEndpointDeleted.v1","user_id":"2c47be06-3ddf-4eb9-9671-84a5d664079b"}',
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_stored_sample_decodes_and_round_trips(raw: bytes) -> None:
    """Old samples decode and keep every value; fields added since come back with their defaults."""
    event = decode_data(raw)
    original = msgspec.json.decode(raw)
    again = msgspec.json.decode(encode(event))
    assert {k: again[k] for k in original} == original


def test_every_event_type_has_a_sample() -> None:
    tags = {msgspec.json.decode(raw)["type"] for raw in SAMPLES}
    declared = {t.__struct_config__.tag for t in AnyEvent.__args__}  # type: ignore[attr-defined]
    assert declared == tags
