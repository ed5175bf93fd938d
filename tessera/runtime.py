"""Where the running platform is: env vars first, else the file `tessera up` writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from base.config import Settings


def runtime_file(settings: Settings) -> Path:
    return settings.data_dir / "runtime.json"


def write(settings: Settings, **values: str) -> None:
    path = runtime_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the NATS URL holds the admin password
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(values, indent=2))
    path.chmod(0o600)


def clear(settings: Settings) -> None:
    runtime_file(settings).unlink(missing_ok=True)


def urls(settings: Settings) -> tuple[str, str]:
    """(NATS URL, database URL) from the environment, or from a running `tessera up`."""
    nats_url, database_url = settings.nats_url, settings.database_url
    if not (nats_url and database_url):
        path = runtime_file(settings)
        if path.exists():
            found = json.loads(path.read_text())
            nats_url = nats_url or found.get("nats_url")
            database_url = database_url or found.get("database_url")
    if not (nats_url and database_url):
        raise SystemExit(
            "tessera: set TESSERA_NATS_URL and TESSERA_DATABASE_URL, or start the platform "
            f"with `tessera up` (looked for {runtime_file(settings)})"
        )
    os.environ.setdefault("TESSERA_NATS_URL", nats_url)
    os.environ.setdefault("TESSERA_DATABASE_URL", database_url)
    return nats_url, database_url
