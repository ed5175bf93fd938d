-- Website sign-ups per client address in the last hour (issue 14's accounts): one client may not
-- make free accounts by the hundred to multiply the free plan's daily quota. Short-lived state,
-- like failed logins: rows older than the window are deleted as new sign-ups come.
CREATE TABLE web_signups (
    client  varchar(64)  NOT NULL,
    at      timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX idx_web_signups_client ON web_signups (client, at);
