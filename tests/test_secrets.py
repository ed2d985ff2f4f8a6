"""Secrets never appear in logs or in events.

The whole pipeline runs as an operator would run it, as separate ``tier3`` processes at DEBUG log
level, against a SASL/SCRAM broker, with the Kafka password and an Anthropic API key in the
environment: topics are created, traffic is published, a replay makes capture jobs, the capture
consumer asks the (fake, real-HTTP) Anthropic API, the operator tools look around and delete a
trace. Then every line those processes printed and every byte on every topic is searched for
the secrets.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import structlog
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import simulate
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import expected_topics
from tier3.streams.telemetry.logs import configure_logging

from tests.support.sasl_broker import SaslBroker
from tests.support.servers import AnthropicServer

pytestmark = pytest.mark.slow

API_KEY = "sk-ant-api03-" + uuid.uuid4().hex


def _tier3(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "tier3"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _everything_on(settings: KafkaSettings) -> bytes:
    """Every key, value and header byte of every tier3 topic."""
    blob = bytearray()
    for spec in expected_topics(settings):
        for msg in read_to_end(settings, spec.name, timeout=30):
            blob += (msg.key() or b"") + (msg.value() or b"")
            for name, value in msg.headers() or []:
                blob += name.encode() + (value or b"")
    return bytes(blob)


def test_no_secret_in_any_log_line_or_event(sasl: SaslBroker, tmp_path: Path) -> None:
    password = sasl.client.password
    prefix = f"sec{uuid.uuid4().hex[:8]}."
    with AnthropicServer() as anthropic:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
        env |= {
            "TIER3_BOOTSTRAP_SERVERS": sasl.broker.bootstrap,
            "TIER3_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "TIER3_SASL_USERNAME": sasl.client.name,
            "TIER3_SASL_PASSWORD": password,
            "TIER3_TOPIC_PREFIX": prefix,
            "TIER3_PARTITIONS": "2",
            "TIER3_HOME": str(tmp_path / "home"),
            "TIER3_LOG_LEVEL": "DEBUG",
            "TIER3_LOG_JSON": "1",
            "ANTHROPIC_API_KEY": API_KEY,
            "TIER3_ANTHROPIC_BASE_URL": anthropic.url,
            "TIER3_STUDENT_PROVIDER": "offline",
            "TIER3_GROUP": f"{prefix}capture",
        }
        printed: list[str] = []

        def run(*args: str) -> subprocess.CompletedProcess:
            done = _tier3(env, *args)
            printed.append(done.stdout + done.stderr)
            assert done.returncode == 0, done.stderr[-2000:]
            return done

        run("topics", "create")
        run("simulate", "--events", "20", "--seed", "7")
        run("replay", "resample", "--sample-rate", "1", "--execute")
        settings = KafkaSettings(
            bootstrap_servers=sasl.broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_username=sasl.client.name,
            sasl_password=password,
            topic_prefix=prefix,
        )
        capture = subprocess.Popen(
            [str(Path(sys.executable).parent / "tier3"), "run", "capture"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            traced = 0
            while traced < 20 and time.monotonic() < deadline:
                time.sleep(0.5)
                status = json.loads(run("status", "--json").stdout)
                traced = {t["name"]: t["messages"] for t in status["topics"]}[f"{prefix}traces"]
        finally:
            capture.send_signal(signal.SIGTERM)
            printed.append(capture.communicate(timeout=60)[0])
        assert traced == 20
        assert anthropic.requests  # the teacher was really asked, with the key
        run("groups", "list")
        run("groups", "describe", f"{prefix}capture")
        assert json.loads(run("replay", "recapture", "--json").stdout)["jobs"] == 20
        run("traces", "delete", "--query-id", "some-query")
        # A failed login prints an error; the error must not carry the password either.
        printed.append(_tier3({**env, "TIER3_SASL_PASSWORD": password + "x"}, "status").stdout)

    logs = "\n".join(printed)
    assert "replay sent" in logs and "capture consumer started" in logs  # the stages did log
    assert password not in logs
    assert API_KEY not in logs
    events = _everything_on(settings)
    assert len(events) > 10_000  # the topics hold the run's events ...
    assert password.encode() not in events  # ... and no secret
    assert API_KEY.encode() not in events


def test_settings_never_render_their_secrets() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_username="app", sasl_password="s3cr3t-value"
    )
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings.model_dump())
    assert "s3cr3t-value" not in settings.model_dump_json()
    assert settings.client_config()["sasl.password"] == "s3cr3t-value"  # given only to librdkafka


def test_the_publisher_logs_no_secret_when_the_broker_refuses_it(
    sasl: SaslBroker, capfd: pytest.CaptureFixture[str]
) -> None:
    structlog.reset_defaults()
    configure_logging("DEBUG", json_logs=True)
    wrong = sasl.settings(sasl_password="wrong-" + sasl.client.password)
    publisher = Publisher(wrong, enabled=True)
    for ev in simulate(5, seed=1):
        publisher.publish(ev.event, ev.key, ev.record)
    publisher.close(3)
    # Publisher.close() keeps its librdkafka client (which references the publisher back through
    # its callbacks); drop it so it stops retrying now, not at interpreter exit.
    publisher._producer = None
    gc.collect()
    out = capfd.readouterr()
    assert "kafka client error" in out.out + out.err  # the refusal was logged ...
    assert sasl.client.password not in out.out + out.err  # ... without the password
