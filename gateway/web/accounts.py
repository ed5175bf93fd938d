"""Website accounts: email and password (argon2id), sessions, and throttled logins and sign-ups.

An account is a row of `web_accounts` beside the user it belongs to: `web:<email>`, registered by
an event like every user. The password hash lives outside the event log on purpose: a changed
password must replace the old hash, not keep it forever. Sessions are random tokens in a cookie;
the database keeps only their SHA-256, so a copy of the table opens no session.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from events.types import user_stream_id

MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_EMAIL = 100
# Failed logins tolerated in a window before further attempts are refused without checking.
FAILURE_WINDOW = timedelta(minutes=15)
FAILURES_PER_ACCOUNT = 5
FAILURES_PER_CLIENT = 30
SIGNUP_WINDOW = timedelta(hours=1)  # sign-ups counted per client address over this window

# A plain address: what the user id may hold (gateway.deps' web ids), one @, a dotted domain.
_EMAIL = re.compile(r"[a-z0-9_.+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+")
_hasher = PasswordHasher()  # argon2id with the library's current recommended cost
# Checked against when the account does not exist, so the answer takes as long either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(Exception):
    """A refused account action, with a stable code for the page and the API."""

    def __init__(self, code: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class Session:
    user_id: uuid.UUID
    email: str
    csrf_token: str
    expires_at: datetime

    @property
    def user_ref(self) -> str:
        return f"web:{self.email}"


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        raise AccountError("INVALID_EMAIL", "enter an email address such as ada@example.com")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError("PASSWORD_TOO_SHORT", f"the password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError("PASSWORD_TOO_LONG", f"the password may have at most {MAX_PASSWORD} characters")
    if "\x00" in password:
        raise AccountError("INVALID_PASSWORD", "the password may not contain a NUL character")


async def _hash(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)  # ~50 ms of CPU: not on the event loop


async def _verify(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


async def create(
    conn: asyncpg.Connection, raw_email: str, password: str, client: str = "", per_hour: int = 0
) -> tuple[uuid.UUID, str]:
    """A new account: (its user id, the normalised email); EMAIL_TAKEN when it exists.
    SIGNUP_THROTTLED when `client` made `per_hour` accounts in the last hour (0: no limit); a sign-up
    refused for any reason is not counted."""
    email = normalize_email(raw_email)
    check_password(password)
    user_id = user_stream_id("web", email)
    if per_hour > 0:  # a throttled client costs no password hash (~50 ms of CPU each)
        await _check_signups(conn, client[:64], per_hour)
    password_hash = await _hash(password)
    async with conn.transaction():
        if per_hour > 0:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('web_signups'), hashtext($1))", client[:64])
            await _check_signups(conn, client[:64], per_hour)  # again, counted one at a time now
            await conn.execute("DELETE FROM web_signups WHERE at < $1", datetime.now(UTC) - SIGNUP_WINDOW)
            await conn.execute("INSERT INTO web_signups (client) VALUES ($1)", client[:64])
        inserted = await conn.fetchval(
            "INSERT INTO web_accounts (email, user_id, password_hash) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING email",
            email,
            user_id,
            password_hash,
        )
        if inserted is None:
            raise AccountError("EMAIL_TAKEN", "an account with this email exists; log in instead")
    return user_id, email


async def _check_signups(conn: asyncpg.Connection, client: str, per_hour: int) -> None:
    """Refuse with SIGNUP_THROTTLED when `client` made `per_hour` accounts in the last hour."""
    since = datetime.now(UTC) - SIGNUP_WINDOW
    oldest = await conn.fetch(
        "SELECT at FROM web_signups WHERE client = $1 AND at > $2 ORDER BY at LIMIT $3", client, since, per_hour
    )
    if len(oldest) >= per_hour:
        wait = oldest[0]["at"] + SIGNUP_WINDOW - datetime.now(UTC)
        raise AccountError(
            "SIGNUP_THROTTLED",
            f"too many accounts were made from your address in the last hour; try again in {_minutes(wait)}",
            retry_after=max(1, int(wait.total_seconds()) + 1),
        )


def _minutes(wait: timedelta) -> str:
    minutes = max(1, round(wait.total_seconds() / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


async def authenticate(conn: asyncpg.Connection, raw_email: str, password: str, client: str) -> tuple[uuid.UUID, str]:
    """The account's (user id, email) when the password is right. Refuses with LOGIN_THROTTLED,
    without checking the password, after too many recent failures for the account or the client."""
    email = raw_email.strip().lower()[:MAX_EMAIL]
    since = datetime.now(UTC) - FAILURE_WINDOW
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM web_login_failures WHERE email = $1 AND at > $3) AS by_account,"
        " (SELECT count(*) FROM web_login_failures WHERE client = $2 AND at > $3) AS by_client",
        email,
        client[:64],
        since,
    )
    if row["by_account"] >= FAILURES_PER_ACCOUNT or row["by_client"] >= FAILURES_PER_CLIENT:
        raise AccountError(
            "LOGIN_THROTTLED",
            "too many failed logins; wait a few minutes and try again",
            retry_after=int(FAILURE_WINDOW.total_seconds()),
        )
    account = await conn.fetchrow("SELECT user_id, password_hash FROM web_accounts WHERE email = $1", email)
    if account is None or not await _verify(account["password_hash"], password):
        if account is None:
            await _verify(_DUMMY_HASH, password)
        await conn.execute("INSERT INTO web_login_failures (email, client) VALUES ($1, $2)", email, client[:64])
        raise AccountError("LOGIN_FAILED", "the email or the password is not right")
    await conn.execute("DELETE FROM web_login_failures WHERE email = $1 OR at < $2", email, since)
    if _hasher.check_needs_rehash(account["password_hash"]):
        await conn.execute("UPDATE web_accounts SET password_hash = $2 WHERE email = $1", email, await _hash(password))
    return account["user_id"], email


async def set_password(conn: asyncpg.Connection, raw_email: str, password: str) -> uuid.UUID:
    """An operator's reset: the new password works at once and every session of the account ends."""
    email = normalize_email(raw_email)
    check_password(password)
    user_id: uuid.UUID | None = await conn.fetchval(
        "UPDATE web_accounts SET password_hash = $2, password_set_at = now() WHERE email = $1 RETURNING user_id",
        email,
        await _hash(password),
    )
    if user_id is None:
        raise AccountError("ACCOUNT_NOT_FOUND", f"no website account {email}")
    await conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM web_login_failures WHERE email = $1", email)
    return user_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(conn: asyncpg.Connection, user_id: uuid.UUID, ttl_s: float) -> str:
    """A new session's token (for the cookie); expired sessions are cleared on the way."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    await conn.execute("DELETE FROM web_sessions WHERE expires_at < $1", now)
    await conn.execute(
        "INSERT INTO web_sessions (token_hash, user_id, csrf_token, expires_at) VALUES ($1, $2, $3, $4)",
        _digest(token),
        user_id,
        secrets.token_urlsafe(24),
        now + timedelta(seconds=ttl_s),
    )
    return token


async def session(conn: asyncpg.Connection, token: str) -> Session | None:
    """The live session a cookie names, or None (unknown, ended or expired)."""
    if not token or len(token) > 100:
        return None
    row = await conn.fetchrow(
        "SELECT s.user_id, a.email, s.csrf_token, s.expires_at FROM web_sessions s"
        " JOIN web_accounts a ON a.user_id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > now()",
        _digest(token),
    )
    if row is None:
        return None
    return Session(
        user_id=row["user_id"], email=row["email"], csrf_token=row["csrf_token"], expires_at=row["expires_at"]
    )


async def close_session(conn: asyncpg.Connection, token: str) -> None:
    await conn.execute("DELETE FROM web_sessions WHERE token_hash = $1", _digest(token))
