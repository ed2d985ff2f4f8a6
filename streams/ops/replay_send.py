"""Sending a replay: produce its messages to the target topic at a bounded rate, wait for every
acknowledgement, and tag each message with the replay's id and source (headers), so a replayed
message can always be told from a live one."""

from __future__ import annotations

import time

import structlog
from confluent_kafka import KafkaError, Message
from tier3.schemas import Codec
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.ops.replay_window import ReplayError, ReplayReport

log = structlog.get_logger("tier3.replay")

HEADER_REPLAY_ID = "tier3.replay.id"
HEADER_REPLAY_SOURCE = "tier3.replay.source"


class Pacer:
    """Keep to ``rate`` sends per second (no limit when None)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ReplayError("--rate must be positive")
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


def send(
    settings: KafkaSettings,
    codec: Codec,
    rate: float | None,
    report: ReplayReport,
    messages: list[tuple[int | None, bytes | None, bytes | None]],
) -> None:
    """Produce ``(partition or None, key, value)`` to ``report.target`` with ``settings``; wait
    for the acks; count sent and failed on the report. Raises if any was not delivered."""
    target = report.target
    producer = EventProducer(settings, codec=codec)
    failures: list[str] = []

    def delivered(err: KafkaError | None, _: Message) -> None:
        if err is not None:
            failures.append(err.str())

    pacer = Pacer(rate)
    headers = [
        (HEADER_REPLAY_ID, report.replay_id.encode()),
        (HEADER_REPLAY_SOURCE, report.source.encode()),
    ]
    for partition, key, value in messages:
        pacer.wait()
        extra = {"partition": partition} if partition is not None else {}
        while True:
            try:
                producer.raw.produce(
                    target, value, key, headers=headers, on_delivery=delivered, **extra
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    report.failed = len(failures) + remaining
    report.sent = len(messages) - report.failed
    report.executed = True
    log.info(
        "replay sent",
        replay_id=report.replay_id,
        mode=report.mode,
        sent=report.sent,
        failed=report.failed,
        target=target,
    )
    if report.failed:
        raise ReplayError(
            f"{report.failed} of {len(messages)} messages not delivered ({failures[:1]}); "
            "replaying the same window again is safe"
        )
