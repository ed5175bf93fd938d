-- Keys can be listed, labelled, revoked and rotated (issue 11). A revoked key's row stays, marked,
-- so its owner still sees it in the list; the gateway takes only keys that are not revoked.
ALTER TABLE api_keys ADD COLUMN label varchar(100);
ALTER TABLE api_keys ADD COLUMN revoked_at timestamptz;
ALTER TABLE frontend_keys ADD COLUMN revoked_at timestamptz;
CREATE INDEX idx_frontend_keys_bot ON frontend_keys (frontend, bot_id);
