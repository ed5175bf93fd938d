"""NATS credentials: one user per role, random passwords kept in the data directory.

`tessera up` makes them once (file mode 0600), writes them with each role's permissions
(streams/permissions.py) into the embedded nats-server's configuration, and starts each service
with its own URL, `nats://<user>:<password>@host:port`. `tessera workers credentials` adds a
worker's user and has the running server reload its configuration.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from base.config import Settings
from streams import permissions
from tessera.embedded import EmbeddedNats

CORE_ROLES = ("admin", "scheduler", "gateway", "projector", "webhooks")


def credentials_file(settings: Settings) -> Path:
    return settings.data_dir / "nats" / "credentials.json"


class Credentials:
    """Role name (`scheduler`, `worker:<id>`, ...) to password, stored in one JSON file only its owner reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def ensure(self, roles: Iterable[str]) -> list[str]:
        """Give every role in `roles` a password if it has none; returns the roles added."""
        added = []
        for name in roles:
            permissions.role(name)  # refuses a name that is no role
            if name not in self.passwords:
                self.passwords[name] = secrets.token_urlsafe(24)
                added.append(name)
        if added or not self.path.exists():
            self._save()
        return added

    def remove(self, role: str) -> bool:
        """Forget `role`'s password; False when it had none."""
        if self.passwords.pop(role, None) is None:
            return False
        self._save()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.passwords, out, indent=2, sort_keys=True)
        self.path.chmod(0o600)

    def url(self, server_url: str, role: str) -> str:
        """`server_url` with `role`'s user and password in it."""
        return with_user(server_url, permissions.role(role).user, self.passwords[role])

    def authorization(self, roles: Iterable[str] | None = None) -> str:
        """nats-server's `authorization { users = [...] }` block for `roles` (default: every role here)."""
        names = list(self.passwords) if roles is None else list(roles)
        return authorization_block({name: self.passwords[name] for name in names})


def with_user(server_url: str, user: str, password: str) -> str:
    parts = urlsplit(server_url)
    return parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}").geturl()


def without_user(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl()


def user_entry(role_name: str, password: str) -> str:
    """One user of an `authorization` block: its name, password and permissions."""
    role = permissions.role(role_name)
    entry: dict[str, object] = {"user": role.user, "password": password}
    granted = role.permissions()
    if granted is not None:
        entry["permissions"] = granted
    return f"    # {role.name}\n    " + json.dumps(entry)


def authorization_block(passwords: dict[str, str]) -> str:
    """The block to put in a nats-server configuration (quoted strings, so `$JS...` is no variable)."""
    users = ",\n".join(user_entry(name, password) for name, password in passwords.items())
    return "authorization {\n  users = [\n" + users + "\n  ]\n}\n"


def embedded_server(settings: Settings, credentials: Credentials | None) -> EmbeddedNats:
    """The embedded nats-server as `tessera up` configures it: its store, users, TLS and address."""
    return EmbeddedNats(
        settings.data_dir / "nats",
        authorization=credentials.authorization() if credentials else None,
        tls_cert=settings.nats_tls_cert,
        tls_key=settings.nats_tls_key,
        host=settings.nats_host,
        sync_interval=settings.nats_sync,
        memory_limit_mb=settings.nats_memory_limit_mb or None,
    )
