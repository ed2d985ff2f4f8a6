"""Helpers of the capture tests: make and publish jobs, run a capture consumer, read results."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from tier3.consumers.capture import CaptureConsumer
from tier3.consumers.object_store import TraceStore
from tier3.consumers.providers import build_student, build_teacher
from tier3.consumers.redaction import Redactor
from tier3.consumers.settings import CaptureSettings
from tier3.schemas import SingleObjectCodec
from tier3.schemas.registry import CAPTURE_JOB
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, TRACES
from tier3.tasks.widgets import random_query

from tests.support.kafka_reading import read_all


def make_job(seed: int, query: str | None = None, context: dict | None = None) -> dict[str, Any]:
    q = random_query(random.Random(seed))
    return {
        "query_id": f"{uuid.uuid4().hex}",
        "created_at": int(time.time() * 1000),
        "reason": "random",
        "query": query if query is not None else q.text,
        "context": json.dumps(context if context is not None else q.context, sort_keys=True),
        "original_response": '{"widgets": ["table"]}',
        "original_model": "claude-backend",
        "model_variant": "teacher",
        "confidence": 0.7,
        "rating": None,
    }


def publish_jobs(kafka: KafkaSettings, jobs: list[dict[str, Any]]) -> None:
    producer = EventProducer(kafka)
    for job in jobs:
        producer.send(CAPTURE_JOBS, CAPTURE_JOB, job["query_id"], job)
    assert producer.flush(30) == 0


def provider_settings(anthropic_url: str, ollama_url: str, **overrides: Any) -> CaptureSettings:
    """Settings for the real SDKs against the fake servers; fast job retries."""
    values: dict[str, Any] = {
        "teacher_provider": "anthropic",
        "anthropic_api_key": "sk-test-key",
        "anthropic_base_url": anthropic_url,
        "student_provider": "ollama",
        "ollama_host": ollama_url,
        "attempt_backoff_s": 0.05,
        "commit_interval_s": 0.2,
        "group": f"capture-{uuid.uuid4().hex[:8]}",
        **overrides,
    }
    return CaptureSettings(**values)


def build_worker(kafka: KafkaSettings, settings: CaptureSettings, root: str) -> CaptureConsumer:
    redactor = Redactor.configured(settings.redact_patterns) if settings.redact else None
    return CaptureConsumer(
        kafka,
        settings,
        TraceStore(root),
        build_teacher(settings),
        build_student(settings),
        redactor,
    )


def run_until(worker: CaptureConsumer, done: Callable[[], bool], timeout: float = 60) -> None:
    """Run the consumer until ``done()`` holds (checked every 50 ms), then stop it cleanly."""

    async def main() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and not runner.done():
            await asyncio.sleep(0.05)
        stop.set()
        await runner

    asyncio.run(main())


def committed(kafka: KafkaSettings, group: str, topic: str = CAPTURE_JOBS) -> dict[int, int]:
    """The group's committed offset per partition of ``topic``."""
    full = kafka.topic(topic)
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group, "log_level": 0})
    try:
        parts = c.list_topics(full, timeout=10).topics[full].partitions
        offsets = c.committed([TopicPartition(full, p) for p in parts], timeout=10)
        return {tp.partition: tp.offset for tp in offsets}
    finally:
        c.close()


def end_offsets(kafka: KafkaSettings, topic: str = CAPTURE_JOBS) -> dict[int, int]:
    full = kafka.topic(topic)
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "ends", "log_level": 0})
    try:
        parts = c.list_topics(full, timeout=10).topics[full].partitions
        return {p: c.get_watermark_offsets(TopicPartition(full, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def behind(kafka: KafkaSettings, group: str) -> dict[int, tuple[int, int]]:
    """Partitions of capture-jobs whose committed offset is short of the end: (committed, end).

    An empty partition has nothing to commit, so it is never behind.
    """
    done = committed(kafka, group)
    return {
        p: (done.get(p, -1), end)
        for p, end in end_offsets(kafka).items()
        if end > 0 and done.get(p) != end
    }


def latest_traces(kafka: KafkaSettings) -> dict[str, dict[str, Any]]:
    """The latest Trace per key on the traces topic (what compaction keeps)."""
    codec = SingleObjectCodec()
    latest: dict[str, dict[str, Any]] = {}
    for read in sorted(read_all(kafka, TRACES), key=lambda r: (r.partition, r.offset)):
        if read.key is not None and read.value is not None:
            latest[read.key] = codec.decode(read.value).record
    return latest
