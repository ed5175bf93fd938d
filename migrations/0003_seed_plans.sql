-- The four seed plans (shared/seeds/DATABASE_SCHEMA.md), appended as PlanDefined events so the
-- `plans` read model is fed like every other. Stream ids are uuid5(NAMESPACE, 'plan:<tier>').
INSERT INTO events (event_id, stream_type, stream_id, version, type, data, causation_id) VALUES
('0f1d6c52-3b0e-4a43-9a55-7a2c1c000001', 'plan', '6307ab7b-fe86-5f3f-ab83-ae5f234f7ed1', 1, 'PlanDefined.v1',
 '{"type":"PlanDefined.v1","tier":"free","name":"Free","daily_token_limit":20,"requests_per_minute":6,"max_concurrent_jobs":1,"max_queued_jobs":3,"priority":0,"max_resolution":1024,"allowed_models":["sdxl"],"price_cents":0,"description":"Free tier with basic features"}',
 'migration:0003'),
('0f1d6c52-3b0e-4a43-9a55-7a2c1c000002', 'plan', '22f206ae-ce54-5aa6-9ed7-361ed4b2bfec', 1, 'PlanDefined.v1',
 '{"type":"PlanDefined.v1","tier":"starter","name":"Starter","daily_token_limit":120,"requests_per_minute":20,"max_concurrent_jobs":2,"max_queued_jobs":10,"priority":1,"max_resolution":1536,"allowed_models":["sdxl","flux-schnell"],"price_cents":500,"description":"Great for casual creators"}',
 'migration:0003'),
('0f1d6c52-3b0e-4a43-9a55-7a2c1c000003', 'plan', 'a8c88a68-6c5a-5592-9fd9-2262ba31f269', 1, 'PlanDefined.v1',
 '{"type":"PlanDefined.v1","tier":"pro","name":"Pro","daily_token_limit":300,"requests_per_minute":60,"max_concurrent_jobs":4,"max_queued_jobs":30,"priority":2,"max_resolution":2048,"allowed_models":["sdxl","flux-schnell","flux-dev"],"price_cents":1200,"description":"For serious creators"}',
 'migration:0003'),
('0f1d6c52-3b0e-4a43-9a55-7a2c1c000004', 'plan', '3ae8740f-f161-571b-a72f-923cb39f1511', 1, 'PlanDefined.v1',
 '{"type":"PlanDefined.v1","tier":"admin","name":"Admin","daily_token_limit":999999,"requests_per_minute":100000,"max_concurrent_jobs":100000,"max_queued_jobs":1000000,"priority":3,"max_resolution":4096,"allowed_models":["*"],"price_cents":0,"description":"Unlimited access for admins"}',
 'migration:0003');
