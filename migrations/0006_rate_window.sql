-- Rate windows survive a scheduler restart (issue 11): a new leader reads the submits of the last
-- minute from the log, by the time they were recorded. Partial, so other events pay nothing.
CREATE INDEX events_submitted_at ON events (recorded_at) WHERE type = 'JobSubmitted.v1';
