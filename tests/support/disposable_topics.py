"""A ``kafka`` fixture whose topics are deleted after the test.

Every test makes a dozen topics under its own prefix; on the one broker that all test sessions
share, thousands of them pile up and exhaust its heap. Test modules that import this fixture
leave nothing behind. Deletion is best effort: a failure to clean up never fails a test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import expected_topics
from tier3.streams.local.kafka_broker import LocalBroker

from tests.conftest import fresh_settings


def delete_prefix(settings: KafkaSettings) -> None:
    """Delete every topic whose name starts with the settings' prefix."""
    admin = AdminClient({**settings.client_config(), "log_level": 0})
    try:
        names = [
            t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)
        ]
        for future in admin.delete_topics(names, operation_timeout=10).values() if names else []:
            future.result(timeout=15)
    except Exception:
        pass


def wait_for_leaders(settings: KafkaSettings, timeout: float = 60.0) -> None:
    """Wait until every partition of the prefix's topics has a leader: a broker under load
    elects them some time after the topics become visible."""
    admin = AdminClient({**settings.client_config(), "log_level": 0})
    deadline = time.monotonic() + timeout
    for spec in expected_topics(settings):
        name = settings.topic(spec.name)
        while time.monotonic() < deadline:
            meta = admin.list_topics(name, timeout=10).topics.get(name)
            if meta and meta.error is None and all(p.leader >= 0 for p in meta.partitions.values()):
                break
            time.sleep(0.2)


@pytest.fixture(name="kafka")
def disposable_kafka(broker: LocalBroker) -> Iterator[KafkaSettings]:
    """Kafka settings for this test alone, its topics created (with leaders), and deleted
    afterwards."""
    settings = fresh_settings(broker)
    wait_for_leaders(settings)
    yield settings
    delete_prefix(settings)
