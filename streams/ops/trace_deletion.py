"""Delete a query's trace everywhere tier3 keeps it (the right to be forgotten).

A trace lives in two places: the document in object storage, and the ``Trace`` event on the
compacted ``traces`` topic, which is what every dataset is built from. Deleting one:

1. finds the query's latest trace on the topic (a scan of the topic, so an operator needs nothing
   but the query_id), and from it the object's URI (``object_uri``), so this module does not
   need to know how the capture stage lays objects out;
2. deletes the object (through fsspec: a local folder, S3, ...);
3. writes a tombstone (key = query_id, null value) to ``traces`` and waits for the broker's
   acknowledgement. Readers that build datasets treat a tombstone as "no trace", so the next
   dataset leaves the query out; compaction then removes the older values from the log, and the
   tombstone itself after the topic's ``delete.retention.ms``.

The object goes first: if its deletion fails, the trace is still on the topic, so the command can
simply be run again. Each step is idempotent; deleting a query with no trace still writes the
tombstone, which also covers a trace that was being written while the scan ran.

What this does not reach is said in ``docs/security.md``: the query's raw text in the
delete-policy topics (experiences, capture-jobs) until their retention ends, and any model already
trained on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message
from tier3.schemas import DecodeError
from tier3.schemas.registry import TRACE
from tier3.streams.kafka import offsets
from tier3.streams.kafka.errors import OperatorError
from tier3.streams.kafka.events import EventProducer, codec_of
from tier3.streams.kafka.offsets import Range, read_ranges
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES, admin_client

log = structlog.get_logger("tier3.trace_deletion")


class DeletionError(OperatorError, RuntimeError):
    """A deletion step failed; the message says which, and running the command again is safe."""


@dataclass
class Deletion:
    """What was done for one query_id."""

    query_id: str
    found_on_topic: bool
    object_uri: str | None
    object_deleted: bool
    tombstoned: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latest_traces(
    settings: KafkaSettings, query_ids: set[str], timeout: float = 60.0
) -> dict[str, dict[str, Any]]:
    """The live trace of each of ``query_ids`` on the traces topic (absent: none, or deleted)."""
    admin = admin_client(settings)
    parts = offsets.partitions_of(admin, settings.topic(TRACES))
    ranges = [
        Range(t, p, low, high) for (t, p), (low, high) in offsets.watermarks(admin, parts).items()
    ]
    codec = codec_of(settings)
    found: dict[str, dict[str, Any]] = {}
    for msg in read_ranges(settings, ranges, timeout=timeout):
        key = (msg.key() or b"").decode(errors="replace")
        if key not in query_ids:
            continue
        if msg.value() is None:
            found.pop(key, None)
            continue
        try:
            found[key] = codec.decode(msg.value(), expect=TRACE).record
        except DecodeError:
            continue  # not a trace we can read, so not one a dataset can hold
    return found


def _delete_object(uri: str) -> bool:
    import fsspec  # an extra (capture, train): needed only where objects are deleted

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return False
    fs.rm(path)
    return True


def _tombstone(settings: KafkaSettings, query_ids: list[str]) -> None:
    producer = EventProducer(settings)
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(f"{msg.key()!r}: {err.str()}")

    for query_id in query_ids:
        producer.send_tombstone(TRACES, query_id, on_delivery=delivered)
    remaining = producer.flush(30)
    if remaining or errors:
        raise DeletionError(
            f"tombstones not acknowledged ({remaining} pending, errors: {errors[:3]}); run again"
        )


def delete_traces(settings: KafkaSettings, query_ids: list[str]) -> list[Deletion]:
    """Delete the traces of ``query_ids``: object first, then a tombstone on the topic."""
    wanted = list(dict.fromkeys(query_ids))
    if not wanted:
        raise DeletionError("no query_id given")
    live = latest_traces(settings, set(wanted))
    deletions = []
    for query_id in wanted:
        trace = live.get(query_id)
        uri = (trace or {}).get("object_uri") or None
        try:
            deleted = _delete_object(uri) if uri else False
        except Exception as exc:
            raise DeletionError(f"could not delete {uri} of query {query_id}: {exc}") from exc
        deletions.append(Deletion(query_id, trace is not None, uri, deleted, tombstoned=False))
    _tombstone(settings, wanted)
    for d in deletions:
        d.tombstoned = True
        # The query_id is an opaque id, not personal data; the trace's content is never logged.
        log.info(
            "trace deleted",
            query_id=d.query_id,
            found=d.found_on_topic,
            object_deleted=d.object_deleted,
        )
    return deletions
