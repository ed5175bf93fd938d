-- Read models (projections). Every row here is derived from `events` by the projector and can be
-- dropped and rebuilt with `tessera projections rebuild`. No foreign keys: the projector owns order.

CREATE TABLE projection_position (
    name text PRIMARY KEY,
    seq  bigint NOT NULL
);
INSERT INTO projection_position (name, seq) VALUES ('read_models', 0);

CREATE TABLE plans (
    tier                varchar(20) PRIMARY KEY CHECK (tier IN ('free', 'starter', 'pro', 'admin')),
    name                varchar(50) NOT NULL UNIQUE,
    daily_token_limit   integer     NOT NULL,
    requests_per_minute integer     NOT NULL,
    max_concurrent_jobs integer     NOT NULL,
    max_queued_jobs     integer     NOT NULL,
    priority            integer     NOT NULL CHECK (priority IN (0, 1, 2, 3)),
    max_resolution      integer     NOT NULL,
    allowed_models      text[]      NOT NULL,
    price_cents         integer     NOT NULL DEFAULT 0,
    billing_period      varchar(20) NOT NULL DEFAULT 'monthly',
    description         text,
    active              boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL
);

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    platform         varchar(20)  NOT NULL CHECK (platform IN ('telegram', 'discord', 'web')),
    platform_user_id varchar(100) NOT NULL,
    plan_tier        varchar(20)  NOT NULL,
    display_name     varchar(100),
    created_at       timestamptz  NOT NULL,
    UNIQUE (platform, platform_user_id)
);
CREATE INDEX idx_users_plan ON users (plan_tier);

CREATE TABLE api_keys (
    key_hash   char(64) PRIMARY KEY,
    key_id     uuid        NOT NULL UNIQUE,
    user_id    uuid        NOT NULL,
    prefix     varchar(16) NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id);

CREATE TABLE frontend_keys (
    key_hash   char(64) PRIMARY KEY,
    key_id     uuid        NOT NULL UNIQUE,
    frontend   varchar(20) NOT NULL,
    bot_id     varchar(64),
    prefix     varchar(16) NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE jobs (
    id                     uuid PRIMARY KEY,
    version                integer      NOT NULL,
    status                 varchar(20)  NOT NULL
        CHECK (status IN ('CREATED', 'QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    user_id                uuid         NOT NULL,
    user_ref               varchar(100),
    frontend               varchar(20)  NOT NULL,
    bot_id                 varchar(64),
    capability             varchar(20)  NOT NULL,
    model                  varchar(100) NOT NULL,
    params                 jsonb        NOT NULL,
    priority               integer      NOT NULL,
    cost_tokens            numeric(10, 2) NOT NULL,
    reply_context          jsonb,
    worker_id              varchar(64),
    attempt                integer      NOT NULL DEFAULT 0,
    created_at             timestamptz  NOT NULL,
    queued_at              timestamptz,
    started_at             timestamptz,
    ended_at               timestamptz,
    execution_time_seconds numeric(10, 3),
    error                  jsonb,
    last_seq               bigint       NOT NULL
);
CREATE INDEX idx_jobs_user_created ON jobs (user_id, created_at DESC);
CREATE INDEX idx_jobs_status ON jobs (status);
CREATE INDEX idx_jobs_worker_id ON jobs (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX idx_jobs_active ON jobs (status, priority DESC, created_at) WHERE status IN ('QUEUED', 'RUNNING');

-- The queue read model: one row per waiting job, in the order it (re)joined the queue.
CREATE TABLE job_queue (
    job_id      uuid PRIMARY KEY,
    priority    integer     NOT NULL,
    capability  varchar(20) NOT NULL,
    model       varchar(100) NOT NULL,
    user_id     uuid        NOT NULL,
    enqueued_seq bigint     NOT NULL,
    enqueued_at timestamptz NOT NULL
);
CREATE INDEX idx_job_queue_order ON job_queue (capability, priority DESC, enqueued_seq);

CREATE VIEW queue_depth AS
    SELECT capability, priority, count(*) AS depth, min(enqueued_at) AS oldest_enqueued_at
    FROM job_queue GROUP BY capability, priority;

CREATE TABLE artifacts (
    id               uuid PRIMARY KEY,
    job_id           uuid         NOT NULL,
    user_id          uuid         NOT NULL,
    type             varchar(20)  NOT NULL CHECK (type IN ('image', 'video', 'audio', 'text')),
    format           varchar(20)  NOT NULL,
    content_type     varchar(100) NOT NULL,
    object_name      varchar(500),
    inline_text      text,
    width            integer,
    height           integer,
    duration_seconds numeric(10, 3),
    file_size_bytes  bigint       NOT NULL,
    expires_at       timestamptz,
    created_at       timestamptz  NOT NULL
);
CREATE INDEX idx_artifacts_job_id ON artifacts (job_id);
CREATE INDEX idx_artifacts_expires_at ON artifacts (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE usage_daily (
    user_id        uuid    NOT NULL,
    date           date    NOT NULL,
    tokens_used    numeric(12, 2) NOT NULL DEFAULT 0,
    jobs_completed integer NOT NULL DEFAULT 0,
    jobs_failed    integer NOT NULL DEFAULT 0,
    tokens_image   numeric(12, 2) NOT NULL DEFAULT 0,
    tokens_video   numeric(12, 2) NOT NULL DEFAULT 0,
    tokens_text    numeric(12, 2) NOT NULL DEFAULT 0,
    tokens_audio   numeric(12, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, date)
);
CREATE INDEX idx_usage_date ON usage_daily (date DESC);
