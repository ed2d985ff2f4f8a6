"""The broker with SASL/SCRAM on: an unauthenticated or wrongly authenticated client is refused,
an authenticated one works, with the password from the environment or from a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from tier3.schemas.registry import CAPTURE_JOB
from tier3.streams.kafka.events import EventProducer, codec_of
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, create_topics, describe_topics
from tier3.streams.local.sasl_broker import ScramUser

from tests.support.samples import SAMPLES
from tests.support.sasl_broker import SaslBroker

pytestmark = pytest.mark.slow


def _refused(config: dict) -> str:
    """The error a client gets; fails the test if the broker answers it."""
    admin = AdminClient({**config, "log_level": 0})
    with pytest.raises(KafkaException) as caught:
        admin.list_topics(timeout=3)
    return str(caught.value)


def test_an_unauthenticated_client_is_refused(sasl: SaslBroker) -> None:
    _refused({"bootstrap.servers": sasl.broker.bootstrap})


def test_a_wrong_password_is_refused(sasl: SaslBroker) -> None:
    wrong = sasl.settings(sasl_password="not-the-password").client_config()
    message = _refused(wrong)
    assert "not-the-password" not in message


def test_an_authenticated_client_creates_topics_and_round_trips_an_event(
    sasl: SaslBroker,
) -> None:
    settings = sasl.settings(topic_prefix=f"sasl{time.time_ns()}.", partitions=1)
    create_topics(settings)
    assert all(report.ok for report in describe_topics(settings))
    producer = EventProducer(settings)
    producer.send_and_wait(CAPTURE_JOBS, CAPTURE_JOB, "q-1", SAMPLES["CaptureJob"])
    codec = codec_of(settings)
    events = [codec.decode(m.value()) for m in read_to_end(settings, CAPTURE_JOBS, timeout=20)]
    assert [(e.name, e.record) for e in events] == [(CAPTURE_JOB, SAMPLES["CaptureJob"])]


def test_the_password_can_come_from_a_file(sasl: SaslBroker, tmp_path: Path) -> None:
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(sasl.client.password + "\n")
    settings = sasl.settings(sasl_password=None, sasl_password_file=str(secret_file))
    admin = AdminClient({**settings.client_config(), "log_level": 0})
    assert admin.list_topics(timeout=10).brokers


def test_sasl_without_credentials_is_a_clear_configuration_error() -> None:
    settings = KafkaSettings(security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValueError, match="TIER3_SASL_USERNAME"):
        settings.client_config()


def test_scram_users_never_show_their_password() -> None:
    assert "hunter2" not in repr(ScramUser("alice", "hunter2"))
    with pytest.raises(ValueError):
        ScramUser("alice", 'bad"quote')


def test_the_cli_connects_with_credentials_from_the_environment(sasl: SaslBroker) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env |= {
        "TIER3_BOOTSTRAP_SERVERS": sasl.broker.bootstrap,
        "TIER3_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TIER3_SASL_USERNAME": sasl.client.name,
        "TIER3_SASL_PASSWORD": sasl.client.password,
        "TIER3_TOPIC_PREFIX": f"cli{time.time_ns()}.",
    }
    tier3 = str(Path(sys.executable).parent / "tier3")
    created = subprocess.run(
        [tier3, "topics", "create"], env=env, capture_output=True, text=True, timeout=60
    )
    assert created.returncode == 0, created.stderr
    status = subprocess.run([tier3, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "up at" in status.stdout
    env["TIER3_SASL_PASSWORD"] = "wrong"
    refused = subprocess.run([tier3, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 5 and "authentication failed" in refused.stdout


def test_broker_start_sasl_from_the_command_line(tmp_path: Path) -> None:
    """With --acls (the default start is tested in test_cli_errors): the application user works
    through the ACLs it is granted."""
    from tests.support.ports import free_port_pair

    port = free_port_pair()
    password_file = tmp_path / "app-password"
    password_file.write_text("app-secret-123\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env |= {
        "TIER3_BROKER_ADMIN_PASSWORD": "admin-secret-456",
        "TIER3_SASL_USERNAME": "app",
        "TIER3_SASL_PASSWORD_FILE": str(password_file),
        "TIER3_BROKER_PORT": str(port),
        "TIER3_HOME": str(tmp_path / "home"),
    }
    tier3 = str(Path(sys.executable).parent / "tier3")
    started = subprocess.run(
        [tier3, "broker", "start-sasl", "--acls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"127.0.0.1:{port}"
        assert "secret" not in started.stdout + started.stderr
        client = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{port}",
            security_protocol="SASL_PLAINTEXT",
            sasl_username="app",
            sasl_password_file=str(password_file),
            topic_prefix="acl.",
            partitions=1,
        )
        assert AdminClient({**client.client_config(), "log_level": 0}).list_topics(timeout=10)
        created = create_topics(client)
        assert set(created.values()) == {"created"}
        _refused({"bootstrap.servers": f"127.0.0.1:{port}"})
    finally:
        subprocess.run([tier3, "broker", "stop"], env=env, capture_output=True, timeout=60)


def test_sasl_over_tls_with_the_ca_from_a_file(sasl: SaslBroker) -> None:
    settings = sasl.settings(
        bootstrap_servers=sasl.tls_bootstrap,
        security_protocol="SASL_SSL",
        ssl_ca_location=str(sasl.ca_file),
        topic_prefix=f"tls{time.time_ns()}.",
        partitions=1,
    )
    create_topics(settings)
    EventProducer(settings).send_and_wait(CAPTURE_JOBS, CAPTURE_JOB, "q-1", SAMPLES["CaptureJob"])
    codec = codec_of(settings)
    events = [codec.decode(m.value()) for m in read_to_end(settings, CAPTURE_JOBS, timeout=20)]
    assert [e.name for e in events] == [CAPTURE_JOB]


def test_tls_refuses_a_client_that_does_not_trust_the_broker(sasl: SaslBroker) -> None:
    # Without the CA, the broker's certificate does not verify: no connection, no password sent.
    untrusting = sasl.settings(bootstrap_servers=sasl.tls_bootstrap, security_protocol="SASL_SSL")
    _refused(untrusting.client_config())
    # And a plain SASL client cannot talk to the TLS port.
    _refused(sasl.settings(bootstrap_servers=sasl.tls_bootstrap).client_config())
