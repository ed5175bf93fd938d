-- Recovery bounded by today (issue 17): what a new scheduler leader reads when it takes over is
-- found through small indexes and a small ledger, never by scanning or joining the whole log.

-- The plan, frontend and webhook streams, loaded whole by a new leader (and by the webhook
-- service): partial, so the job events (nearly all of the log) are neither scanned nor indexed.
CREATE INDEX events_config_streams ON events (stream_type, seq)
    WHERE stream_type IN ('plan', 'frontend', 'webhook');

-- The scheduler's token ledger: tokens charged per quota day and user, by completed jobs. Owned by
-- the scheduler (scheduler/queries.py), which adds a batch's charges in the very statement that
-- appends its completions, so it always equals the sum over the log (tests/e2e/test_recovery.py
-- checks it). A new leader reads the last two days of it instead of joining every completion in
-- them to its job's submit.
CREATE TABLE quota_charges (
    day     date             NOT NULL,
    user_id uuid             NOT NULL,
    tokens  double precision NOT NULL,
    PRIMARY KEY (day, user_id)
);

-- What the log has charged so far; completions from before quotas (no quota day) count nowhere.
INSERT INTO quota_charges (day, user_id, tokens)
SELECT (c.data->>'quota_day')::date, (s.data->>'user_id')::uuid, sum((c.data->>'cost_tokens')::float8)
FROM events c JOIN events s ON s.stream_id = c.stream_id AND s.version = 1
WHERE c.type = 'JobCompleted.v1' AND c.data->>'quota_day' IS NOT NULL
GROUP BY 1, 2;
