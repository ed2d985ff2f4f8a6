"""The counter: counts distinct new traces per student model and requests training at a threshold.

Traces are keyed by query_id on a compacted topic with many partitions, while a count per model
needs one owner. So the counter has two steps, the way Kafka Streams repartitions:

1. **route** (an agent on ``traces``, stateless): decode each trace (a bad one goes to
   ``traces.dlq``; a tombstone, a deleted trace, is skipped) and forward its query_id, keyed by
   the target model, to the counter's own one-partition topic ``<prefix>counter.new-traces``.
2. **count** (an agent on that topic): the ``counted`` table remembers every (model, query_id)
   ever counted and the batch it went into, so a re-delivered or replayed trace, or one forwarded
   twice after a crash, never counts again. The ``batches`` table holds, per model, the open
   batch's number and size. When the open batch reaches ``min_traces``, it is sealed, the next
   one opens, and one TrainingRequested goes to ``training-requests``. Its ``query_ids`` are the
   sealed batch's, sorted; its ``request_id`` is a hash of the model and those ids, so the same
   dataset always has the same id and the trainer can do each request once.

**One request per threshold crossing.** The sealed batch stays in the model's ``unsent`` list
until the broker acknowledges its request; a timer re-sends what is still unsent, which after a
crash is exactly what may not have gone out. A re-sent request is the same request (same id, same
ids), so the worst a crash can do is repeat a message, never ask to train twice on different
data or skip a batch.

``counted`` grows with the number of traces ever counted (tens of bytes each; a trace costs a
teacher call, so there are few). Forgetting any would let a replay of the compacted ``traces``
topic count old traces as new, so the counter keeps them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import faust
import structlog
from confluent_kafka import KafkaError, Message
from prometheus_client import Counter
from tier3.schemas import Codec, DecodeError
from tier3.schemas.registry import TRACE, TRAINING_REQUESTED
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import COUNTER_NEW_TRACES, TRACES, TRAINING_REQUESTS
from tier3.streams.processors import faust_app
from tier3.streams.processors.faust_app import EVENTS_IN, TABLE_ENTRIES, DeadLetters, PartitionBook
from tier3.streams.processors.settings import CounterSettings
from tier3.streams.processors.training_requests import THRESHOLD, training_request

log = structlog.get_logger("tier3.counter")

ROLE = "counter"

REQUESTS_OUT = Counter(
    "tier3_counter_training_requests", "Training requests acknowledged by the broker", ["model"]
)
COUNTED = Counter("tier3_counter_new_traces", "Distinct new traces counted", ["model"])


RESEND_EVERY_S = 1.0  # how often unacknowledged training requests are sent again


def _batch_tag(model: str, number: int) -> bytes:
    return f"{model}\x00{number}".encode()


class Count:
    """The counter's agents, tables and timer, installed on a Faust app."""

    def __init__(
        self,
        app: faust.App,
        settings: KafkaSettings,
        config: CounterSettings,
        codec: Codec,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.config = config
        self.codec = codec
        self.clock = clock
        self.traces = settings.topic(TRACES)
        self.new_traces_name = settings.topic(COUNTER_NEW_TRACES)
        self.source = faust_app.raw_topic(app, self.traces)
        self.new_traces = faust_app.raw_topic(
            app, self.new_traces_name, partitions=1, internal=True,
            retention=7 * 24 * 3600.0,
        )
        self.requests = settings.topic(TRAINING_REQUESTS)
        self.counted = faust_app.raw_table(app, "counted", 1)
        self.batches = faust_app.raw_table(app, "batches", 1)
        self.writer = faust_app.writer(app, settings)
        self.dead_letters = DeadLetters(self.writer, ROLE)
        self.book = PartitionBook(app, ROLE, [self.traces, self.new_traces_name])
        self.in_flight: set[tuple[str, int]] = set()
        faust_app.each_message(app, self.source, "route", self.route)
        faust_app.each_message(app, self.new_traces, "count", self.count)
        faust_app.every(app, RESEND_EVERY_S, self.resend_unsent)
        faust_app.every(app, 2.0, self.report)

    # -- step 1: route ---------------------------------------------------------------------------

    def route(self, message: Any) -> None:
        self.book.read[message.tp] = message.offset
        if message.value is None:
            EVENTS_IN.labels(ROLE, message.topic, "tombstone").inc()
            return
        try:
            trace = self.codec.decode(message.value, expect=TRACE).record
        except DecodeError as exc:
            self.dead_letters.send(message, str(exc), type(exc).__name__)
            return
        if message.key != trace["query_id"].encode():
            reason = f"key {message.key!r} is not the trace's query_id {trace['query_id']!r}"
            self.dead_letters.send(message, reason, "KeyMismatch")
            return
        self.writer.send(self.new_traces_name, self.config.student_model.encode(), message.key, 0)
        EVENTS_IN.labels(ROLE, message.topic, "routed").inc()

    # -- step 2: count ---------------------------------------------------------------------------

    def count(self, message: Any) -> None:
        self.book.read[message.tp] = message.offset
        model, query_id = message.key.decode(), message.value.decode()
        counted_key = f"{model}\x00{query_id}".encode()
        if counted_key in self.counted.data:
            EVENTS_IN.labels(ROLE, message.topic, "already_counted").inc()
            return
        state = self._state(model)
        self.writer.put(self.counted, 0, counted_key, _batch_tag(model, state["open"]))
        COUNTED.labels(model).inc()
        EVENTS_IN.labels(ROLE, message.topic, "counted").inc()
        state["count"] += 1
        sealed = None
        if state["count"] >= self.config.min_traces:
            sealed = state["open"]
            state["unsent"].append(sealed)
            state["open"] += 1
            state["count"] = 0
        self.writer.put(self.batches, 0, model.encode(), json.dumps(state).encode())
        if sealed is not None:
            self._send_request(model, sealed)

    def _state(self, model: str) -> dict[str, Any]:
        raw = self.batches.data.get(model.encode())
        return json.loads(raw) if raw else {"open": 0, "count": 0, "unsent": []}

    def batch(self, model: str, number: int) -> list[str]:
        """The query_ids of one of a model's batches, sorted."""
        tag = _batch_tag(model, number)
        prefix = f"{model}\x00".encode()
        return sorted(
            key[len(prefix) :].decode()
            for key, value in self.counted.data.items()
            if value == tag and key.startswith(prefix)
        )

    def _send_request(self, model: str, number: int) -> None:
        if (model, number) in self.in_flight:
            return
        query_ids = self.batch(model, number)
        record = training_request(model, query_ids, THRESHOLD, int(self.clock() * 1000))
        self.in_flight.add((model, number))
        acknowledged = partial(self._acknowledged, model, number, record["request_id"])
        value = self.codec.encode(TRAINING_REQUESTED, record)
        self.writer.send(self.requests, model.encode(), value, 0, on_delivery=acknowledged)
        log.info(
            "training requested", model=model, batch=number, request_id=record["request_id"],
            traces=len(query_ids),
        )

    def _acknowledged(
        self, model: str, number: int, rid: str, error: KafkaError | None, _: Message
    ) -> None:
        self.in_flight.discard((model, number))
        if error is not None:
            log.error("training request not delivered; will resend", request_id=rid,
                      error=error.str())
            return
        state = self._state(model)
        if number in state["unsent"]:
            state["unsent"].remove(number)
            self.writer.put(self.batches, 0, model.encode(), json.dumps(state).encode())
        REQUESTS_OUT.labels(model).inc()

    def resend_unsent(self) -> None:
        """Send every sealed batch whose request the broker has not acknowledged."""
        if 0 not in self.book.owned_partitions(self.new_traces_name):
            return
        for key, raw in list(self.batches.data.items()):
            for number in json.loads(raw)["unsent"]:
                self._send_request(key.decode(), number)

    def report(self) -> None:
        TABLE_ENTRIES.labels(ROLE, "counted").set(len(self.counted.data))
        TABLE_ENTRIES.labels(ROLE, "batches").set(len(self.batches.data))


def build(
    settings: KafkaSettings, config: CounterSettings, workdir: Any, codec: Codec,
    **app_overrides: Any,
) -> tuple[faust.App, Count]:
    """A Faust app with the counter installed, ready for ``faust_app.run_worker``."""
    app_overrides.setdefault("session_timeout_s", config.session_timeout_s)
    app = faust_app.make_app(settings, ROLE, workdir, **app_overrides)
    return app, Count(app, settings, config, codec)
