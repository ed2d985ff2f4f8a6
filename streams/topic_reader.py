"""Read a whole topic, from its first offset to the end it had when reading began.

Used by readers that need "everything so far" rather than a consumer group's share: the A/B
comparison (experiences and feedback) and the deployment log (training-results). No group
offsets are committed: these readers change nothing on the broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Message, TopicPartition
from tier3.streams.settings import KafkaSettings


def read_to_end(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> Iterator[Message]:
    """Every message now in ``topic`` (design name, no prefix), partition by partition in order.

    Raises ``TimeoutError`` if the end is not reached within ``timeout`` seconds.
    """
    full = settings.topic(topic)
    c = Consumer(
        {
            **settings.client_config(),
            "group.id": f"tier3-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "log_level": 3,
        }
    )
    try:
        partitions = c.list_topics(full, timeout=timeout).topics[full].partitions
        ends: dict[int, int] = {}
        starts = []
        for p in partitions:
            low, high = c.get_watermark_offsets(TopicPartition(full, p), timeout=timeout)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(full, p, low))
        c.assign(starts)
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{full}: end not reached in {timeout}s ({len(ends)} left)")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            yield msg
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
    finally:
        c.close()
