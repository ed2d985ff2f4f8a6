"""The backend publisher: never blocks, loses nothing that fits its buffer, says what it drops."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from tier3.streams.backend.publisher import Publisher, PublisherConfig
from tier3.streams.demo.simulate import simulate
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES, FEEDBACK, create_topics
from tier3.streams.local.kafka_broker import LocalBroker

from tests.support.kafka_reading import read_all, read_events
from tests.support.ports import free_port
from tests.support.samples import SAMPLES


def _experiences(n: int, seed: int = 1) -> list[dict]:
    return [e.record for e in simulate(n, seed) if e.event == "Experience"][:n]


def test_published_events_arrive_keyed_by_query_id(kafka: KafkaSettings) -> None:
    with Publisher(kafka, enabled=True) as publisher:
        assert publisher.publish_experience(SAMPLES["Experience"])
        assert publisher.publish_feedback(SAMPLES["Feedback"])
    assert read_events(kafka, EXPERIENCES) == [("Experience", SAMPLES["Experience"])]
    assert read_events(kafka, FEEDBACK) == [("Feedback", SAMPLES["Feedback"])]
    assert [m.key for m in read_all(kafka, FEEDBACK)] == ["q-1"]
    assert publisher.stats.delivered == 2 and publisher.stats.failed == 0


def test_same_query_lands_in_the_same_partition_on_both_topics(kafka: KafkaSettings) -> None:
    events = list(simulate(60, seed=3))
    with Publisher(kafka, enabled=True) as publisher:
        for e in events:
            publisher.publish(e.event, e.key, e.record)
    partition_of = {m.key: m.partition for m in read_all(kafka, EXPERIENCES)}
    feedback = read_all(kafka, FEEDBACK)
    assert feedback
    assert all(partition_of[m.key] == m.partition for m in feedback)


def test_broker_down_publish_returns_and_failure_is_reported() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", topic_prefix="down.")
    publisher = Publisher(settings, PublisherConfig(delivery_timeout_ms=1500), enabled=True)
    accepted = [publisher.publish_experience(r) for r in _experiences(20)]
    assert all(accepted)  # queued, not waiting on a broker that is not there
    with capture_logs() as logs:
        remaining = publisher.close(timeout=10)
    assert remaining == 0
    assert publisher.stats.failed == 20
    assert publisher.stats.delivered == 0
    assert publisher.stats.last_error
    assert any(e["event"] == "event not delivered" for e in logs)


_BACKEND = """
import sys, time
{logging}
from tier3.streams.backend.publisher import Publisher, PublisherConfig
from tier3.streams.kafka.settings import KafkaSettings
settings = KafkaSettings(bootstrap_servers=sys.argv[1], topic_prefix="down.")
publisher = Publisher(settings, PublisherConfig(delivery_timeout_ms=1500), enabled=True)
publisher.publish_feedback({feedback!r})
time.sleep(1.0)  # librdkafka reports the refused connection, over and over
publisher.close(timeout=5)
"""


@pytest.mark.parametrize("configured", [False, True], ids=["no-logging", "basicConfig"])
def test_a_backend_that_configures_no_logging_hears_nothing_from_tier3(configured: bool) -> None:
    """A library must not print on its own: with the broker down, a program that set up no
    logging prints nothing (no warning from librdkafka through Python's last-resort handler, no
    structlog line on stdout); one that calls logging.basicConfig() gets both in its own log."""
    code = _BACKEND.format(
        logging="import logging; logging.basicConfig()" if configured else "",
        feedback=SAMPLES["Feedback"],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    done = subprocess.run(
        [sys.executable, "-c", code, f"127.0.0.1:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    if not configured:
        assert (done.stdout, done.stderr) == ("", "")
    else:
        assert done.stdout == ""
        assert "tier3.librdkafka" in done.stderr and "Connection refused" in done.stderr
        assert "WARNING:tier3.publisher:kafka client error" in done.stderr
        assert "ERROR:tier3.publisher:event not delivered" in done.stderr


def test_a_broker_that_stays_down_is_logged_once_per_kind_of_error() -> None:
    """librdkafka reports a refused connection at every reconnect attempt; the publisher's log
    says each kind once (then at most every ERROR_LOG_EVERY_S), not a line every few 100 ms."""
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", topic_prefix="down.")
    with capture_logs() as logs:
        publisher = Publisher(settings, enabled=True)
        time.sleep(3.0)  # reconnects back off from 100 ms: several attempts, each refused
        publisher.close(timeout=1)
    errors = [e for e in logs if e["event"] == "kafka client error"]
    assert errors, "the refused connection was not logged"
    codes = [e["code"] for e in errors]
    assert len(codes) == len(set(codes)), codes
    assert publisher.stats.last_error


def test_full_buffer_drops_counts_and_logs_without_blocking() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", topic_prefix="full.")
    config = PublisherConfig(buffer_messages=10, delivery_timeout_ms=1000)
    publisher = Publisher(settings, config, enabled=True)
    with capture_logs() as logs:
        outcomes = [publisher.publish_experience(r) for r in _experiences(50)]
    assert outcomes.count(True) == 10
    assert publisher.stats.dropped == 40
    drops = [e for e in logs if e["event"] == "publisher buffer full: dropping events"]
    assert len(drops) == 1  # rate-limited: one line, with the running total
    assert drops[0]["dropped_total"] == 1
    publisher.close(timeout=5)


def test_capture_switch_off_makes_publish_a_no_op(
    kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_TIER3_CAPTURE", "false")
    publisher = Publisher(kafka)
    assert publisher.enabled is False
    assert publisher.publish_experience(SAMPLES["Experience"]) is False
    assert publisher.stats.disabled == 1
    publisher.close()
    assert read_all(kafka, EXPERIENCES, timeout=2) == []


def test_usable_from_asyncio(kafka: KafkaSettings) -> None:
    async def backend() -> int:
        publisher = Publisher(kafka, enabled=True)
        for r in _experiences(5):
            publisher.publish_experience(r)
            await asyncio.sleep(0)
        return await publisher.aclose()

    assert asyncio.run(backend()) == 0
    assert len(read_all(kafka, EXPERIENCES)) == 5


@pytest.mark.slow
def test_events_published_during_a_broker_restart_arrive_once(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path, port=free_port(), controller_port=free_port())
    broker.start()
    try:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="restart.")
        create_topics(settings)
        records = _experiences(200, seed=7)
        publisher = Publisher(settings, enabled=True)
        for r in records[:100]:
            assert publisher.publish_experience(r)
        assert publisher.flush(30) == 0
        broker.stop()
        for r in records[100:]:
            assert publisher.publish_experience(r)  # broker away: queued, not refused
        broker.start()
        assert publisher.close(timeout=60) == 0
        keys = [m.key for m in read_all(settings, EXPERIENCES, timeout=20)]
        assert sorted(keys) == sorted(r["query_id"] for r in records)  # all, none twice
        assert publisher.stats.failed == 0
    finally:
        broker.stop()


def test_a_record_that_breaks_its_schema_is_counted_not_raised(kafka: KafkaSettings) -> None:
    with capture_logs() as logs, Publisher(kafka, enabled=True) as publisher:
        assert not publisher.publish_experience({**SAMPLES["Experience"], "confidence": "high"})
        assert publisher.publish_experience(SAMPLES["Experience"])
    assert publisher.stats.invalid == 1
    assert publisher.stats.delivered == 1
    invalid = [e for e in logs if e["event"] == "event does not fit its schema; not published"]
    assert len(invalid) == 1 and invalid[0]["event_type"] == "Experience"
    assert len(read_all(kafka, EXPERIENCES)) == 1


def test_metrics_expose_the_outcomes(kafka: KafkaSettings) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    with Publisher(kafka, enabled=True) as publisher:
        publisher.register_metrics(registry)
        publisher.publish_feedback(SAMPLES["Feedback"])
    text = generate_latest(registry).decode()
    assert 'tier3_publisher_events_total{outcome="delivered"} 1.0' in text
    assert 'tier3_publisher_events_total{outcome="dropped"} 0.0' in text


def test_publish_after_close_is_refused(kafka: KafkaSettings) -> None:
    publisher = Publisher(kafka, enabled=True)
    publisher.close()
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish_experience(SAMPLES["Experience"])
