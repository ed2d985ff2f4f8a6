"""Offsets of partitions as the broker knows them: watermarks and the first offset at a time.

One place for the ListOffsets requests that the operator tools share (group lag and resets,
replay windows, status sizes), made through confluent-kafka's ``AdminClient.list_offsets``.
Partitions are ``(topic, partition)`` pairs, because that is what callers index by.

Which topics exist is asked here too (``existing_topics``, ``partitions_of``), so that a topic the
principal may not describe is reported as such: a broker with ACLs leaves it out of a listing,
where it would read as "missing".

``read_ranges`` reads the messages between two offsets of each partition with an assigned
consumer: no group membership and no commit, so reading history never disturbs a stage.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec, TopicMetadata
from tier3.streams.kafka.errors import OperatorError, TopicMissing, topic_refused
from tier3.streams.kafka.settings import KafkaSettings

Partition = tuple[str, int]

_TIMEOUT = 15.0


class OffsetLookupError(OperatorError, RuntimeError):
    """The broker did not answer an offsets request; the message says for which partition."""


def _list(
    admin: AdminClient, parts: list[Partition], spec: Any, missing_ok: bool = False
) -> dict[Partition, int]:
    found: dict[Partition, int] = {}
    deadline = time.monotonic() + _TIMEOUT
    while parts:
        futures = admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in parts}, request_timeout=_TIMEOUT
        )
        failed: dict[Partition, KafkaException] = {}
        for tp, future in futures.items():
            try:
                found[(tp.topic, tp.partition)] = future.result(timeout=_TIMEOUT).offset
            except KafkaException as exc:
                failed[(tp.topic, tp.partition)] = exc
            except Exception as exc:
                raise OffsetLookupError(f"offsets of {tp.topic}[{tp.partition}]: {exc}") from exc
        if failed and missing_ok:
            # A topic being deleted fails in several ways (unknown partition, no leader): only
            # one the broker no longer lists is left out; the others are asked again.
            alive = existing_topics(admin, {t for t, _ in failed})
            failed = {tp: exc for tp, exc in failed.items() if tp[0] in alive}
        parts = []
        for (t, p), exc in failed.items():
            # A partition just created, or moving leader, answers "not leader" for a moment.
            if not exc.args[0].retriable() or time.monotonic() >= deadline:
                raise OffsetLookupError(f"offsets of {t}[{p}]: {exc}") from exc
            parts.append((t, p))
        if parts:
            time.sleep(0.2)
    return found


def watermarks(
    admin: AdminClient, partitions: Iterable[Partition], missing_ok: bool = False
) -> dict[Partition, tuple[int, int]]:
    """``(low, high)`` of each partition: the first retained offset and the next to be written.

    With ``missing_ok``, partitions of a topic that no longer exists are left out of the answer
    instead of failing it: a group keeps its offsets on a topic after the topic is deleted.
    """
    parts = list(partitions)
    low = _list(admin, parts, OffsetSpec.earliest(), missing_ok)
    high = _list(admin, parts, OffsetSpec.latest(), missing_ok)
    return {p: (low[p], high[p]) for p in parts if p in low and p in high}


def offsets_for_time(
    admin: AdminClient, partitions: Iterable[Partition], ms: int
) -> dict[Partition, int]:
    """The first offset whose timestamp is at or after ``ms`` (ms since the epoch); -1 if none."""
    return _list(admin, list(partitions), OffsetSpec.for_timestamp(ms))


def existing_topics(
    admin: AdminClient, names: Iterable[str], timeout: float = _TIMEOUT
) -> dict[str, TopicMetadata]:
    """The topics among ``names`` that exist, by name; ``NotAuthorized`` for one the principal
    may not describe. One listing, then a request by name for each topic it lacks: asked by
    name, the broker says "not authorized" where the listing stays silent."""
    listing = admin.list_topics(timeout=timeout).topics
    found = {}
    for name in names:
        meta = listing.get(name) or _named(admin, name, timeout)
        if meta is not None:
            found[name] = meta
    return found


def _named(admin: AdminClient, topic: str, timeout: float) -> TopicMetadata | None:
    meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is not None and meta.error is not None:
        if meta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise topic_refused(topic)
        return None
    return meta


def partitions_of(admin: AdminClient, topic: str) -> list[Partition]:
    """Every partition of ``topic``; ``TopicMissing`` (a ``LookupError``) if there is no such
    topic, ``NotAuthorized`` if the principal may not describe it."""
    meta = _named(admin, topic, _TIMEOUT)
    if meta is None:
        raise TopicMissing(
            f"topic {topic} does not exist; run `tier3 topics create`, and check TIER3_TOPIC_PREFIX"
        )
    return [(topic, p) for p in sorted(meta.partitions)]


@dataclass(frozen=True)
class Range:
    """Offsets ``start`` ≤ offset < ``end`` of one partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class RangeReadError(OperatorError, RuntimeError):
    """A range that could not be read to its end in time."""


def read_ranges(
    settings: KafkaSettings, ranges: list[Range], timeout: float = 60.0
) -> Iterator[Message]:
    """Every message in ``ranges``, partition by partition in offset order. No group, no commit."""
    todo = {r.partition: r for r in ranges if r.size > 0}
    if not todo:
        return
    topic = next(iter(todo.values())).topic
    c = Consumer(
        {
            **settings.client_config(),
            "group.id": f"tier3-replay-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    try:
        c.assign([TopicPartition(topic, r.partition, r.start) for r in todo.values()])
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise RangeReadError(f"{topic}: window not read within {timeout:.0f}s")
            msg = c.poll(0.5)
            if msg is None:
                continue
            r = todo.get(msg.partition())
            if msg.error():
                # End of partition: compaction or transaction markers can leave the window's last
                # offsets without a message, so reaching the log's end also finishes the range.
                if msg.error().code() == KafkaError._PARTITION_EOF and r is not None:
                    todo.pop(r.partition)
                continue
            if r is None or msg.offset() >= r.end:
                if r is not None:
                    todo.pop(r.partition)
                continue
            deadline = time.monotonic() + timeout
            yield msg
            if msg.offset() + 1 >= r.end:
                todo.pop(r.partition)
    finally:
        c.close()
