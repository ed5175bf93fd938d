"""A remote worker joins over TLS: a nats-server with a certificate signed by a self-made
authority (made here with `cryptography`), and a worker that trusts that authority through
TESSERA_NATS_CA."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from nats.aio.client import Client as NATS

from streams import connection, topology
from streams import subjects as s
from streams.messages import WorkerStatus
from tessera.embedded import EmbeddedNats
from tessera.nats_auth import Credentials
from worker_node.engines import build
from worker_node.service import Worker


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.now(UTC)

    def certificate(
        subject: str,
        key: rsa.RSAPrivateKey,
        issuer: str,
        signer: rsa.RSAPrivateKey,
        *extensions: tuple[x509.ExtensionType, bool],
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = certificate(
        "Tessera test CA", ca_key, "Tessera test CA", ca_key, (x509.BasicConstraints(ca=True, path_length=None), True)
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = certificate(
        "localhost",
        key,
        "Tessera test CA",
        ca_key,
        (
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            False,
        ),
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Credentials, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    credentials = Credentials(tmp_path / "credentials.json")
    credentials.ensure(["admin", "worker:remote-1"])
    server = EmbeddedNats(
        tmp_path / "nats", authorization=credentials.authorization(), tls_cert=cert, tls_key=key
    ).start(preferred_port=None)
    try:
        yield server, credentials, ca
    finally:
        server.stop()


async def test_a_worker_joins_over_tls_with_its_own_credentials(
    tls_nats: tuple[EmbeddedNats, Credentials, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, credentials, ca = tls_nats
    assert server.url.startswith("tls://")
    monkeypatch.setenv("TESSERA_NATS_CA", str(ca))
    admin = await connection.connect_once(credentials.url(server.url, "admin"), "test-admin")
    try:
        await topology.ensure(admin.jetstream())
        worker = Worker(
            nats_url=credentials.url(server.url, "worker:remote-1"),
            worker_id="remote-1",
            engines=[build("echo")],
            heartbeat_interval_s=0.3,
        )
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
    tls_nats: tuple[EmbeddedNats, Credentials, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, credentials, _ = tls_nats
    monkeypatch.delenv("TESSERA_NATS_CA", raising=False)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = NATS()
    try:
        with pytest.raises((nats.errors.Error, OSError)):
            await asyncio.wait_for(
                nc.connect(
                    credentials.url(server.url, "admin"), allow_reconnect=False, connect_timeout=5, error_cb=on_error
                ),
                20,
            )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in errors), errors
