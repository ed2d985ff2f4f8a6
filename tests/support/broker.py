"""The Kafka fixtures, a pytest plugin (``tests/conftest.py`` loads it through ``pytest_plugins``):
one real broker per session, and an isolated topic set per test.

The broker is the project's own local broker (``tier3 broker start``): a running one is reused
(CI starts it before pytest), otherwise the session starts one. Each test gets its own topic
prefix, so tests never see each other's events, and its topics are deleted afterwards: every test
makes a dozen topics, and on the one broker that all test sessions share thousands of leftover
partitions make it slow to restart and, in the end, exhaust its heap.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import create_topics
from tier3.streams.local.kafka_broker import LocalBroker

TEST_HOME = Path(
    os.environ.get("TIER3_TEST_HOME", Path(__file__).resolve().parents[2] / ".tier3-test")
)
TEST_PORT = int(os.environ.get("TIER3_TEST_BROKER_PORT", "19092"))

_PREFIXES_MADE: list[str] = []


@pytest.fixture(scope="session")
def broker() -> LocalBroker:
    """The session's real Kafka broker, left running for the next session.

    Several test sessions may share it (parallel runs on one machine), so none of them stops it:
    `.ci/run` stops it after the suite; on a laptop `tier3 broker stop --home .tier3-test
    --port 19092` does.
    """
    b = LocalBroker(home=TEST_HOME, port=TEST_PORT)
    b.start()
    return b


def fresh_settings(broker: LocalBroker, partitions: int = 3, **overrides: object) -> KafkaSettings:
    """Settings with a topic prefix no other test uses, and its topics created (with leaders:
    ``create_topics`` waits for them). The session deletes the prefix's topics at its end."""
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=partitions,
        **overrides,
    )
    create_topics(settings)
    _PREFIXES_MADE.append(settings.topic_prefix)
    return settings


def delete_topics(bootstrap: str, *prefixes: str) -> None:
    """Delete every topic under the prefixes (and whatever stages made there), best effort: a
    failure to clean up never fails a test."""
    if not prefixes:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
        for future in admin.delete_topics(names, operation_timeout=30).values() if names else []:
            with contextlib.suppress(Exception):
                future.result()
    except KafkaException:
        pass


@contextlib.contextmanager
def disposable_settings(broker: LocalBroker, **overrides: object) -> Iterator[KafkaSettings]:
    """``fresh_settings`` whose topics are deleted on leaving the block: for a test that needs
    several topic sets, such as one per Hypothesis example."""
    settings = fresh_settings(broker, **overrides)
    try:
        yield settings
    finally:
        delete_topics(broker.bootstrap, settings.topic_prefix)


@pytest.fixture
def kafka(broker: LocalBroker) -> Iterator[KafkaSettings]:
    """Kafka settings for this test alone: its own prefix, its topics created, and deleted after
    the test."""
    with disposable_settings(broker) as settings:
        yield settings


@pytest.fixture(scope="session", autouse=True)
def _delete_test_topics_at_the_end() -> Iterator[None]:
    """Delete the topics of the prefixes that tests made without a fixture to clean up."""
    yield
    delete_topics(f"127.0.0.1:{TEST_PORT}", *_PREFIXES_MADE)
