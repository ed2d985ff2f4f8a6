"""A ``kafka`` fixture whose topics are deleted after the test.

Every test makes a dozen topics under its own prefix; on the one broker that all test sessions
share, thousands of them pile up and exhaust its heap. Test modules that import this fixture
leave nothing behind. Deletion is best effort: a failure to clean up never fails a test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient
from tier3.streams.local_broker import LocalBroker
from tier3.streams.settings import KafkaSettings

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


@pytest.fixture(name="kafka")
def disposable_kafka(broker: LocalBroker) -> Iterator[KafkaSettings]:
    """Kafka settings for this test alone, its topics created, and deleted afterwards."""
    settings = fresh_settings(broker)
    yield settings
    delete_prefix(settings)
