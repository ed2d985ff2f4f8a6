"""Read the compacted ``traces`` topic end to end: the latest trace of every live query.

The read is a snapshot (``tier3.streams.kafka.reader``): the topic as it is when the run
starts. Within a partition offsets are ordered, and a query_id always lands in the same
partition, so the last value seen for a key is the latest trace; a tombstone (null value)
deletes the key, which is how a deleted trace leaves the data. Compaction may already have
dropped superseded values; the result is the same either way.

A value that does not decode is counted and logged, not fatal: the capture stage dead-letters
bad input before it reaches this topic, so one here is a bug to report, not a reason to stop
training on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from tier3.schemas import DecodeError
from tier3.schemas.registry import TRACE
from tier3.streams.kafka.events import codec_of
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES

log = structlog.get_logger(__name__)


@dataclass
class TraceSnapshot:
    """The live traces, by query_id, and what the read skipped."""

    traces: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    undecodable: int = 0


def read_traces(settings: KafkaSettings, timeout: float = 60.0) -> TraceSnapshot:
    """Every live trace now in the traces topic, the latest per query_id."""
    codec = codec_of(settings)
    snapshot = TraceSnapshot()
    for msg in read_to_end(settings, TRACES, timeout):
        _apply(snapshot, codec, msg)
    if snapshot.undecodable:
        log.warning("undecodable traces skipped", count=snapshot.undecodable)
    return snapshot


def _apply(snapshot: TraceSnapshot, codec: Any, msg: Any) -> None:
    key = msg.key().decode() if msg.key() else None
    if msg.value() is None:
        if key is not None:
            snapshot.traces.pop(key, None)
            snapshot.deleted.add(key)
        return
    try:
        record = codec.decode(msg.value(), expect=TRACE).record
    except DecodeError as exc:
        snapshot.undecodable += 1
        log.warning(
            "undecodable trace", partition=msg.partition(), offset=msg.offset(), error=str(exc)
        )
        return
    query_id = record["query_id"]
    snapshot.traces[query_id] = record
    snapshot.deleted.discard(query_id)
