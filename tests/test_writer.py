"""The processors' writer against the real broker: a commit's wait (``drain``) ends only once every
record is on the broker, delivery reports run on the caller's thread with the record's offset,
and a record that can never be written stops every later commit."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, EXPERIENCES
from tier3.streams.processors import faust_app
from tier3.streams.processors.writer import WriteFailed, Writer

from tests.support.kafka_reading import read_all


def _writer(kafka: KafkaSettings, tmp_path: Path, **options: float) -> tuple[Writer, object]:
    app = faust_app.make_app(kafka, "writer-test", tmp_path / "app")
    table = faust_app.raw_table(app, "waiting", kafka.partitions)
    faust_app.create_internal_topics(app, kafka)
    return Writer(kafka, "writer-test", **options), table


def test_a_drained_writer_has_every_record_on_the_broker_in_order(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    writer, table = _writer(kafka, tmp_path)
    reports: list[tuple[bool, int, str]] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        reports.append((error is None, message.offset(), threading.current_thread().name))

    for i in range(500):
        writer.put(table, i % kafka.partitions, f"q{i}".encode(), b"v%d" % i)
    writer.drop(table, 1, b"q1")  # written last: a tombstone after its put
    writer.drop(table, 2, b"never-put")  # nothing to delete: nothing written
    jobs = kafka.topic(CAPTURE_JOBS)
    writer.send(jobs, b"q7", b"job", 1, on_delivery=delivered)
    asyncio.run(writer.drain())

    assert reports == [(True, 0, threading.current_thread().name)]
    assert len(writer.producer) == 0
    changelog = table.changelog_topic_name.removeprefix(kafka.topic_prefix)
    records = read_all(kafka, changelog)
    assert len(records) == 501
    last_of_q1 = max((r for r in records if r.key == "q1"), key=lambda r: r.offset)
    assert last_of_q1.value is None and last_of_q1.partition == 1
    assert {r.partition for r in records if r.key == "q6"} == {6 % kafka.partitions}
    assert b"q1" not in table.data and table.data[b"q2"] == b"v2"
    assert [r.key for r in read_all(kafka, CAPTURE_JOBS)] == ["q7"]


def test_a_record_that_cannot_be_written_fails_every_later_drain(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    writer, _ = _writer(kafka, tmp_path, delivery_timeout_s=2.0)
    writer.send(kafka.topic("no-such-topic"), b"k", b"v", 0)  # auto-creation is off
    with pytest.raises(WriteFailed, match="no-such-topic"):
        asyncio.run(writer.drain())
    writer.send(kafka.topic(EXPERIENCES), b"k", b"v", 0)  # a good record does not heal it
    with pytest.raises(WriteFailed):
        asyncio.run(writer.drain())
