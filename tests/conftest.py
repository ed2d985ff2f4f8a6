"""Shared fixtures: one real Kafka broker per test session, and an isolated topic set per test.

The broker is the project's own local broker (``tier3 broker start``): a running one is reused
(CI starts it before pytest), otherwise the session starts one and stops it at the end. Each test
gets its own topic prefix, so tests never see each other's events.
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

from tests.support.stream_workers import Worker

TEST_HOME = Path(
    os.environ.get("TIER3_TEST_HOME", Path(__file__).resolve().parent.parent / ".tier3-test")
)
TEST_PORT = int(os.environ.get("TIER3_TEST_BROKER_PORT", "19092"))


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


_PREFIXES_MADE: list[str] = []


def fresh_settings(broker: LocalBroker, partitions: int = 3, **overrides: object) -> KafkaSettings:
    """Settings with a topic prefix no other test uses, and its topics created."""
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=partitions,
        **overrides,
    )
    create_topics(settings)
    _PREFIXES_MADE.append(settings.topic_prefix)
    return settings


def delete_topics_with_prefix(bootstrap: str, prefixes: list[str]) -> None:
    """Delete a test's topics (and whatever stages made under its prefix), best effort.

    Thousands of leftover partitions would make the shared broker slow to restart and, in the
    end, run out of heap; a test's topics are worth nothing after it.
    """
    if not prefixes:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tuple(prefixes))]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result()
    except KafkaException:
        pass


@pytest.fixture
def kafka(broker: LocalBroker) -> Iterator[KafkaSettings]:
    """Kafka settings for this test alone: its own prefix, its topics created."""
    settings = fresh_settings(broker)
    yield settings
    delete_topics_with_prefix(broker.bootstrap, [settings.topic_prefix])


@pytest.fixture(scope="session", autouse=True)
def _delete_test_topics_at_the_end() -> Iterator[None]:
    yield
    if _PREFIXES_MADE:
        delete_topics_with_prefix(f"127.0.0.1:{TEST_PORT}", [p for p in _PREFIXES_MADE if p])


@pytest.fixture(autouse=True)
def _no_ambient_tier3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure tier3 explicitly; a developer's TIER3_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("TIER3_") and name not in (
            "TIER3_TEST_HOME",
            "TIER3_TEST_BROKER_PORT",
            "TIER3_KAFKA_CACHE",
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ENABLE_TIER3_CAPTURE", raising=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """When a test fails, attach the log tail of every stream worker it started: a CI run
    prints only the report, and the logs are gone with the machine."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup":
        Worker.started.clear()
    if report.failed and report.when == "call":
        for worker in Worker.started:
            lines = [
                line for line in worker.log().splitlines() if "kafka client error" not in line
            ]
            report.sections.append(
                (f"log of {worker.role} worker {worker.port}", "\n".join(lines[-60:]))
            )
