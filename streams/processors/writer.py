"""Every record a stream processor writes, through one librdkafka producer per worker.

Table changes (changelog records), output events (capture jobs, training requests, the
counter's repartition) and dead letters all go through ``Writer``: one confluent-kafka
``Producer``, idempotent, ``acks=all``. Faust still reads the input, runs the group, recovers
the tables from their changelogs and commits the input offsets; it no longer carries the
processors' output.

Why not Faust's producer: a record sent through it costs a Faust future, a hop through its
producer buffer, an aiokafka append and a callback, on the worker's one event loop. The
sampler's profile put 39% of that loop in this path at about one record per event
(bench/RESULTS.md). ``Producer.produce`` costs a few microseconds and batches on librdkafka's
own threads.

**At-least-once holds as before.** Faust flushes its producer before it commits an input offset
(on the commit timer, before a rebalance gives partitions away, and on stop).
``faust_app.writer`` hooks the writer into that flush (``faust_patches.flush_also``), so the
commit waits until every record written so far is acknowledged. A record the broker refuses for
good (after librdkafka's retries, up to ``message.timeout.ms``) leaves the tables ahead of their
changelogs: from then on every flush raises, no offset is committed again, Faust crashes the
worker and it restarts in place (see ``watchdog``), rebuilding its tables from the changelogs
and reading again from the last commit. Idempotence keeps each partition's records in the order
they were written, so a put and the tombstone after it never swap.

Delivery callbacks run on the event loop: librdkafka calls them from ``poll``, which ``serve``
(each batch, and ``faust_app.writer``'s timer) and the flush make there. So callbacks never
race the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust
import structlog
from confluent_kafka import KafkaError, Message, Producer
from tier3.streams.kafka.settings import KafkaSettings

log = structlog.get_logger("tier3.writer")

Delivered = Callable[[KafkaError | None, Message], None]

_FULL_WAIT_S = 0.05  # how long a produce waits for room when librdkafka's queue is full


class WriteFailed(RuntimeError):
    """A record the broker never acknowledged: the tables may be ahead of their changelogs."""


class Writer:
    """The worker's one way to write to Kafka: tables, outputs and dead letters."""

    def __init__(
        self,
        settings: KafkaSettings,
        client_id: str,
        linger_ms: float = 5.0,
        delivery_timeout_s: float = 300.0,
    ) -> None:
        """``delivery_timeout_s``: how long librdkafka retries a record (the broker away, say)
        before it fails for good, and with it the worker (librdkafka's default).

        A worker's writer is made by ``faust_app.writer``, which hooks it into Faust's commits
        and serves its delivery reports on a timer."""
        self.producer = Producer(
            {
                **settings.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "client.id": client_id,
            }
        )
        self.failure: str | None = None

    # -- writing ---------------------------------------------------------------------------------

    def put(self, table: faust.Table, partition: int, key: bytes, value: bytes) -> None:
        """Set ``key`` in ``table`` and in its changelog's ``partition``.

        The partition is always named: Faust's own ``table[key] = value`` takes it from the event
        being processed, so it fails in timers and delivery callbacks, which have none.
        """
        table.data[key] = value
        self.send(table.changelog_topic_name, key, value, partition)

    def drop(self, table: faust.Table, partition: int, key: bytes) -> None:
        """Delete ``key`` from ``table`` and tombstone it in the changelog (see ``put``)."""
        if table.data.pop(key, None) is not None:
            self.send(table.changelog_topic_name, key, None, partition)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: Delivered | None = None,
    ) -> None:
        """Queue one record; ``on_delivery(error, message)`` runs on the event loop once the
        broker has answered (``error`` None: acknowledged, ``message.offset()`` is its offset).

        A record without ``on_delivery`` that fails for good is a ``WriteFailed`` at the next
        commit; one with it is the caller's to handle (the sampler decides its query again).
        """
        report = on_delivery or self._must_arrive
        while True:
            try:
                self.producer.produce(
                    topic, value, key, partition=partition, headers=headers, on_delivery=report
                )
                return
            except BufferError:
                # librdkafka's queue is full (the broker is slow or away): wait here, on the
                # event loop, so that the stream takes no more events until there is room.
                self.producer.poll(_FULL_WAIT_S)

    def _must_arrive(self, error: KafkaError | None, message: Message) -> None:
        if error is not None and self.failure is None:
            self.failure = f"{message.topic()}[{message.partition()}]: {error.str()}"
            log.error("write failed; the worker will not commit again", error=self.failure)

    # -- serving ---------------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the delivery callbacks that are due, here and now (on the event loop)."""
        self.producer.poll(0)

    async def drain(self) -> None:
        """Wait until every record queued so far is answered; ``WriteFailed`` if one failed.

        Polls instead of ``flush()``, which would block the event loop while the broker is away.
        """
        self.producer.flush(0)  # send what lingers now, without waiting
        while len(self.producer):
            self.producer.poll(0)
            await asyncio.sleep(0.002)
        self.producer.poll(0)
        if self.failure is not None:
            raise WriteFailed(f"a write was never acknowledged ({self.failure})")
