"""Produce and consume tier3 pipeline events with plain confluent-kafka clients.

Used by every stage after the backend: the capture consumers, the counter's outputs, the trainer,
the operator tools. Production waits for the broker's acknowledgement where the caller needs it
(``send_and_wait``), because a stage commits its input offsets only past confirmed writes.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from tier3.schemas import Codec, codec_for
from tier3.schemas.codec import Record
from tier3.streams.kafka.settings import KafkaSettings


def codec_of(settings: KafkaSettings) -> Codec:
    return codec_for(settings.framing, settings.schema_registry_url)


class EventProducer:
    """An idempotent producer of tier3 events, keyed as the design says."""

    def __init__(
        self, settings: KafkaSettings, *, codec: Codec | None = None, **overrides: Any
    ) -> None:
        self.settings = settings
        self.codec = codec or codec_of(settings)
        self._producer = Producer(
            {
                **settings.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "log_level": 3,
                **overrides,
            }
        )

    @property
    def raw(self) -> Producer:
        return self._producer

    def send(
        self,
        topic: str,
        event: str,
        key: str,
        record: Record,
        on_delivery: Any = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue an event for ``topic`` (a design name such as ``traces``, without prefix)."""
        value = self.codec.encode(event, record)
        self._produce(self.settings.topic(topic), key, value, on_delivery, headers)

    def send_tombstone(self, topic: str, key: str, on_delivery: Any = None) -> None:
        """Delete ``key`` from a compacted topic."""
        self._produce(self.settings.topic(topic), key, None, on_delivery, None)

    def _produce(
        self,
        full_topic: str,
        key: str,
        value: bytes | None,
        on_delivery: Any,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    full_topic, value, key.encode(), on_delivery=on_delivery, headers=headers
                )
                return
            except BufferError:
                # A pipeline stage, unlike the backend, prefers waiting to losing an event.
                self._producer.poll(0.05)

    def send_and_wait(
        self, topic: str, event: str, key: str, record: Record, timeout: float = 30.0
    ) -> Message:
        """Send one event and wait for the broker's acknowledgement."""
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def delivered(err: KafkaError | None, msg: Message) -> None:
            outcome["err"], outcome["msg"] = err, msg
            done.set()

        self.send(topic, event, key, record, on_delivery=delivered)
        self._producer.flush(timeout)
        if not done.is_set():
            raise TimeoutError(f"no acknowledgement for {event} {key} within {timeout}s")
        if outcome["err"] is not None:
            raise KafkaException(outcome["err"])
        return outcome["msg"]

    def poll(self, timeout: float = 0.0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        return self._producer.flush(timeout)


def consumer(settings: KafkaSettings, group: str, **overrides: Any) -> Consumer:
    """A consumer with tier3's defaults: manual commits, start from the earliest offset."""
    return Consumer(
        {
            **settings.client_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "log_level": 3,
            **overrides,
        }
    )
