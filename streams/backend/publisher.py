"""The backend's side of tier3: publish experiences and feedback without ever slowing a request.

``publish()`` encodes the event (Avro, about 5 µs) and hands it to librdkafka (about 2 µs),
on the caller's thread, and returns; librdkafka's own threads batch, compress and deliver it.
There is no Python sender thread: librdkafka already is one. An earlier design queued events for
a Python thread to encode, as analytics clients with a blocking HTTP transport do (Segment's,
Sentry's); in a web worker that thread cost more than it saved. Each event woke it, it and the
event loop took the GIL from each other (30 times the involuntary context switches of this
design), and under load the workers' p99 grew by tens of ms (bench/RESULTS.md, issue 13).

Events wait in librdkafka for ``linger_ms`` (default 100 ms) so that several travel in one
request. That matters more than it looks: librdkafka sends one ProduceRequest per partition
(librdkafka#1700), and events keyed by query_id spread over every partition, so at 5 ms a web
worker publishing 150 events/s over 6 partitions sent one request per event, each costing
librdkafka's thread and the broker about as much CPU as the whole request it came from.

When the broker is away, events wait in librdkafka and go out once it is back, within
``delivery_timeout_ms``. ``buffer_messages`` bounds what waits. What does not fit is handled by
``on_full``:

* ``"drop"`` (default): the event is dropped at once, counted, and logged (at most once a second),
  because a backend must never stall on analytics;
* ``"block"``: wait up to ``block_ms`` for room, then drop.

The producer is idempotent with ``acks=all``: retries inside librdkafka never duplicate an event.
A record that does not fit its schema is not published: ``publish`` returns False, and it is
counted as ``invalid`` and logged, without its content. A small thread serves librdkafka's
reports (errors only) and refreshes ``stats.pending``, waking a few times a second.

From asyncio code (a FastAPI service, ``examples/widget_service``) use ``apublish*``, ``aflush``
and ``aclose``: none of them sleeps on the event loop, whatever ``on_full`` says.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from tier3.schemas import Codec, EncodeError, codec_for
from tier3.schemas.codec import Record
from tier3.schemas.registry import EXPERIENCE, FEEDBACK
from tier3.streams.kafka.settings import CaptureSwitch, KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.streams.telemetry.logs import library_logger

log = library_logger("tier3.publisher")  # silent unless the backend configures logging

_TOPIC_OF_EVENT = {EXPERIENCE: EXPERIENCES, FEEDBACK: FEEDBACK_TOPIC}


@dataclass
class PublisherStats:
    """What happened to the events handed to ``publish``; plain ints, read at scrape time."""

    accepted: int = 0  # handed to librdkafka
    dropped: int = 0
    failed: int = 0
    invalid: int = 0
    disabled: int = 0
    pending: int = 0  # in librdkafka, not yet acknowledged (refreshed a few times a second)
    last_error: str | None = None
    errors_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        return self.accepted - self.failed - self.pending


@dataclass
class PublisherConfig:
    buffer_messages: int = 200_000
    buffer_kbytes: int = 256 * 1024
    linger_ms: int = 100  # see the module's docstring: librdkafka sends a request per partition
    delivery_timeout_ms: int = 300_000
    on_full: Literal["drop", "block"] = "drop"
    block_ms: int = 50
    compression: str = "lz4"
    extra: dict[str, Any] = field(default_factory=dict)


REPORTS_EVERY_S = 0.2  # the longest librdkafka's error reports wait to be served
ERROR_LOG_EVERY_S = 10.0  # the most often one kind of client error is logged


class Publisher:
    """Publish tier3 events from a backend process. Thread-safe; safe to call from asyncio."""

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        config: PublisherConfig | None = None,
        *,
        enabled: bool | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.settings = settings or KafkaSettings()
        self.config = config or PublisherConfig()
        self.enabled = CaptureSwitch().enabled if enabled is None else enabled
        self.stats = PublisherStats()
        self._codec = codec or codec_for(self.settings.framing, self.settings.schema_registry_url)
        self._topics = {event: self.settings.topic(t) for event, t in _TOPIC_OF_EVENT.items()}
        self._last_drop_log = 0.0
        self._error_log: dict[int, tuple[float, int]] = {}  # code -> (last logged, not logged)
        self._closed = threading.Event()
        self._producer: Producer | None = None
        self._reporter: threading.Thread | None = None
        if self.enabled:
            self._producer = Producer(self._producer_config())
            self._reporter = threading.Thread(
                target=self._serve_reports, name="tier3-publisher", daemon=True
            )
            self._reporter.start()

    def _producer_config(self) -> dict[str, Any]:
        c = self.config
        return {
            **self.settings.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": c.linger_ms,
            "compression.type": c.compression,
            "queue.buffering.max.messages": c.buffer_messages,
            "queue.buffering.max.kbytes": c.buffer_kbytes,
            "message.timeout.ms": c.delivery_timeout_ms,
            # Successes are counted as accepted minus failures minus pending: one Python callback
            # per delivered event would cost more than the whole publish() call.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "log_level": 3,
            **c.extra,
        }

    # -- the hot path: the caller's thread --

    def publish(self, event: str, key: str, record: Record) -> bool:
        """Encode one event and hand it to librdkafka. Returns at once: True if it was taken."""
        producer = self._producer
        if producer is None:
            if self._closed.is_set():
                raise RuntimeError("publish() after close(): this publisher is closed")
            self.stats.disabled += 1
            return False
        topic = self._topics.get(event)
        if topic is None:
            raise ValueError(
                f"the backend publisher sends Experience and Feedback events, not {event}; "
                "use tier3.streams.kafka.events.EventProducer for pipeline events"
            )
        try:
            value = self._codec.encode(event, record)
        except EncodeError as exc:
            self.stats.invalid += 1
            self.stats.last_error = str(exc)
            log.error(
                "event does not fit its schema; not published", event_type=event, reason=str(exc)
            )
            return False
        key_bytes = key.encode()
        try:
            producer.produce(topic, value, key_bytes)
        except BufferError:
            return self._when_full(producer, topic, value, key_bytes)
        self.stats.accepted += 1
        return True

    def publish_experience(self, record: Record) -> bool:
        """Publish an Experience, keyed by its query_id."""
        return self.publish(EXPERIENCE, record["query_id"], record)

    def publish_feedback(self, record: Record) -> bool:
        """Publish a Feedback, keyed by its query_id."""
        return self.publish(FEEDBACK, record["query_id"], record)

    # -- the same, from asyncio: never sleeps on the event loop --

    async def apublish(self, event: str, key: str, record: Record) -> bool:
        """``publish`` for asyncio code.

        With ``on_full="drop"`` (the default) this is ``publish`` itself, on the loop: it never
        waits, and a hop to a thread would cost more than the call. With ``on_full="block"`` a
        full buffer makes ``publish`` sleep up to ``block_ms``, which on the event loop would
        stall every request the process is serving; so then the wait happens in a worker thread
        and only this request waits.
        """
        if self.config.on_full == "block" and self._full():
            return await asyncio.to_thread(self.publish, event, key, record)
        return self.publish(event, key, record)

    async def apublish_experience(self, record: Record) -> bool:
        """``publish_experience`` for asyncio code (see ``apublish``)."""
        return await self.apublish(EXPERIENCE, record["query_id"], record)

    async def apublish_feedback(self, record: Record) -> bool:
        """``publish_feedback`` for asyncio code (see ``apublish``)."""
        return await self.apublish(FEEDBACK, record["query_id"], record)

    def _full(self) -> bool:
        return self._producer is not None and len(self._producer) >= self.config.buffer_messages

    def _when_full(self, producer: Producer, topic: str, value: bytes, key: bytes) -> bool:
        if self.config.on_full == "block":
            deadline = time.monotonic() + self.config.block_ms / 1000
            while (left := deadline - time.monotonic()) > 0:
                producer.poll(min(left, 0.005))  # returns early when a report frees room
                try:
                    producer.produce(topic, value, key)
                except BufferError:
                    continue
                self.stats.accepted += 1
                return True
        self.stats.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log > 1.0:
            self._last_drop_log = now
            log.warning(
                "publisher buffer full: dropping events",
                dropped_total=self.stats.dropped,
                buffer_messages=self.config.buffer_messages,
                policy=self.config.on_full,
            )
        return False

    # -- librdkafka's reports: the reporter thread --

    def _serve_reports(self) -> None:
        producer = self._producer
        assert producer is not None
        # poll() waits with the GIL released and returns early when a report comes, so this
        # thread takes the GIL a few times a second, not once per event.
        while not self._closed.is_set():
            producer.poll(REPORTS_EVERY_S)
            self.stats.pending = len(producer)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self.stats.failed += 1
        reason = err.name()
        self.stats.errors_by_reason[reason] = self.stats.errors_by_reason.get(reason, 0) + 1
        self.stats.last_error = err.str()
        if self.stats.failed == 1 or self.stats.failed % 1000 == 0:
            log.error(
                "event not delivered",
                topic=msg.topic(),
                reason=err.str(),
                failed_total=self.stats.failed,
            )

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client errors: with the broker away it reports one every few hundred
        ms, so each kind is logged at most every ERROR_LOG_EVERY_S, with how many were not."""
        self.stats.last_error = err.str()
        now = time.monotonic()
        last, unlogged = self._error_log.get(err.code(), (-ERROR_LOG_EVERY_S, 0))
        if err.fatal() or now - last >= ERROR_LOG_EVERY_S:
            self._error_log[err.code()] = (now, 0)
            log.warning(
                "kafka client error",
                code=err.name(),
                reason=err.str(),
                fatal=err.fatal(),
                unlogged=unlogged,
            )
        else:
            self._error_log[err.code()] = (last, unlogged + 1)

    # -- lifecycle --

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until handed events are delivered (or ``timeout``). Returns how many remain."""
        if self._producer is None:
            return 0
        remaining = self._producer.flush(timeout)
        self.stats.pending = remaining
        return remaining

    def close(self, timeout: float = 30.0) -> int:
        """Flush and stop. Returns the number of events that could not be delivered in time."""
        remaining = self.flush(timeout)
        self._closed.set()
        if self._reporter is not None:
            self._reporter.join(timeout=1.0)
        # Dropping the client ends librdkafka's threads: a closed publisher must not go on
        # reconnecting to a broker for the rest of the process's life.
        self._producer = None
        if remaining:
            log.error("publisher closed with undelivered events", undelivered=remaining)
        return remaining

    async def aflush(self, timeout: float = 30.0) -> int:
        """``flush()`` for asyncio code: waits in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.flush, timeout)

    async def aclose(self, timeout: float = 30.0) -> int:
        """``close()`` for asyncio code: flushes in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_metrics(self, registry: Any = REGISTRY) -> None:
        """Expose this publisher's counters on a Prometheus registry."""
        registry.register(_PublisherCollector(self.stats))


# The publisher's Prometheus metrics: their names and help, and the outcomes (PublisherStats'
# fields) the events metric is labelled by. A service with several worker processes exports the
# same ones its own way (examples/widget_service).
EVENTS_METRIC = ("tier3_publisher_events", "Events handed to publish(), by outcome")
PENDING_METRIC = ("tier3_publisher_pending", "Events queued, not yet delivered")
OUTCOMES = ("accepted", "delivered", "failed", "dropped", "invalid", "disabled")


class _PublisherCollector(Collector):
    def __init__(self, stats: PublisherStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        events = CounterMetricFamily(*EVENTS_METRIC, labels=["outcome"])
        for outcome in OUTCOMES:
            events.add_metric([outcome], getattr(self._stats, outcome))
        yield events
        yield GaugeMetricFamily(*PENDING_METRIC, value=self._stats.pending)
