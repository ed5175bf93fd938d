-- Uploads with limits (issue 11): an upload is an event of its own stream, counted against the
-- plan's uploads per day; its owner lists and deletes it; its expiry is recorded like an artifact's.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_type_check;
ALTER TABLE events ADD CONSTRAINT events_stream_type_check
    CHECK (stream_type IN ('job', 'user', 'plan', 'frontend', 'artifact', 'upload'));
CREATE INDEX events_uploads_quota_day ON events ((data->>'quota_day')) WHERE type = 'UploadStored.v1';

CREATE TABLE uploads (
    id               uuid PRIMARY KEY,
    user_id          uuid         NOT NULL,
    object_name      text         NOT NULL,
    content_type     varchar(100) NOT NULL,
    size_bytes       bigint       NOT NULL,
    duration_seconds double precision,
    created_at       timestamptz  NOT NULL,
    expires_at       timestamptz  NOT NULL,
    deleted_at       timestamptz,
    expired_at       timestamptz
);
CREATE INDEX idx_uploads_user_created ON uploads (user_id, created_at DESC);
CREATE INDEX idx_uploads_expires_at ON uploads (expires_at) WHERE deleted_at IS NULL AND expired_at IS NULL;

ALTER TABLE plans ADD COLUMN uploads_per_day integer;
ALTER TABLE plans ADD COLUMN upload_bytes_per_day bigint;
ALTER TABLE plans ADD COLUMN max_upload_bytes bigint;

-- The seed plans' upload terms, as a new definition on top of each plan's newest (an operator's
-- changes kept): free 12 uploads and 100 MiB a day, 25 MiB each; starter 50 and 500 MiB; pro 200
-- and 2 GiB; admin unlimited.
INSERT INTO events (event_id, stream_type, stream_id, version, type, data, causation_id)
SELECT gen_random_uuid(), 'plan', e.stream_id, e.version + 1, 'PlanDefined.v1', e.data || terms.data, 'migration:0008'
FROM (SELECT DISTINCT ON (stream_id) stream_id, version, data FROM events
      WHERE stream_type = 'plan' ORDER BY stream_id, version DESC) e
JOIN (VALUES
      ('free', '{"uploads_per_day": 12, "upload_bytes_per_day": 104857600, "max_upload_bytes": 26214400}'::jsonb),
      ('starter', '{"uploads_per_day": 50, "upload_bytes_per_day": 524288000, "max_upload_bytes": 26214400}'::jsonb),
      ('pro', '{"uploads_per_day": 200, "upload_bytes_per_day": 2147483648, "max_upload_bytes": 26214400}'::jsonb))
    AS terms(tier, data) ON e.data->>'tier' = terms.tier;
