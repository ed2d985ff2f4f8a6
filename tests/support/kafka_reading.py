"""Reading topics back in tests: everything a topic holds, decoded, without a consumer group."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from tier3.schemas import SingleObjectCodec
from tier3.streams.kafka.settings import KafkaSettings


@dataclass
class Read:
    key: str | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


def _watermarks(c: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    """Watermarks, waiting out the moment after creation when the leader is not yet serving."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.get_watermark_offsets(tp, timeout=timeout)
        except KafkaException as exc:
            # A fresh partition, or a broker just back from a pause, answers these for a moment.
            retriable = exc.args[0].code() in (
                KafkaError.NOT_LEADER_FOR_PARTITION,
                KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError._UNKNOWN_PARTITION,
            )
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_all(settings: KafkaSettings, topic: str, timeout: float = 10.0) -> list[Read]:
    """Every message now in ``topic`` (design name, no prefix), from offset 0 to the end."""
    full = settings.topic(topic)
    c = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        meta = c.list_topics(full, timeout=timeout).topics[full]
        ends = {}
        for p in meta.partitions:
            low, high = _watermarks(c, TopicPartition(full, p), timeout)
            if high > low:
                ends[p] = (low, high)
        c.assign([TopicPartition(full, p, low) for p, (low, _) in ends.items()])
        out: list[Read] = []
        remaining = {p: high for p, (_, high) in ends.items()}

        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(
                Read(
                    msg.key().decode() if msg.key() else None,
                    msg.value(),
                    dict(msg.headers() or []),
                    msg.partition(),
                    msg.offset(),
                )
            )
            if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                remaining.pop(msg.partition(), None)
        return out
    finally:
        c.close()


def read_events(
    settings: KafkaSettings, topic: str, timeout: float = 10.0
) -> list[tuple[str, dict]]:
    """Every event in ``topic``, decoded: (event name, record)."""
    codec = SingleObjectCodec()
    return [
        (d.name, d.record)
        for d in (
            codec.decode(r.value) for r in read_all(settings, topic, timeout) if r.value is not None
        )
    ]
