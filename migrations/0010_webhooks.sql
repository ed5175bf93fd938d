-- Webhooks (issue 15, docs/webhooks.md).
-- A webhook endpoint is an aggregate of its own: its events are on the endpoint's stream.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_type_check;
ALTER TABLE events ADD CONSTRAINT events_stream_type_check
    CHECK (stream_type IN ('job', 'user', 'plan', 'frontend', 'artifact', 'upload', 'webhook'));

-- The projector's read model of users' webhook endpoints (the API lists them from here). The
-- secrets are sealed with the deployment's key (gateway/webhook_secrets.py), never stored plain.
CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    url text NOT NULL,
    events text[] NOT NULL,
    description text,
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    secret_sealed text NOT NULL,
    previous_sealed text,
    previous_expires_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX idx_webhook_endpoints_user ON webhook_endpoints (user_id);

-- The webhook service's own tables (webhooks/store.py). How far it has read the event log: its
-- messages are inserted in the same transaction as this position moves, so each event is turned
-- into messages exactly once.
CREATE TABLE webhook_position (name text PRIMARY KEY, seq bigint NOT NULL);
INSERT INTO webhook_position (name, seq) VALUES ('deliveries', 0);

-- One message per (event, receiver). `id` is the webhook-id header: the same on every attempt.
-- `target` is an endpoint's id, or 'job:<job id>' for a per-job webhook (whose url is here).
CREATE TABLE webhook_messages (
    id text PRIMARY KEY,
    target text NOT NULL,
    user_id uuid NOT NULL,
    url text,
    job_id uuid,
    event_type text NOT NULL,
    body bytea NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    created_at timestamptz NOT NULL
);
CREATE INDEX idx_webhook_messages_due ON webhook_messages (next_attempt_at) WHERE state = 'pending';
CREATE INDEX idx_webhook_messages_target ON webhook_messages (target, created_at DESC);

CREATE TABLE webhook_attempts (
    message_id text NOT NULL REFERENCES webhook_messages (id),
    attempt integer NOT NULL,
    at timestamptz NOT NULL,
    status integer,
    latency_ms integer,
    response_excerpt text,
    error text,
    PRIMARY KEY (message_id, attempt)
);
