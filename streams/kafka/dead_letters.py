"""Dead letters: a message that cannot be processed goes to ``<topic>.dlq``, never to the floor.

The dead letter keeps the original key and bytes, and says in its headers where it came from and
why it failed, so an operator can inspect it and, once the cause is fixed, replay it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Message
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.topics import DLQ_SUFFIX

HEADER_REASON = "tier3.error.reason"
HEADER_TYPE = "tier3.error.type"
HEADER_TOPIC = "tier3.source.topic"
HEADER_PARTITION = "tier3.source.partition"
HEADER_OFFSET = "tier3.source.offset"
HEADER_STAGE = "tier3.stage"
HEADER_AT = "tier3.failed.at"


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as read back from a ``.dlq`` topic."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get(HEADER_REASON, "")

    @classmethod
    def from_message(cls, msg: Message) -> DeadLetter:
        headers = {k: (v or b"").decode(errors="replace") for k, v in (msg.headers() or [])}
        return cls(msg.key(), msg.value(), headers)


def dead_letter_headers(
    source_topic: str, partition: int, offset: int, reason: str, error_type: str, stage: str
) -> list[tuple[str, bytes]]:
    return [
        (HEADER_REASON, reason.encode()[:4000]),
        (HEADER_TYPE, error_type.encode()),
        (HEADER_TOPIC, source_topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_STAGE, stage.encode()),
        (HEADER_AT, str(int(time.time() * 1000)).encode()),
    ]


def send_dead_letter(
    producer: EventProducer,
    msg: Message,
    reason: str,
    error_type: str,
    stage: str,
    on_delivery: object = None,
) -> None:
    """Send ``msg`` (as it came) to its topic's dead-letter topic, with the reason in headers."""
    headers = dead_letter_headers(
        msg.topic(), msg.partition(), msg.offset(), reason, error_type, stage
    )
    producer.raw.produce(
        msg.topic() + DLQ_SUFFIX, msg.value(), msg.key(), headers=headers, on_delivery=on_delivery
    )
