"""Read a whole topic, from its first offset to the end it had when reading began.

Used by readers that need "everything so far" rather than a consumer group's share: the A/B
comparison (experiences and feedback), the deployment log (training-results), the trainer's
snapshot of the traces. No group offsets are committed: these readers change nothing on the
broker. It is ``offsets.read_ranges`` over each partition's watermarks, so it shares that
function's handling of a freshly created partition and of compacted logs whose last offsets hold
no message.
"""

from __future__ import annotations

from collections.abc import Iterator

from confluent_kafka import Message
from confluent_kafka.admin import AdminClient
from tier3.streams.kafka.offsets import (
    OffsetLookupError,
    Range,
    RangeReadError,
    partitions_of,
    read_ranges,
    watermarks,
)
from tier3.streams.kafka.settings import KafkaSettings


def read_to_end(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> Iterator[Message]:
    """Every message now in ``topic`` (design name, no prefix), partition by partition in order.

    Raises ``TimeoutError`` if the end is not reached within ``timeout`` seconds.
    """
    full = settings.topic(topic)
    admin = AdminClient(settings.client_config())
    try:
        marks = watermarks(admin, partitions_of(admin, full))
        ranges = [Range(full, p, lo, hi) for (_, p), (lo, hi) in marks.items() if hi > lo]
        yield from read_ranges(settings, ranges, timeout)
    except (RangeReadError, OffsetLookupError) as exc:
        raise TimeoutError(str(exc)) from exc
