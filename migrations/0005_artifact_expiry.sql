-- Artifact expiry (issue 4): the scheduler appends ArtifactExpired to the artifact's own stream,
-- and the read model keeps the row, marked, so the API can say 410 Gone and not 404.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_type_check;
ALTER TABLE events ADD CONSTRAINT events_stream_type_check
    CHECK (stream_type IN ('job', 'user', 'plan', 'frontend', 'artifact'));
ALTER TABLE artifacts ADD COLUMN expired_at timestamptz;
