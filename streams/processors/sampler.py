"""The sampler: joins each query's experience with its feedback and emits the chosen capture jobs.

Experiences and feedback arrive in either order on two co-partitioned topics keyed by query_id,
so both events of a query reach the same worker, in one stream, read by one agent, in batches
(``faust_app.each_batch``). The agent keeps what it has seen of undecided queries in the
``waiting`` table: an experience waits there until its feedback arrives or ``timeout`` passes
(feedback that comes first waits for its experience the same way). Then ``sampling.decide``
chooses, and a chosen query becomes one CaptureJob on ``capture-jobs``, keyed by query_id, in
the partition its experience came from.

**Decided at the experience when the policy allows.** When no rule in force reads the feedback
(``Policy.needs_feedback`` is False: the default policy), ``decide(experience, None)`` is final
the moment the experience arrives. A query it does not choose (about 75%) is let go then, with
no table write; its feedback, when it comes, finds the query in ``let_go`` (memory only, for
``timeout``) and is dropped, again with no write. Only chosen queries enter ``waiting``, and
only so that their feedback's rating can travel with the job. A feedback that comes before its
experience still waits in the table (the experience decides what becomes of it), and one that
comes after a restart emptied ``let_go`` waits and expires: a write, never a wrong decision,
since the decision depends on the experience alone. With ``low_rating`` on, every query waits
for its feedback as before.

Every table value starts with a 12-byte head, the entry's deadline (ms since the epoch) and its
partition, so a timer can expire entries without an event in hand, and a worker that has just
rebuilt a table from its changelog knows exactly when each entry falls due.

**No job twice, none lost.** The sampler runs at-least-once (see ``faust_app``). A decision's
consequences in the tables (the ``captured`` marker, the removal from ``waiting``) are written
only once the job itself is acknowledged by the broker. Dying before that leaves the query
waiting in the changelog, so the restarted worker decides it again: nothing is lost. Dying after
it leaves the marker, so replayed input finds the query already captured: nothing is repeated.
A crash between the acknowledgement and the marker leaves a job without its marker; so after
every rebalance, before it takes any event, a worker reads back ``capture-jobs`` past the last
marked job of each partition it now owns (each marker records its job's offset) and marks what
it finds. A job is repeated only if that read-back fails, and the capture consumers write
idempotently by query_id, so even then no trace is duplicated.

**Bounded tables.** ``waiting`` holds a query for at most ``timeout``; ``captured`` holds a
marker for ``dedupe_window`` (one hour by default), only for captured queries.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from typing import Any

import faust
import structlog
from confluent_kafka import KafkaError, Message
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge
from tier3.schemas import Codec, DecodeError
from tier3.schemas.registry import CAPTURE_JOB, EXPERIENCE, FEEDBACK
from tier3.streams.kafka import offsets
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, EXPERIENCES
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.streams.processors import faust_app
from tier3.streams.processors.faust_app import EVENTS_IN, TABLE_ENTRIES, DeadLetters, PartitionBook
from tier3.streams.processors.sampling import capture_job, decide
from tier3.streams.processors.settings import SamplerSettings

log = structlog.get_logger("tier3.sampler")

ROLE = "sampler"
_HEAD = struct.Struct(">qi")  # deadline in ms since the epoch, partition
_MARK = struct.Struct(">qiq")  # the same head, then the job's offset in capture-jobs
_KIND_EXPERIENCE = b"E"
_KIND_FEEDBACK = b"F"

JOBS_OUT = Counter(
    "tier3_sampler_jobs", "Capture jobs emitted (acknowledged), by reason", ["reason"]
)
DECISIONS = Counter(
    "tier3_sampler_decisions", "Queries decided, by outcome (captured or skipped)", ["outcome"]
)
SAMPLING_RATE = Gauge(
    "tier3_sampler_sampling_rate", "Share of decided queries captured since the worker started"
)


SWEEP_EVERY_S = 1.0  # how often expired table entries are swept
# Queries let go at sight, remembered in memory for the timeout; past this many the oldest are
# forgotten (a late feedback of one of those just waits in the table and expires).
LET_GO_REMEMBERED = 200_000
BATCH_SIZE = 2000  # events per batch taken from the stream
BATCH_WITHIN_S = 0.05  # or what came within this long


def _head(deadline_ms: int, partition: int) -> bytes:
    return _HEAD.pack(deadline_ms, partition)


class Sampler:
    """The sampler's agent, tables and timers, installed on a Faust app."""

    def __init__(
        self,
        app: faust.App,
        settings: KafkaSettings,
        config: SamplerSettings,
        codec: Codec,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config
        self.policy = config.policy()
        self.codec = codec
        self.clock = clock
        self.experiences = settings.topic(EXPERIENCES)
        self.feedback = settings.topic(FEEDBACK_TOPIC)
        self.source = faust_app.raw_topic(app, self.experiences, self.feedback)
        self.jobs = settings.topic(CAPTURE_JOBS)
        self.waiting = faust_app.raw_table(app, "waiting", settings.partitions)
        self.captured = faust_app.raw_table(app, "captured", settings.partitions)
        self.writer = faust_app.writer(app, settings)
        self.dead_letters = DeadLetters(self.writer, ROLE)
        self.book = PartitionBook(app, ROLE, [self.experiences, self.feedback])
        # Jobs sent but not yet acknowledged: their query is decided, though no table says so yet.
        self.in_flight: set[bytes] = set()
        # Deadlines in the order they fall due, per table; rebuilt from the table after a
        # rebalance, appended to as entries are written (deadlines only grow, so they stay sorted).
        self._due: dict[str, deque[tuple[int, bytes]]] = {"waiting": deque(), "captured": deque()}
        self._owned: set[int] | None = None
        self._decided = {"captured": 0, "skipped": 0}
        self._decision_counters = {o: DECISIONS.labels(o) for o in self._decided}
        # Decide at the experience when no rule in force needs the feedback (see the docstring).
        self.at_sight = not self.policy.needs_feedback
        self.let_go: OrderedDict[bytes, int] = OrderedDict()  # key → when to forget it (ms)
        self.settings = settings
        self.captured.on_recover(self._on_recovered)
        faust_app.each_batch(
            app, self.source, "join", self.handle_batch, BATCH_SIZE, BATCH_WITHIN_S
        )
        faust_app.every(app, SWEEP_EVERY_S, self.sweep)
        faust_app.every(app, 2.0, self.report)

    # -- the stream ------------------------------------------------------------------------------

    def handle_batch(self, messages: list[Any]) -> None:
        """Take a batch of experience and feedback messages (raw bytes) a step further."""
        outcomes: Tally[tuple[str, str]] = Tally()
        # Experiences first (each topic keeps its order): a feedback whose experience is in the
        # same batch then finds its query decided, instead of waiting in the table for it.
        experiences = [m for m in messages if m.topic == self.experiences]
        if len(experiences) not in (0, len(messages)):
            messages = experiences + [m for m in messages if m.topic != self.experiences]
        for message in messages:
            outcome = self.handle(message)
            if outcome is not None:
                outcomes[(message.topic, outcome)] += 1
        for (topic, outcome), count in outcomes.items():
            EVENTS_IN.labels(ROLE, topic, outcome).inc(count)
        self.writer.serve()

    def handle(self, message: Any) -> str | None:
        """Take one message a step further; what became of it (None: a dead letter, counted)."""
        self.book.read[message.tp] = message.offset
        is_experience = message.topic == self.experiences
        expect = EXPERIENCE if is_experience else FEEDBACK
        try:
            record = self.codec.decode(message.value, expect=expect).record
        except DecodeError as exc:
            self.dead_letters.send(message, str(exc), type(exc).__name__)
            return None
        key = record["query_id"].encode()
        if message.key != key:
            # Keyed otherwise, its other half may sit in another partition: it can never meet it.
            reason = f"key {message.key!r} is not the event's query_id {record['query_id']!r}"
            self.dead_letters.send(message, reason, "KeyMismatch")
            return None
        return self._take(message.partition, key, record, message.value, is_experience)

    def _take(
        self, partition: int, key: bytes, record: dict[str, Any], raw: bytes, is_experience: bool
    ) -> str:
        if key in self.in_flight or key in self.captured.data:
            return "already_decided"
        if key in self.let_go:
            return "let_go"
        held = self.waiting.data.get(key)
        if self.at_sight:
            if is_experience and decide(record, None, self.policy) is None:
                self._let_go_now(partition, key, held)
                return "let_go"
            if not is_experience and not self.policy.enabled:
                return "let_go"  # capture is off: nothing can be chosen, nothing need wait
        if held is None:
            deadline = int((self.clock() + self.config.sampling_timeout_s) * 1000)
            kind = _KIND_EXPERIENCE if is_experience else _KIND_FEEDBACK
            self.writer.put(self.waiting, partition, key, kind + _head(deadline, partition) + raw)
            self._due["waiting"].append((deadline, key))
            return "waiting"
        held_is_experience = held[:1] == _KIND_EXPERIENCE
        if held_is_experience == is_experience:
            return "duplicate"
        other = self.codec.decode(held[1 + _HEAD.size :]).record
        experience, feedback = (record, other) if is_experience else (other, record)
        self._conclude(partition, key, experience, feedback)
        return "joined"

    def _conclude(
        self,
        partition: int,
        key: bytes,
        experience: dict[str, Any],
        feedback: dict[str, Any] | None,
    ) -> None:
        reason = decide(experience, feedback, self.policy)
        if reason is None:
            self.writer.drop(self.waiting, partition, key)
            self._count_decision("skipped")
            return
        job = capture_job(experience, feedback, reason, int(self.clock() * 1000))
        self.in_flight.add(key)
        acknowledged = partial(self._job_acknowledged, partition, key, reason)
        value = self.codec.encode(CAPTURE_JOB, job)
        self.writer.send(self.jobs, key, value, partition, on_delivery=acknowledged)

    def _job_acknowledged(
        self, partition: int, key: bytes, reason: str, error: KafkaError | None, sent: Message
    ) -> None:
        self.in_flight.discard(key)
        if error is not None:
            # The query still waits in the table, so the sweep decides it again at its deadline.
            log.error("capture job not delivered", query_id=key.decode(), error=error.str())
            return
        self._mark_captured(partition, key, sent.offset(), reason)
        JOBS_OUT.labels(reason).inc()
        self._count_decision("captured")

    def _mark_captured(self, partition: int, key: bytes, job_offset: int, reason: str) -> None:
        # Written even if a rebalance took the partition meanwhile: the new owner either reads
        # the marker in the changelog or finds the job in capture-jobs (see ``_reconcile``).
        expires = int((self.clock() + self.config.dedupe_window_s) * 1000)
        marker = _MARK.pack(expires, partition, job_offset) + reason.encode()
        self.writer.put(self.captured, partition, key, marker)
        self._due["captured"].append((expires, key))
        self.writer.drop(self.waiting, partition, key)

    def _let_go_now(self, partition: int, key: bytes, held: bytes | None) -> None:
        """Let an unchosen query go at its experience: remember it in memory, write nothing
        (but remove the feedback that came first, if it waits in the table)."""
        if held is not None:
            self.writer.drop(self.waiting, partition, key)
        self.let_go[key] = int((self.clock() + self.config.sampling_timeout_s) * 1000)
        if len(self.let_go) > LET_GO_REMEMBERED:
            self.let_go.popitem(last=False)
        self._count_decision("skipped")

    def _count_decision(self, outcome: str) -> None:
        # The counters' children once, not a label lookup per decision; the rate on report().
        self._decided[outcome] += 1
        self._decision_counters[outcome].inc()

    # -- timers ----------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Decide the experiences whose feedback did not come in time; expire old markers."""
        owned = self.book.owned_partitions(self.experiences)
        if not owned:
            self._owned = None
            return
        if owned != self._owned:
            self._rebuild(owned)
        now_ms = int(self.clock() * 1000)
        self._expire(self.waiting, self._due["waiting"], now_ms, self._timed_out)
        self._expire(self.captured, self._due["captured"], now_ms, None)
        while self.let_go and next(iter(self.let_go.values())) <= now_ms:
            self.let_go.popitem(last=False)

    def _expire(
        self,
        table: faust.Table,
        due: deque[tuple[int, bytes]],
        now_ms: int,
        on_expiry: Callable[[bytes, bytes], None] | None,
    ) -> None:
        while due and due[0][0] <= now_ms:
            deadline, key = due.popleft()
            value = table.data.get(key)
            if value is None or key in self.in_flight:
                continue
            offset = 1 if table is self.waiting else 0
            entry_deadline, partition = _HEAD.unpack_from(value, offset)
            if entry_deadline != deadline:
                continue  # a newer entry under the same key; it has its own place in the queue
            if on_expiry is None:
                self.writer.drop(table, partition, key)
            else:
                on_expiry(key, value)

    def _timed_out(self, key: bytes, value: bytes) -> None:
        _, partition = _HEAD.unpack_from(value, 1)
        if value[:1] == _KIND_FEEDBACK:
            # Feedback whose experience never came (or was decided long ago): nothing to capture.
            self.writer.drop(self.waiting, partition, key)
            EVENTS_IN.labels(ROLE, self.feedback, "expired_without_experience").inc()
            return
        experience = self.codec.decode(value[1 + _HEAD.size :]).record
        self._conclude(partition, key, experience, None)

    async def _on_recovered(self) -> None:
        """After a rebalance, before any event: settle the tables with what capture-jobs holds."""
        owned = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.experiences
        }
        self._rebuild(owned)
        if owned:
            latest = self._job_offsets(owned)
            found = await asyncio.to_thread(self._unmarked_jobs, latest)
            for partition, key, offset, reason in found:
                if key not in self.captured.data:
                    self._mark_captured(partition, key, offset, reason)
            if found:
                log.info("capture jobs found without their marker", count=len(found))

    def _job_offsets(self, owned: set[int]) -> dict[int, int | None]:
        """Per owned partition, the offset in capture-jobs of its latest marked job, if any."""
        latest: dict[int, int | None] = dict.fromkeys(owned)
        for value in self.captured.data.values():
            _, partition, offset = _MARK.unpack_from(value)
            if partition in latest and (latest[partition] or -1) < offset:
                latest[partition] = offset
        return latest

    def _unmarked_jobs(self, latest: dict[int, int | None]) -> list[tuple[int, bytes, int, str]]:
        """Jobs in capture-jobs after the latest marked one of each partition.

        A worker that died between a job's acknowledgement and its marker's write left exactly
        these behind; reading them back keeps their queries from being decided a second time.
        Where a partition has no marker, the last ``dedupe_window`` is read.
        """
        topic = self.jobs
        admin = AdminClient(self.settings.client_config())
        ends = offsets.watermarks(admin, [(topic, p) for p in latest])
        window_start = int((self.clock() - self.config.dedupe_window_s) * 1000)
        unknown = [(topic, p) for p, offset in latest.items() if offset is None]
        since = offsets.offsets_for_time(admin, unknown, window_start) if unknown else {}
        ranges = []
        for p, offset in latest.items():
            low, high = ends[(topic, p)]
            start = offset + 1 if offset is not None else since[(topic, p)]
            if start < 0:  # nothing written since the window began
                start = high
            ranges.append(offsets.Range(topic, p, max(start, low), high))
        found = []
        for message in offsets.read_ranges(self.settings, ranges):
            job = self.codec.decode(message.value(), expect=CAPTURE_JOB).record
            found.append((message.partition(), message.key(), message.offset(), job["reason"]))
        return found

    def _rebuild(self, owned: set[int]) -> None:
        """Re-read the tables after a rebalance: forget partitions given away, queue the rest."""
        for name, table in (("waiting", self.waiting), ("captured", self.captured)):
            offset = 1 if table is self.waiting else 0
            due = []
            for key, value in list(table.data.items()):
                deadline, partition = _HEAD.unpack_from(value, offset)
                if partition in owned:
                    due.append((deadline, key))
                else:
                    # Another worker owns it now; its copy came from the changelog. Local only.
                    table.data.pop(key, None)
            due.sort()
            self._due[name] = deque(due)
        self._owned = owned
        log.info(
            "sampler partitions",
            partitions=sorted(owned),
            waiting=len(self.waiting.data),
            captured=len(self.captured.data),
        )

    def report(self) -> None:
        TABLE_ENTRIES.labels(ROLE, "waiting").set(len(self.waiting.data))
        TABLE_ENTRIES.labels(ROLE, "captured").set(len(self.captured.data))
        TABLE_ENTRIES.labels(ROLE, "in_flight").set(len(self.in_flight))
        TABLE_ENTRIES.labels(ROLE, "let_go").set(len(self.let_go))
        decided = self._decided["captured"] + self._decided["skipped"]
        if decided:
            SAMPLING_RATE.set(self._decided["captured"] / decided)


def build(
    settings: KafkaSettings, config: SamplerSettings, workdir: Any, codec: Codec,
    **app_overrides: Any,
) -> tuple[faust.App, Sampler]:
    """A Faust app with the sampler installed, ready for ``faust_app.run_worker``."""
    app_overrides.setdefault("session_timeout_s", config.session_timeout_s)
    app = faust_app.make_app(settings, ROLE, workdir, **app_overrides)
    return app, Sampler(app, settings, config, codec)
