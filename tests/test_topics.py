"""Topic creation and the drift check, as read back from the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import (
    EXPERIENCES,
    FEEDBACK,
    TRACES,
    admin_client,
    create_topics,
    describe_topics,
)
from tier3.streams.local.kafka_broker import LocalBroker

from tests.support.broker import fresh_settings


def test_topics_have_the_design_configuration(kafka: KafkaSettings) -> None:
    reports = {r.name: r for r in describe_topics(kafka)}
    assert all(r.ok for r in reports.values()), [r.drift for r in reports.values() if r.drift]
    traces = reports[kafka.topic(TRACES)]
    assert traces.config["cleanup.policy"] == "compact"
    assert reports[kafka.topic(EXPERIENCES)].partitions == reports[kafka.topic(FEEDBACK)].partitions
    assert reports[kafka.topic(EXPERIENCES)].config["cleanup.policy"] == "delete"
    dlqs = [name for name in reports if name.endswith(".dlq")]
    assert kafka.topic("capture-jobs.dlq") in dlqs and kafka.topic("traces.dlq") in dlqs


def test_create_is_idempotent(kafka: KafkaSettings) -> None:
    again = create_topics(kafka)
    assert set(again.values()) == {"exists"}


def test_describe_reports_drift(kafka: KafkaSettings) -> None:
    resource = ConfigResource(
        ResourceType.TOPIC,
        kafka.topic(TRACES),
        incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin = admin_client(kafka)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()
    deadline = time.monotonic() + 10  # the broker applies the controller's change asynchronously
    while True:
        traces = next(r for r in describe_topics(kafka) if r.name == kafka.topic(TRACES))
        if not traces.ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not traces.ok
    assert traces.drift == ["cleanup.policy=delete (expected compact)"]


def test_cli_creates_and_describes_as_json(broker: LocalBroker) -> None:
    prefix = fresh_settings(broker).topic_prefix.replace(".", "-cli.")
    env = {**os.environ, "TIER3_BOOTSTRAP_SERVERS": broker.bootstrap, "TIER3_TOPIC_PREFIX": prefix}
    tier3 = [sys.executable, "-m", "tier3.streams"]
    created = subprocess.run([*tier3, "topics", "create"], env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    assert f"created  {prefix}traces" in created.stdout
    described = subprocess.run(
        [*tier3, "topics", "describe", "--json"], env=env, capture_output=True, text=True
    )
    assert described.returncode == 0, described.stderr
    rows = {row["name"]: row for row in json.loads(described.stdout)}
    assert rows[f"{prefix}traces"]["config"]["cleanup.policy"] == "compact"
    assert all(row["ok"] for row in rows.values())


def test_cli_exits_non_zero_when_topics_are_missing(broker: LocalBroker) -> None:
    env = {
        **os.environ,
        "TIER3_BOOTSTRAP_SERVERS": broker.bootstrap,
        "TIER3_TOPIC_PREFIX": "absent.",
    }
    described = subprocess.run(
        [sys.executable, "-m", "tier3.streams", "topics", "describe"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert described.returncode == 4
    assert "missing" in described.stdout


def test_prefix_must_be_a_legal_topic_name() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="topic prefix"):
        KafkaSettings(topic_prefix="bad prefix/")
