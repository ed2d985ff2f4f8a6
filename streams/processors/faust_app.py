"""The Faust application under tier3's stream processors (the sampler and the counter).

What both processors share lives here, once:

* **One app per role.** ``make_app(settings, "sampler", workdir)`` gives a ``faust.App`` whose id
  (the consumer group, and the stem of its tables' changelog topics) is the role under the
  deployment's topic prefix, e.g. ``tier3.sampler``. Two workers of one role share the work; the
  sampler and the counter are separate apps and separate processes, so each scales and restarts
  on its own and a slow one never holds the other back.
* **Raw bytes in, tier3's codec by hand.** Faust hands the processors undecoded bytes
  (``value_serializer='raw'``); they decode with ``tier3.schemas`` themselves, so an event that
  does not decode is caught where it can still go to its topic's dead-letter topic, with the
  reason in the same headers every tier3 stage writes (``dead_letter_headers``).
* **In-memory tables, backed by changelogs.** State lives in dicts; every change is also written
  to a compacted changelog topic, from which a restarted or newly assigned worker rebuilds it.
  Nothing on local disk needs keeping, so a worker can move to another machine freely.
* **At-least-once, not Faust's exactly_once.** faust-streaming's transactional mode is known to
  duplicate output and to crash on rebalance (faust-streaming/faust issues 177, 323 and 517), so
  the processors run at-least-once (every written record is acknowledged before an input
  offset is committed) and make their outputs idempotent themselves;
  docs/stream-processing.md has the details.
* **Faust reads, librdkafka writes.** Every record a processor writes (changelogs, outputs,
  dead letters) goes through its ``writer.Writer``, one librdkafka producer, not Faust's.
* **Metrics** on the process' Prometheus registry: events in by outcome, table sizes, consumer lag.

Where tier3 changes Faust's behaviour or reaches into its internals, it does so in
``faust_patches`` (each patch names the upstream behaviour and the versions checked); the
self-healing of a stalled worker is ``watchdog``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import structlog
from aiokafka.errors import IllegalStateError
from faust.types import TP
from prometheus_client import Counter, Gauge
from tier3.streams.kafka.dead_letters import dead_letter_headers
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import DLQ_SUFFIX, TopicSpec, create_named_topics
from tier3.streams.processors import faust_patches
from tier3.streams.processors.watchdog import Watchdog, restart_in_place
from tier3.streams.processors.writer import Writer

log = structlog.get_logger("tier3.faust")

EVENTS_IN = Counter(
    "tier3_processor_events",
    "Events a stream processor read, by role, topic and what became of them",
    ["role", "topic", "outcome"],
)
TABLE_ENTRIES = Gauge(
    "tier3_processor_table_entries", "Entries held in a processor's table", ["role", "table"]
)
CONSUMER_LAG = Gauge(
    "tier3_processor_consumer_lag",
    "Messages not yet read in an assigned partition (high watermark minus position)",
    ["role", "topic", "partition"],
)

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _credentials(settings: KafkaSettings) -> faust.auth.Credentials | None:
    """The broker credentials of ``settings``, as Faust (aiokafka) wants them."""
    protocol = settings.security_protocol
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_ca_location)
        if settings.ssl_certificate_location:
            context.load_cert_chain(settings.ssl_certificate_location, settings.ssl_key_location)
    if protocol.startswith("SASL"):
        password = settings.password()
        if not settings.sasl_username or password is None:
            raise ValueError(
                "SASL is on but TIER3_SASL_USERNAME and TIER3_SASL_PASSWORD(_FILE) are not set"
            )
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def make_app(
    settings: KafkaSettings,
    role: str,
    workdir: Path,
    session_timeout_s: float = 30.0,
    **overrides: Any,
) -> faust.App:
    """A Faust app for one processor role, configured from tier3's settings.

    ``session_timeout_s`` is how long the group waits for a worker that stopped answering (one
    that crashed) before its partitions go to the others; a clean stop hands them over at once.
    """
    faust_patches.apply()
    workdir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.topic(role),
        broker=[f"kafka://{host.strip()}" for host in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        datadir=str(workdir),
        autodiscover=False,
        web_enabled=False,  # metrics go through prometheus_client on --metrics-port instead
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=min(3.0, session_timeout_s / 4),
        **overrides,
    )


def create_internal_topics(app: faust.App, settings: KafkaSettings) -> None:
    """Create the app's changelog and leader topics before its worker starts.

    Faust creates them itself as the worker starts, but does not wait until the broker's
    metadata shows them: a group that forms before then leaves the topic out of the assignment
    ("Ignoring missing topic"), so a table's changelog is not recovered, or an agent never reads.
    Seen here on a loaded broker; creating them first, and waiting for leaders, rules it out.
    """
    compacted = {"cleanup.policy": "compact"}
    specs = {
        table.changelog_topic_name: TopicSpec(
            table.changelog_topic_name, table.partitions or settings.partitions, compacted
        )
        for table in app.tables.values()
    }
    leader = f"{app.conf.id}-__assignor-__leader"
    specs[leader] = TopicSpec(leader, 1)
    create_named_topics(settings, specs)


def raw_topic(app: faust.App, *names: str, **options: Any) -> faust.TopicT:
    """A topic (or several, read as one stream) whose keys and values stay bytes."""
    return app.topic(*names, **RAW, **options)


def raw_table(app: faust.App, name: str, partitions: int) -> faust.Table:
    """A table of bytes to bytes in memory, kept in a compacted changelog topic."""
    # bytes as key and value types is what makes Faust's changelog serializers 'raw'.
    return app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)


WRITER_SERVE_EVERY_S = 0.05  # how often delivery reports are served when no batch comes


def writer(app: faust.App, settings: KafkaSettings) -> Writer:
    """The worker's one ``Writer``: Faust's commits wait for it (``faust_patches.flush_also``),
    and a timer serves its delivery reports between batches."""
    made = Writer(settings, client_id=f"{app.conf.id}-writer")
    faust_patches.flush_also(app, made.drain)
    every(app, WRITER_SERVE_EVERY_S, made.serve)
    return made


class DeadLetters:
    """Sends messages that cannot be processed to ``<topic>.dlq``, with the reason in headers."""

    def __init__(self, writer: Writer, role: str) -> None:
        self.writer = writer
        self.role = role

    def send(self, message: Any, reason: str, error_type: str) -> None:
        """Queue ``message`` (a Faust message) for its dead-letter topic.

        The source offset is not committed before the dead letter is acknowledged (the commit
        waits for the writer), so a crash in between sends the letter again.
        """
        headers = dead_letter_headers(
            message.topic, message.partition, message.offset, reason, error_type, self.role
        )
        self.writer.send(message.topic + DLQ_SUFFIX, message.key, message.value, 0, headers)
        EVENTS_IN.labels(self.role, message.topic, "dead_letter").inc()
        log.warning(
            "dead letter",
            role=self.role,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
        )


class PartitionBook:
    """Which partitions this worker owns, how far it has read each one, and its consumer lag.

    Every two seconds it publishes the lag of each source partition and hands the figures to the
    worker's ``Watchdog``, which acts when the worker stalls.
    """

    def __init__(self, app: faust.App, role: str, sources: list[str]) -> None:
        self.app = app
        self.role = role
        self.sources = set(sources)
        self.read: dict[TP, int] = {}
        self.lag = 0
        self._lag_labels: set[tuple[str, str]] = set()
        self.watchdog = Watchdog(app)
        app.timer(2.0, name=f"{app.conf.id}.partitions")(self.check)

    def owned_partitions(self, topic: str) -> set[int]:
        """Partitions of ``topic`` this worker owns, once settled (no rebalance or recovery)."""
        if not self.ready():
            return set()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def ready(self) -> bool:
        """True when the tables are recovered and no rebalance is going on."""
        recovery = self.app.tables.recovery
        return not self.app.rebalancing and recovery.completed.is_set() and not recovery.in_recovery

    async def check(self) -> None:
        self.watchdog.beat()
        await self._update_lag()
        await self.watchdog.check(self.ready(), self.lag, sum(self.read.values()))

    async def _update_lag(self) -> None:
        consumer = self.app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in self.sources]
        try:
            # The broker's end offsets, not the fetcher's: a partition this worker has not
            # fetched yet (just taken over, or stalled) has no watermark in the fetcher.
            ends = await consumer.highwaters(*tps) if tps else {}
        except Exception as exc:  # the broker is away: keep the last figures
            log.warning("end offsets not available for lag", error=repr(exc))
            return
        seen: set[tuple[str, str]] = set()
        total = 0
        for tp, high in ends.items():
            if high is None:
                continue
            # Where reading stands: past the last event processed, or, for a partition not
            # read yet here, the consumer's position (the committed offset it starts from).
            position = self.read.get(tp, -1) + 1
            if position == 0:
                try:
                    position = await consumer.position(tp) or 0
                except IllegalStateError:
                    # Given away by a rebalance while the end offsets were asked: not ours to
                    # report. Raised from this timer it crashed the worker, again at every
                    # restart while the group settled (seen on a freshly started broker).
                    continue
            lag = max(0, high - position)
            labels = (tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(self.role, *labels).set(lag)
            seen.add(labels)
            total += lag
        for labels in self._lag_labels - seen:  # partitions given away: stop reporting them
            CONSUMER_LAG.remove(self.role, *labels)
        self._lag_labels = seen
        self.lag = total


def each_message(
    app: faust.App, topic: faust.TopicT, name: str, fun: Callable[[Any], None]
) -> None:
    """Run ``fun`` on every message of ``topic`` (raw key, value, topic, partition, offset),
    in one Faust agent named ``<app id>.<name>``."""

    async def agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            fun(event.message)

    agent.__name__ = agent.__qualname__ = f"{fun.__qualname__}_agent"
    app.agent(topic, name=f"{app.conf.id}.{name}")(agent)


def each_batch(
    app: faust.App,
    topic: faust.TopicT,
    name: str,
    fun: Callable[[list[Any]], None],
    size: int = 1000,
    within_s: float = 0.05,
) -> None:
    """Run ``fun`` on the messages of ``topic`` in batches (``Stream.take_events``): up to
    ``size`` messages, or what came within ``within_s``, in one Faust agent ``<app id>.<name>``.

    Faust acks a batch's events only after ``fun`` returns, so everything ``fun`` writes is
    queued before their offsets can be committed (and the commit waits for the writer):
    at-least-once, as with ``each_message``. A batch lets the processor do
    per-batch what it would otherwise do per event (clock, metrics); it adds at most
    ``within_s`` of latency.
    """

    async def agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(size, within=within_s):
            fun([event.message for event in events])

    agent.__name__ = agent.__qualname__ = f"{fun.__qualname__}_agent"
    app.agent(topic, name=f"{app.conf.id}.{name}")(agent)


def every(app: faust.App, seconds: float, fun: Callable[[], None]) -> None:
    """Run ``fun`` on the worker's event loop every ``seconds`` (a Faust timer)."""

    async def tick() -> None:
        fun()

    tick.__name__ = tick.__qualname__ = f"{fun.__qualname__}_timer"
    app.timer(seconds, name=f"{app.conf.id}.{fun.__qualname__}")(tick)


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run the app's worker in this process until SIGINT or SIGTERM (then stop cleanly).

    A worker that ends with an error (the broker unreachable at start-up, say) starts again.
    """
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    faust_patches.without_spinner(worker)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        # A stop asked for by SIGTERM or SIGINT is not a failure: only the others restart.
        if exc.code not in (0, None) and not faust_patches.stopped_by_signal(worker):
            restart_in_place(f"the worker exited with {exc.code}")
        raise
