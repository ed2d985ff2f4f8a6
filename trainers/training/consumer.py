"""The trainer consumer group: one training request at a time, for as long as it takes.

A run can last hours, far beyond ``max.poll.interval.ms``; a member that stops calling
``poll()`` that long is thrown out of the group and its request handed to another member,
which would train it again. So, on a request, the consumer pauses all its partitions and runs
the training in a worker thread while the main thread keeps calling ``poll()``: paused
partitions return nothing, but each call tells the group coordinator the member is alive. A
rebalance in the meantime may hand the member a partition it has not paused; a message from
one is put back (seek) and that partition paused too.

The offset of a request is committed only after its result event (TrainingCompleted or
TrainingFailed) is acknowledged by the broker. A crash before that re-delivers the request,
and ``TrainingRun.handle`` makes the second delivery cheap: a finished run is recognised by its
``_COMPLETE`` marker and not trained again, an unfinished one resumes from its checkpoint.

A value on the requests topic that does not decode goes to ``training-requests.dlq`` with the
reason, its offset is committed, and the consumer goes on.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge
from tier3.schemas import DecodeError
from tier3.schemas.registry import TRAINING_REQUESTED
from tier3.streams.kafka.dead_letters import send_dead_letter
from tier3.streams.kafka.events import EventProducer, codec_of, consumer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRAINING_REQUESTS
from tier3.trainers.training.run import Outcome, TrainingRun

log = structlog.get_logger(__name__)

REQUESTS = Counter(
    "tier3_trainer_requests",
    "Training requests handled, by result event and whether trained now",
    ["result", "trained"],
)
TRAINING = Gauge("tier3_trainer_training", "1 while a training run is going on")
LAST_RUN = Gauge("tier3_trainer_last_run", "Metrics of the last finished run", ["metric"])

DEFAULT_GROUP = "tier3-trainer"


class TrainerConsumer:
    """Consumes training requests and hands each to a ``TrainingRun``."""

    def __init__(
        self,
        settings: KafkaSettings,
        run: TrainingRun,
        group: str = DEFAULT_GROUP,
        poll_interval: float = 0.5,
        **consumer_overrides: Any,
    ) -> None:
        self.settings = settings
        self.run_ = run
        self.group = group
        self.poll_interval = poll_interval
        self.codec = codec_of(settings)
        self.producer: EventProducer = run.producer
        self.consumer: Consumer = consumer(settings, group, **consumer_overrides)
        self.outcomes: list[Outcome] = []
        self.rebalances = 0

    def run(self, stop: threading.Event | None = None, max_requests: int | None = None) -> int:
        """Consume until ``stop`` is set (or ``max_requests`` are handled); return the count."""
        stop = stop or threading.Event()
        topic = self.settings.topic(TRAINING_REQUESTS)
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        handled = 0
        log.info("trainer consuming", topic=topic, group=self.group)
        try:
            while not stop.is_set() and (max_requests is None or handled < max_requests):
                msg = self.consumer.poll(self.poll_interval)
                if msg is None:
                    continue
                if msg.error():
                    log.warning("consumer error", error=str(msg.error()))
                    continue
                if self._handle(msg, stop):
                    handled += 1
        finally:
            self.consumer.close()
            self.producer.flush(10)
        return handled

    def _handle(self, msg: Message, stop: threading.Event) -> bool:
        """Process one message; True if it was a request that reached a result."""
        try:
            request = self.codec.decode(msg.value(), expect=TRAINING_REQUESTED).record
        except DecodeError as exc:
            log.warning("undecodable training request", offset=msg.offset(), error=str(exc))
            send_dead_letter(self.producer, msg, str(exc), type(exc).__name__, "trainer")
            if self.producer.flush(30) == 0:
                self._commit(msg)
            return False
        TRAINING.set(1)
        try:
            outcome = self._run_paused(request, stop)
        finally:
            TRAINING.set(0)
        if outcome is None:  # stopping mid-run: leave the offset; the checkpoint resumes it
            return False
        self.outcomes.append(outcome)
        REQUESTS.labels(outcome.event, "trained" if outcome.trained else "already_done").inc()
        for name, value in outcome.record.get("metrics", {}).items():
            LAST_RUN.labels(name).set(value)
        self._commit(msg)
        return True

    def _run_paused(self, request: dict[str, Any], stop: threading.Event) -> Outcome | None:
        """Run the request in a worker thread while this thread keeps the membership alive."""
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["outcome"] = self.run_.handle(request)
            except BaseException as exc:  # reported below, on the consumer's thread
                result["error"] = exc

        self.consumer.pause(self.consumer.assignment())
        worker = threading.Thread(target=work, name=f"train-{request['request_id']}", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                if stop.is_set():
                    log.warning("stopping mid-run; it resumes from its last checkpoint")
                    return None
                self._keep_alive()
                worker.join(0)
        finally:
            self.consumer.resume(self.consumer.assignment())
        if "error" in result:
            raise result["error"]
        return result["outcome"]

    def _keep_alive(self) -> None:
        msg = self.consumer.poll(self.poll_interval)
        if msg is None or msg.error():
            return
        # A rebalance assigned a partition we had not paused: put the message back for later.
        tp = TopicPartition(msg.topic(), msg.partition(), msg.offset())
        self.consumer.seek(tp)
        self.consumer.pause([tp])

    def _commit(self, msg: Message) -> None:
        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # The partition moved to another member meanwhile; it will see the finished run's
            # marker and not train again.
            log.warning("commit failed", offset=msg.offset(), error=str(exc))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        log.info("partitions assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=[p.partition for p in partitions])
