"""The counter as users run it: a real ``tier3 run counter`` worker against the real broker."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
from tier3.schemas.registry import TRACE
from tier3.streams.kafka.dead_letters import HEADER_REASON, HEADER_STAGE
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES, TRAINING_REQUESTS
from tier3.streams.processors.training_requests import request_id

from tests.support.kafka_reading import read_all, read_events
from tests.support.stream_workers import Worker, wait_for

pytestmark = pytest.mark.slow

MODEL = "widget-student"


def trace(query_id: str) -> dict:
    return {
        "query_id": query_id,
        "created_at": 1_767_225_600_000,
        "query": "show revenue by region",
        "context": "{}",
        "capture_reason": "random",
        "teacher_provider": "offline",
        "teacher_model": "teacher",
        "teacher_thinking": "bar charts compare regions",
        "teacher_answer": '{"widgets": ["bar_chart"]}',
        "teacher_latency_ms": 10.0,
        "teacher_input_tokens": 10,
        "teacher_output_tokens": 20,
        "student_provider": "offline",
        "student_model": "student",
        "student_answer": "{}",
        "student_latency_ms": 5.0,
        "student_error": None,
        "teacher_answer_valid": True,
        "object_uri": f"file:///traces/{query_id}.json",
    }


def send_traces(settings: KafkaSettings, query_ids: list[str]) -> None:
    producer = EventProducer(settings)
    for q in query_ids:
        producer.send(TRACES, TRACE, q, trace(q))
    assert producer.flush(10) == 0


def requests(settings: KafkaSettings) -> list[dict]:
    return [record for _, record in read_events(settings, TRAINING_REQUESTS)]


def counter(settings: KafkaSettings, folder: Path, min_traces: int) -> Worker:
    return Worker(settings, "counter", folder, "--min-traces", str(min_traces), "--model", MODEL)


def wait_counted(worker: Worker, n: int) -> None:
    counted = "tier3_counter_new_traces_total"
    wait_for(lambda: worker.metric(counted) >= n, 60, f"{n} traces counted")


def test_fires_once_per_threshold_even_when_traces_come_again(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(12)]
    worker = counter(kafka, tmp_path, min_traces=5)
    try:
        send_traces(kafka, ids[:4])
        send_traces(kafka, ids[:4])  # re-delivered: no new trace
        wait_counted(worker, 4)
        assert requests(kafka) == []

        producer = EventProducer(kafka)
        producer.send_tombstone(TRACES, ids[0])  # a deleted trace: not counted, not a dead letter
        producer.raw.produce(kafka.topic(TRACES), b"\x00not a trace", b"poison")
        assert producer.flush(10) == 0
        send_traces(kafka, ids[4:5])  # the 5th crosses the threshold
        wait_for(lambda: len(requests(kafka)) == 1, 60, "the first training request")
        # Traces from several partitions reach the counter in no fixed order: send the next
        # batch alone, so that which ids it holds is known.
        send_traces(kafka, ids[2:10])  # three again, five new: the threshold again
        wait_for(lambda: len(requests(kafka)) >= 2, 60, "two training requests")
        send_traces(kafka, ids[10:] + ids[:3])
        wait_counted(worker, 12)
        found = requests(kafka)
        assert len(found) == 2
        assert [r["query_ids"] for r in found] == [sorted(ids[:5]), sorted(ids[5:10])]
        for r in found:
            assert r["model"] == MODEL
            assert r["trigger"] == "threshold"
            assert r["trace_count"] == 5
            assert r["request_id"] == request_id(MODEL, r["query_ids"])
        assert len({r["request_id"] for r in found}) == 2

        letters = read_all(kafka, TRACES + ".dlq")
        assert [(x.key, x.value) for x in letters] == [("poison", b"\x00not a trace")]
        assert letters[0].headers[HEADER_STAGE] == b"counter"
        assert b"magic bytes" in letters[0].headers[HEADER_REASON]
        assert worker.metric("tier3_processor_events_total{outcome=tombstone") == 1
        assert worker.alive()
    finally:
        worker.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_restart_remembers_counted_traces_and_requests(
    kafka: KafkaSettings, tmp_path: Path, stop: int
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(9)]
    first = counter(kafka, tmp_path, min_traces=4)
    second = None
    try:
        send_traces(kafka, ids[:4])  # one request
        wait_for(lambda: len(requests(kafka)) == 1, 60, "the first training request")
        send_traces(kafka, ids[4:6])  # two counted towards the next
        wait_counted(first, 6)
        first.stop(stop)

        second = counter(kafka, tmp_path, min_traces=4)
        send_traces(kafka, ids[:6])  # a replay of everything already counted
        send_traces(kafka, ids[6:8])  # two new: 2 + 2 reach the threshold again
        wait_for(lambda: len(requests(kafka)) >= 2, 90, "the second training request")
        send_traces(kafka, ids[8:])
        wait_counted(second, 3)
        found = requests(kafka)
        assert [r["query_ids"] for r in found] == [sorted(ids[:4]), sorted(ids[4:8])]
        assert len({r["request_id"] for r in found}) == 2
    finally:
        first.stop()
        if second:
            second.stop()
