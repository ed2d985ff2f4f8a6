"""A local broker of its own with SASL/SCRAM on, for the security tests (never the shared one).

Started once per test session, on free ports and a temporary home, and stopped at the end. It
has two client listeners: SASL_PLAINTEXT, and SASL_SSL with a certificate from a throwaway CA
made here (the ``cryptography`` package), valid for 127.0.0.1. It enforces ACLs (KRaft's
StandardAuthorizer): the application user ``CLIENT`` is granted everything through ACLs, and
``STRANGER`` logs in but is granted nothing, for the "not authorized" tests.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.local.kafka_broker import LocalBroker
from tier3.streams.local.sasl_broker import (
    ScramUser,
    TlsListener,
    grant_everything,
    sasl_server_config,
)

from tests.support.ports import free_port

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
CLIENT = ScramUser("tier3-app", "pw-" + secrets.token_hex(12))
STRANGER = ScramUser("tier3-stranger", "pw-" + secrets.token_hex(12))


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1: (server key+chain PEM, CA PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tier3 test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    keystore, ca_file = folder / "server.pem", folder / "ca.pem"
    keystore.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + server.public_bytes(pem)
        + ca.public_bytes(pem)
    )
    ca_file.write_bytes(ca.public_bytes(pem))
    return keystore, ca_file


@dataclass
class SaslBroker:
    broker: LocalBroker
    client: ScramUser
    tls_bootstrap: str
    ca_file: Path
    stranger: ScramUser = STRANGER  # authenticated, granted no ACL

    def settings(self, **overrides: object) -> KafkaSettings:
        """Client settings that log in as the application user."""
        values = {
            "bootstrap_servers": self.broker.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": self.client.name,
            "sasl_password": self.client.password,
            **overrides,
        }
        return KafkaSettings(**values)


@pytest.fixture(scope="session")
def sasl() -> Iterator[SaslBroker]:
    """A broker that asks for SASL/SCRAM (and offers TLS), started the first time a test asks for
    it and stopped at the session's end."""
    home = Path(tempfile.mkdtemp(prefix="tier3-sasl-"))
    port, controller, tls_port = free_port(), free_port(), free_port()
    keystore, ca_file = make_certificates(home)
    tls = TlsListener(tls_port, str(keystore))
    broker = LocalBroker(
        home=home,
        port=port,
        controller_port=controller,
        heap="384m",
        extra_config=sasl_server_config(
            port, controller, ADMIN_PASSWORD, [CLIENT, STRANGER], tls, authorizer=True
        ),
    )
    try:
        broker.start(timeout=120)
        grant_everything(broker.bootstrap, ADMIN_PASSWORD, CLIENT.name)
        yield SaslBroker(broker, CLIENT, f"127.0.0.1:{tls_port}", ca_file)
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)
