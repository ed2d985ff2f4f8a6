"""A local broker of its own with SASL/SCRAM on, for the security tests (never the shared one).

Started once per test session, on free ports and a temporary home, and stopped at the end.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tier3.streams.broker_sasl import ScramUser, sasl_server_config
from tier3.streams.local_broker import LocalBroker
from tier3.streams.settings import KafkaSettings

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)
CLIENT = ScramUser("tier3-app", "pw-" + secrets.token_hex(12))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SaslBroker:
    broker: LocalBroker
    client: ScramUser

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


_STARTED: list[SaslBroker] = []


@pytest.fixture(scope="session", name="sasl")
def sasl_broker() -> Iterator[SaslBroker]:
    if _STARTED:  # imported by several test modules: one broker for all of them
        yield _STARTED[0]
        return
    home = Path(tempfile.mkdtemp(prefix="tier3-sasl-"))
    port, controller = free_port(), free_port()
    broker = LocalBroker(
        home=home,
        port=port,
        controller_port=controller,
        heap="384m",
        extra_config=sasl_server_config(port, controller, ADMIN_PASSWORD, [CLIENT]),
    )
    broker.start(timeout=120)
    _STARTED.append(SaslBroker(broker, CLIENT))
    try:
        yield _STARTED[0]
    finally:
        broker.stop()
        _STARTED.clear()
        shutil.rmtree(home, ignore_errors=True)
