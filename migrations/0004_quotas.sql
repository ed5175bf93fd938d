-- Quotas, pricing and plan changes (issue 3).

-- Operators may define plans beyond the four seed tiers, and a plan may have no daily token limit.
ALTER TABLE plans DROP CONSTRAINT IF EXISTS plans_tier_check;
ALTER TABLE plans ALTER COLUMN daily_token_limit DROP NOT NULL;

-- The tokens a job holds against its user's quota, and the quota day they count against.
ALTER TABLE jobs ADD COLUMN reserved_tokens numeric(10, 2) NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN quota_day date;

-- Measured execution times per model, for honest estimates.
CREATE TABLE model_stats (
    model                   varchar(100) PRIMARY KEY,
    jobs_completed          bigint         NOT NULL,
    total_execution_seconds numeric(18, 6) NOT NULL  -- exact sums: a rebuild must equal the live model
);

-- The scheduler sums the tokens charged on recent quota days when it starts.
CREATE INDEX events_completed_quota_day ON events ((data->>'quota_day')) WHERE type = 'JobCompleted.v1';

-- The seeds say Admin is unlimited: its second definition has no daily token limit.
INSERT INTO events (event_id, stream_type, stream_id, version, type, data, causation_id) VALUES
('0f1d6c52-3b0e-4a43-9a55-7a2c1c000104', 'plan', '3ae8740f-f161-571b-a72f-923cb39f1511', 2, 'PlanDefined.v1',
 '{"type":"PlanDefined.v1","tier":"admin","name":"Admin","daily_token_limit":null,"requests_per_minute":100000,"max_concurrent_jobs":100000,"max_queued_jobs":1000000,"priority":3,"max_resolution":4096,"allowed_models":["*"],"price_cents":0,"description":"Unlimited access for admins"}',
 'migration:0004');
