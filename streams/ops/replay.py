"""Replay: run a window of history through the pipeline again.

Two replays, both ending on ``capture-jobs``, where the capture consumers pick the jobs up:

* **resample**: read the experiences of a window (and their feedback), decide again with a new
  capture policy (``sampling.decide``, the sampler's own function), and send a job for every
  query the new policy chooses. The job's reason is the policy's (``random``,
  ``high_confidence``, ...), as the live sampler would have written it. Queries that already
  have a trace are left out by default: a wider policy adds what the old one missed without
  paying the teacher twice for the rest.
* **recapture**: read the capture jobs of a window and send them again with reason ``replay``,
  so that capture consumers running with a new teacher prompt or model write new traces.

A window is a time range (``since`` ≤ timestamp < ``until``, found with the broker's
offsets-for-times index), an offset range (``from_offset`` ≤ offset < ``to_offset``), or both,
on every partition or only the ones named. Its end is fixed when the replay starts, so replaying
into the topic being read never loops.

**Idempotent.** Jobs are keyed by query_id and a query appears once per replay (the last job of a
query in the window wins). Downstream, the capture consumers write the trace object under a key
derived from the query_id and the trace to the compacted ``traces`` topic keyed by query_id, so a
replayed query overwrites its trace rather than adding one: replaying a window twice leaves the
dataset the same size.

**Deleted stays deleted.** A query whose trace was deleted (``tier3 traces delete``: a tombstone
on ``traces``) is left out of every replay, so history cannot bring a forgotten query back.

**Dead letters.** ``dead_letters`` sends a topic's dead letters back to it, bytes and key as they
came, once their cause is fixed (a teacher outage that outlasted the retries, a schema the
readers now know); by default only those that now decode go back.

**Decided at the experience, in batches.** The window is read and decoded in batches of
``BATCH`` messages, and each experience is decided at sight (``decide(experience, None)``),
as the live sampler does: the feedback is read only for what needs it, the chosen queries'
ratings when jobs are sent, and every undecided query when a rule in force reads the feedback
(``Policy.needs_feedback``). A feedback is matched by its key, as in the sampler (one keyed by
anything else never meets its experience there either), and only matching ones are decoded. So
a dry run of the default policy reads no feedback at all.

**Dry run first.** Without ``execute`` the window is read and decided, and the counts (read,
chosen by reason, undecodable) are reported, but nothing is sent. A message that does not decode
is counted and skipped: the live consumer already sent it to the dead-letter topic when it first
met it. ``target_prefix`` sends the jobs to another deployment's topics (created if missing)
instead of the live ones; ``rate`` caps the jobs sent per second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import structlog
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient
from tier3.schemas import DecodeError
from tier3.schemas.registry import (
    CAPTURE_JOB,
    EVAL_REPORT,
    EXPERIENCE,
    FEEDBACK,
    MODEL_DEPLOYED,
    TRACE,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from tier3.streams.kafka import offsets
from tier3.streams.kafka.dead_letters import HEADER_TYPE, DeadLetter
from tier3.streams.kafka.events import codec_of
from tier3.streams.kafka.offsets import Range, read_ranges
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import (
    CAPTURE_JOBS,
    DLQ_SUFFIX,
    EXPERIENCES,
    TRACES,
    TRAINING_REQUESTS,
    TRAINING_RESULTS,
    create_topics,
)
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.streams.ops.replay_send import send
from tier3.streams.ops.replay_window import ReplayError, ReplayReport, Window, resolve
from tier3.streams.processors.sampling import Policy, capture_job, decide

log = structlog.get_logger("tier3.replay")

RESAMPLE = "resample"
RECAPTURE = "recapture"
DEAD_LETTERS = "dead-letters"
REPLAY_REASON = "replay"

Progress = Callable[[int], None]
BATCH = 5000  # messages decoded (and counted for progress) at a time

# What each topic carries: a dead letter goes back only if it now decodes as one of these.
_EVENTS_OF: dict[str, str | tuple[str, ...]] = {
    EXPERIENCES: EXPERIENCE,
    FEEDBACK_TOPIC: FEEDBACK,
    CAPTURE_JOBS: CAPTURE_JOB,
    TRACES: TRACE,
    TRAINING_REQUESTS: TRAINING_REQUESTED,
    TRAINING_RESULTS: (TRAINING_COMPLETED, TRAINING_FAILED, EVAL_REPORT, MODEL_DEPLOYED),
}


def batched(messages: Iterator[Message], size: int) -> Iterator[list[Message]]:
    """Lists of up to ``size`` messages (``itertools.batched`` once Python 3.12 is the floor)."""
    while batch := list(islice(messages, size)):
        yield batch


class Replayer:
    """Replays windows of one deployment's history into its own or another prefix's topics."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        target_prefix: str | None = None,
        rate: float | None = None,
        respect_deletions: bool = True,
        admin: AdminClient | None = None,
    ) -> None:
        self.settings = settings
        self.respect_deletions = respect_deletions
        self.target = (
            settings.model_copy(update={"topic_prefix": target_prefix})
            if target_prefix is not None
            else settings
        )
        self.rate = rate
        self.admin = admin or AdminClient({**settings.client_config(), "log_level": 0})
        self.codec = codec_of(settings)

    def _report(self, mode: str, source: str, window: Window) -> ReplayReport:
        return ReplayReport(
            mode,
            uuid.uuid4().hex[:12],
            self.settings.topic(source),
            self.target.topic(CAPTURE_JOBS),
            resolve(self.admin, self.settings.topic(source), window),
        )

    def resample(
        self,
        window: Window,
        policy: Policy,
        *,
        execute: bool = False,
        feedback_grace_s: float = 600.0,
        skip_traced: bool = True,
        progress: Progress | None = None,
    ) -> ReplayReport:
        """Decide the window's experiences again with ``policy``; send the chosen jobs. Queries
        that already have a trace are left out (``skip_traced``): the new policy adds what the
        old one missed, without paying the teacher twice for the rest."""
        report = self._report(RESAMPLE, EXPERIENCES, window)
        latest: dict[str, tuple[int, dict[str, Any]]] = {}
        first_ms = last_ms = None
        for batch in self._decoded(report.ranges, EXPERIENCE, report, progress):
            if not batch:
                continue
            stamps = [msg.timestamp()[1] for msg, _ in batch]
            first_ms = min(stamps) if first_ms is None else min(first_ms, *stamps)
            last_ms = max(stamps) if last_ms is None else max(last_ms, *stamps)
            for msg, record in batch:
                query_id = record["query_id"]
                report.duplicates += query_id in latest
                latest[query_id] = (msg.partition(), record)
        self._drop_known(report, latest, drop_traced=skip_traced)
        # At sight: final unless a rule in force reads the feedback (None: that rule decides).
        at_sight = {q: decide(experience, None, policy) for q, (_, experience) in latest.items()}
        wanted = {
            q for q, reason in at_sight.items()
            if (reason is None and policy.needs_feedback) or (reason is not None and execute)
        }
        feedback = {}
        if wanted and first_ms is not None and last_ms is not None:
            feedback = self._feedback(wanted, first_ms, last_ms + int(feedback_grace_s * 1000))
        now_ms = int(time.time() * 1000)
        jobs = []
        for query_id, (partition, experience) in latest.items():
            reason = at_sight[query_id]
            if reason is None and policy.needs_feedback:
                reason = decide(experience, feedback.get(query_id), policy)
            if reason is not None:
                report.chosen[reason] += 1
                if execute:
                    job = capture_job(experience, feedback.get(query_id), reason, now_ms)
                    jobs.append((partition, job))
        if execute:
            self._send(report, jobs)
        return report

    def recapture(
        self, window: Window, *, execute: bool = False, progress: Progress | None = None
    ) -> ReplayReport:
        """Send the window's capture jobs again, with reason ``replay``."""
        report = self._report(RECAPTURE, CAPTURE_JOBS, window)
        latest: dict[str, tuple[int, dict[str, Any]]] = {}
        for batch in self._decoded(report.ranges, CAPTURE_JOB, report, progress):
            for msg, record in batch:
                report.duplicates += record["query_id"] in latest
                latest[record["query_id"]] = (msg.partition(), {**record, "reason": REPLAY_REASON})
        self._drop_known(report, latest)
        report.chosen[REPLAY_REASON] = len(latest)
        if execute:
            self._send(report, list(latest.values()))
        return report

    def _drop_known(
        self, report: ReplayReport, latest: dict[str, Any], drop_traced: bool = False
    ) -> None:
        """Leave out queries whose trace was deleted: a replay must not bring a forgotten one
        back (a deletion is a tombstone on ``traces``, visible for its ``delete.retention.ms``).
        With ``drop_traced``, also those that already have a trace."""
        if not latest or not (self.respect_deletions or drop_traced):
            return
        live, deleted = self.trace_keys()
        for query_id in list(latest):
            if self.respect_deletions and query_id in deleted:
                del latest[query_id]
                report.skipped_deleted += 1
            elif drop_traced and query_id in live:
                del latest[query_id]
                report.skipped_traced += 1

    def trace_keys(self) -> tuple[set[str], set[str]]:
        """Query ids with a live trace, and those whose latest value is a tombstone."""
        full = self.settings.topic(TRACES)
        marks = offsets.watermarks(self.admin, offsets.partitions_of(self.admin, full))
        ranges = [Range(t, p, low, high) for (t, p), (low, high) in marks.items()]
        gone: dict[bytes, bool] = {}
        for msg in read_ranges(self.settings, ranges):
            gone[msg.key() or b""] = msg.value() is None
        live = {k.decode(errors="replace") for k, dead in gone.items() if not dead}
        return live, {k.decode(errors="replace") for k, dead in gone.items() if dead}

    def _decoded(
        self, ranges: list[Range], event: str, report: ReplayReport, progress: Progress | None
    ) -> Iterator[list[tuple[Message, dict[str, Any]]]]:
        """The messages of ``ranges`` decoded, ``BATCH`` at a time; the undecodable counted,
        logged and left out."""
        for batch in batched(read_ranges(self.settings, ranges), BATCH):
            report.read += len(batch)
            if progress is not None:
                progress(len(batch))
            decode = self.codec.decode
            decoded = []
            for msg in batch:
                try:
                    decoded.append((msg, decode(msg.value(), expect=event).record))
                except DecodeError as exc:
                    report.undecodable += 1
                    log.warning(
                        "replay skips an undecodable message",
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        reason=str(exc),
                    )
            yield decoded

    def _feedback(
        self, query_ids: set[str], since_ms: int, until_ms: int
    ) -> dict[str, dict[str, Any]]:
        """The first feedback of each query, from the time span its experiences cover. Only
        feedback keyed by one of ``query_ids`` is decoded (the sampler joins by key too)."""
        window = Window(
            since=datetime.fromtimestamp(since_ms / 1000, UTC),
            until=datetime.fromtimestamp(until_ms / 1000, UTC),
        )
        ranges = resolve(self.admin, self.settings.topic(FEEDBACK_TOPIC), window)
        keys = {q.encode() for q in query_ids}
        found: dict[str, dict[str, Any]] = {}
        for batch in batched(read_ranges(self.settings, ranges), BATCH):
            for msg in batch:
                if msg.key() not in keys:
                    continue
                try:
                    record = self.codec.decode(msg.value(), expect=FEEDBACK).record
                except DecodeError:
                    continue  # dead-lettered by the sampler when it first met it
                if record["query_id"] in query_ids:
                    found.setdefault(record["query_id"], record)
        return found

    def dead_letters(
        self,
        topic: str,
        window: Window,
        *,
        execute: bool = False,
        include_undecodable: bool = False,
        progress: Progress | None = None,
    ) -> ReplayReport:
        """Send the dead letters of ``topic`` (a design name) back to it, bytes and key as they
        came, once the cause is fixed. By default only those that now decode as the topic's
        event go back: the others would only be dead-lettered again."""
        expect = _EVENTS_OF.get(topic)
        if expect is None:
            raise ReplayError(
                f"{topic!r} is not a tier3 topic with dead letters: one of {', '.join(_EVENTS_OF)}"
            )
        report = ReplayReport(
            DEAD_LETTERS,
            uuid.uuid4().hex[:12],
            self.settings.topic(topic + DLQ_SUFFIX),
            self.target.topic(topic),
            resolve(self.admin, self.settings.topic(topic + DLQ_SUFFIX), window),
        )
        letters = []
        for msg in read_ranges(self.settings, report.ranges):
            report.read += 1
            if progress is not None:
                progress(1)
            letter = DeadLetter.from_message(msg)
            try:
                self.codec.decode(letter.value, expect=expect)
            except DecodeError:
                report.undecodable += 1
                if not include_undecodable:
                    continue
            report.chosen[letter.headers.get(HEADER_TYPE, "unknown")] += 1
            letters.append((None, letter.key, letter.value))
        if execute:
            self._produce(report, letters)
        return report

    def _send(self, report: ReplayReport, jobs: list[tuple[int, dict[str, Any]]]) -> None:
        """Send capture jobs: keyed by query_id, in the source's partition when layouts match."""
        same_layout = len(offsets.partitions_of(self.admin, report.source)) == len(
            self._target_partitions(report.target)
        )
        self._produce(
            report,
            [
                (
                    partition if same_layout else None,
                    job["query_id"].encode(),
                    self.codec.encode(CAPTURE_JOB, job),
                )
                for partition, job in jobs
            ],
        )

    def _target_partitions(self, target: str) -> list[offsets.Partition]:
        if self.target is not self.settings:
            try:
                return offsets.partitions_of(self.admin, target)  # one topic's metadata: cheap
            except LookupError:
                create_topics(self.target)
        return offsets.partitions_of(self.admin, target)

    def _produce(
        self, report: ReplayReport, messages: list[tuple[int | None, bytes | None, bytes | None]]
    ) -> None:
        """Produce ``(partition or None, key, value)`` to the report's target; wait for acks."""
        self._target_partitions(report.target)
        send(self.target, self.codec, self.rate, report, messages)
