-- The website's accounts (issue 14). These tables are not read models: a password hash must be
-- replaceable and deletable, and a session or a failed login is short-lived state, so none of
-- them is an event. The person behind an account is a user like any other: registered by a
-- UserRegistered event on the stream of `web:<email>`, with the plan, quota and jobs of a user.
CREATE TABLE web_accounts (
    email          varchar(100) PRIMARY KEY,  -- lower case; the user's platform_user_id
    user_id        uuid         NOT NULL UNIQUE,
    password_hash  text         NOT NULL,     -- argon2id, in the PHC string format
    created_at     timestamptz  NOT NULL DEFAULT now(),
    password_set_at timestamptz NOT NULL DEFAULT now()
);

-- A session is a random token in an HttpOnly cookie; only its SHA-256 is kept here.
CREATE TABLE web_sessions (
    token_hash   text        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    csrf_token   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX idx_web_sessions_user ON web_sessions (user_id);
CREATE INDEX idx_web_sessions_expires ON web_sessions (expires_at);

-- Failed logins, counted per account and per client address to throttle guessing.
CREATE TABLE web_login_failures (
    email   varchar(100) NOT NULL,
    client  varchar(64)  NOT NULL,
    at      timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX idx_web_login_failures_email ON web_login_failures (email, at);
CREATE INDEX idx_web_login_failures_client ON web_login_failures (client, at);
