"""A remote worker joins over TLS: a nats-server with a certificate signed by a self-made
authority, and a worker that trusts that authority through TESSERA_NATS_CA."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from streams import connection, topology
from streams import subjects as s
from streams.messages import WorkerStatus
from tessera.embedded import EmbeddedNats
from tessera.nats_auth import Credentials
from worker_node.engines import build
from worker_node.service import Worker

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority, and a server certificate it signed for 127.0.0.1 and localhost."""
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, csr, cert, ext = folder / "server.key", folder / "server.csr", folder / "server.pem", folder / "san.ext"

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Tessera test CA",
            "-keyout", ca_key, "-out", ca_cert)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
    ext.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
            "-extfile", ext, "-out", cert)
    return ca_cert, cert, key


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Credentials, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    credentials = Credentials(tmp_path / "credentials.json")
    credentials.ensure(["admin", "worker:remote-1"])
    server = EmbeddedNats(tmp_path / "nats", authorization=credentials.authorization(), tls_cert=cert,
                          tls_key=key).start(preferred_port=None)
    try:
        yield server, credentials, ca
    finally:
        server.stop()


async def test_a_worker_joins_over_tls_with_its_own_credentials(
        tls_nats: tuple[EmbeddedNats, Credentials, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, credentials, ca = tls_nats
    assert server.url.startswith("tls://")
    monkeypatch.setenv("TESSERA_NATS_CA", str(ca))
    admin = await connection.connect_once(credentials.url(server.url, "admin"), "test-admin")
    try:
        await topology.ensure(admin.jetstream())
        worker = Worker(nats_url=credentials.url(server.url, "worker:remote-1"), worker_id="remote-1",
                        engines=[build("echo")], heartbeat_interval_s=0.3)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 15)
            kv = await admin.jetstream().key_value(s.WORKERS_BUCKET)
            status = msgspec.json.decode((await kv.get("remote-1")).value, type=WorkerStatus)
            assert status.worker_id == "remote-1" and "echo" in status.models
            assert "TLS required for client connections" in (server.store_dir / "nats-server.log").read_text()
        finally:
            await worker.stop()
            await asyncio.wait_for(task, 15)
    finally:
        await admin.close()


async def test_a_client_that_does_not_trust_the_authority_is_refused(
        tls_nats: tuple[EmbeddedNats, Credentials, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, credentials, _ = tls_nats
    monkeypatch.delenv("TESSERA_NATS_CA", raising=False)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = NATS()
    try:
        with pytest.raises((nats.errors.Error, OSError)):
            await asyncio.wait_for(nc.connect(credentials.url(server.url, "admin"), allow_reconnect=False,
                                              connect_timeout=5, error_cb=on_error), 20)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in errors), errors
