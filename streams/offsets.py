"""Offsets of partitions as the broker knows them: watermarks and the first offset at a time.

One place for the ListOffsets requests that the operator tools share (group lag and resets,
replay windows, status sizes), made through confluent-kafka's ``AdminClient.list_offsets``.
Partitions are ``(topic, partition)`` pairs, because that is what callers index by.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

Partition = tuple[str, int]

_TIMEOUT = 15.0


class OffsetLookupError(RuntimeError):
    """The broker did not answer an offsets request; the message says for which partition."""


def _list(admin: AdminClient, parts: list[Partition], spec: Any) -> dict[Partition, int]:
    if not parts:
        return {}
    futures = admin.list_offsets(
        {TopicPartition(t, p): spec for t, p in parts}, request_timeout=_TIMEOUT
    )
    found: dict[Partition, int] = {}
    for tp, future in futures.items():
        try:
            found[(tp.topic, tp.partition)] = future.result(timeout=_TIMEOUT).offset
        except Exception as exc:
            raise OffsetLookupError(f"offsets of {tp.topic}[{tp.partition}]: {exc}") from exc
    return found


def watermarks(
    admin: AdminClient, partitions: Iterable[Partition]
) -> dict[Partition, tuple[int, int]]:
    """``(low, high)`` of each partition: the first retained offset and the next to be written."""
    parts = list(partitions)
    low = _list(admin, parts, OffsetSpec.earliest())
    high = _list(admin, parts, OffsetSpec.latest())
    return {p: (low[p], high[p]) for p in parts}


def offsets_for_time(
    admin: AdminClient, partitions: Iterable[Partition], ms: int
) -> dict[Partition, int]:
    """The first offset whose timestamp is at or after ``ms`` (ms since the epoch); -1 if none."""
    return _list(admin, list(partitions), OffsetSpec.for_timestamp(ms))


def partitions_of(admin: AdminClient, topic: str) -> list[Partition]:
    """Every partition of ``topic``; ``LookupError`` if the topic does not exist."""
    meta = admin.list_topics(topic, timeout=_TIMEOUT).topics.get(topic)
    if meta is None or meta.error is not None:
        raise LookupError(f"topic {topic} does not exist")
    return [(topic, p) for p in sorted(meta.partitions)]
