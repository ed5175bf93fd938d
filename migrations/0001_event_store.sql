-- The event store: the source of truth. Rows are appended, never updated or deleted.
CREATE TABLE events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    stream_type  text        NOT NULL CHECK (stream_type IN ('job', 'user', 'plan', 'frontend')),
    stream_id    uuid        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    type         text        NOT NULL,
    data         jsonb       NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    causation_id text,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

COMMENT ON TABLE events IS 'Immutable event log; UPDATE, DELETE and TRUNCATE are refused by triggers.';

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % on table events is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Write side of the scheduler: the jobs that are not terminal yet, so a restarted scheduler
-- folds only their events. Owned by the scheduler; not a read model.
CREATE TABLE active_jobs (
    job_id     uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- How far the scheduler's relay has published committed events to NATS.
CREATE TABLE relay_position (
    name text PRIMARY KEY,
    seq  bigint NOT NULL
);
INSERT INTO relay_position (name, seq) VALUES ('events', 0);
