"""Read a topic from its start to the end it has now, without a consumer group.

The trainer needs snapshots, not subscriptions: the live traces when a run starts, the results
already published when it checks for a duplicate. So partitions are assigned by hand (nothing is
committed, no group rebalances) from each partition's low watermark up to the high watermark
taken when the read starts; messages produced later are not waited for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Message, TopicPartition
from tier3.streams.settings import KafkaSettings


def read_to_end(settings: KafkaSettings, topic: str, timeout: float = 60.0) -> Iterator[Message]:
    """Every message of ``topic`` (design name, no prefix) up to its current end, in offset
    order per partition. Raises TimeoutError if the end is not reached within ``timeout``."""
    full = settings.topic(topic)
    reader = Consumer(
        {
            **settings.client_config(),
            # librdkafka wants a group id even for assign(); nothing is ever committed to it.
            "group.id": f"tier3-snapshot-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "log_level": 3,
        }
    )
    try:
        partitions = reader.list_topics(full, timeout=10).topics[full].partitions
        remaining: dict[int, int] = {}
        start = []
        for p in partitions:
            low, high = reader.get_watermark_offsets(TopicPartition(full, p), timeout=10)
            if high > low:
                remaining[p] = high
                start.append(TopicPartition(full, p, low))
        reader.assign(start)
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {full} took over {timeout}s; partitions left: {sorted(remaining)}"
                )
            msg = reader.poll(0.5)
            if msg is None or msg.error():
                continue
            if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                remaining.pop(msg.partition(), None)
            yield msg
    finally:
        reader.close()
