"""Which student is deployed: the ModelDeployed history on ``training-results``, read and written.

**Where "which student is deployed" lives**: on the ``training-results`` topic, as the
ModelDeployed events the deployer (``action="deploy"``) and rollbacks (``action="rollback"``)
write, keyed by the logical model name. Replaying them gives a stack: a deploy pushes, a
rollback pops, and the top is what serves (an empty stack after a rollback: teacher only). No
extra topic or database; the history is the audit trail, and every backend process converges on
the same state by reading the same events.

- ``DeploymentLog`` reads the whole history once (operators, the deployer, the A/B guard) and
  writes rollbacks.
- ``DeploymentWatcher`` tails the topic in a background thread for a long-running backend (the
  router asks it which student serves now, without a network call per query).
- ``send_deployment`` writes one event and waits for the broker to confirm it.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from tier3.schemas import DecodeError
from tier3.schemas.codec import Record
from tier3.schemas.registry import MODEL_DEPLOYED
from tier3.streams.kafka.events import EventProducer, codec_of
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRAINING_RESULTS
from tier3.streams.telemetry.logs import library_logger

log = library_logger("tier3.deployments")  # silent unless the backend configures logging

REASON_HEADER = "tier3-reason"


@dataclass(frozen=True)
class Deployment:
    """One ModelDeployed event, as the router needs it."""

    ollama_name: str
    digest: str
    request_id: str
    deployed_at: int
    action: str
    record: Record


def replay_deployments(events: list[Record]) -> list[Deployment]:
    """The stack of live deployments after ``events`` in order: deploy pushes, rollback pops."""
    stack: list[Deployment] = []
    for e in events:
        if e.get("action", "deploy") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(
                Deployment(
                    e["ollama_name"], e["digest"], e["request_id"], e["deployed_at"], "deploy", e
                )
            )
    return stack


class DeploymentLog:
    """The ModelDeployed history of one logical model on the training-results topic."""

    def __init__(self, settings: KafkaSettings, model: str) -> None:
        self.settings = settings
        self.model = model

    def events(self, timeout: float = 30.0) -> list[Record]:
        codec = codec_of(self.settings)
        out = []
        for msg in read_to_end(self.settings, TRAINING_RESULTS, timeout):
            if msg.key() != self.model.encode() or msg.value() is None:
                continue
            try:
                decoded = codec.decode(msg.value())
            except DecodeError as exc:
                log.warning("skipping undecodable training result", reason=str(exc))
                continue
            if decoded.name == MODEL_DEPLOYED:
                out.append(decoded.record)
        return sorted(out, key=lambda r: r["deployed_at"])

    def current(self) -> Deployment | None:
        """The deployment serving now, or None (never deployed, or everything rolled back)."""
        stack = replay_deployments(self.events())
        return stack[-1] if stack else None

    def rollback(self, reason: str, producer: EventProducer | None = None) -> Record:
        """Take the current deployment back; the one before it (or the teacher) serves again."""
        stack = replay_deployments(self.events())
        if not stack:
            raise LookupError(f"{self.model}: nothing is deployed, nothing to roll back")
        taken_back, restored = stack[-1], (stack[-2] if len(stack) > 1 else None)
        source = restored.record if restored else taken_back.record
        record = {
            **source,
            "ollama_name": restored.ollama_name if restored else "",
            "digest": restored.digest if restored else "",
            "deployed_at": max(int(time.time() * 1000), taken_back.deployed_at + 1),
            "action": "rollback",
        }
        why = f"rolled back {taken_back.ollama_name} ({taken_back.digest[:19]}): {reason}"
        send_deployment(self.settings, self.model, record, why, producer)
        log.warning(
            "rolled back",
            model=self.model,
            taken_back=taken_back.ollama_name,
            now_serving=restored.ollama_name if restored else "teacher",
            reason=reason,
        )
        return record


def send_deployment(
    settings: KafkaSettings,
    model: str,
    record: Record,
    reason: str,
    producer: EventProducer | None = None,
) -> None:
    """Write a ModelDeployed event and wait for the broker to confirm it.

    The human reason (the gate's verdict, the A/B result, an operator's note) travels in the
    ``tier3-reason`` header, beside the event rather than in the contract.
    """
    producer = producer or EventProducer(settings)
    outcome: dict[str, Any] = {}
    producer.send(
        TRAINING_RESULTS,
        MODEL_DEPLOYED,
        model,
        record,
        on_delivery=lambda err, msg: outcome.update(err=err, done=True),
        headers=[(REASON_HEADER, reason.encode())],
    )
    producer.flush(30)
    if not outcome.get("done"):
        raise TimeoutError(f"ModelDeployed for {model} not acknowledged within 30s")
    if outcome["err"] is not None:
        raise KafkaException(outcome["err"])


class DeploymentWatcher:
    """Tails training-results in a background thread and keeps the current deployment."""

    def __init__(self, settings: KafkaSettings, model: str) -> None:
        self.settings = settings
        self.model = model
        self._events: list[Record] = []
        self._current: Deployment | None = None
        self._seen_any = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tier3-deployments", daemon=True)
        self._thread.start()

    @property
    def seen_any(self) -> bool:
        """Whether any deployment event for the model exists."""
        return self._seen_any

    def current(self) -> Deployment | None:
        with self._lock:
            return self._current

    @property
    def caught_up(self) -> bool:
        """Whether the history that existed at start has been read."""
        return self._caught_up.is_set()

    def wait_caught_up(self, timeout: float = 30.0) -> bool:
        """Block until the history that existed at start has been read."""
        return self._caught_up.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        full = self.settings.topic(TRAINING_RESULTS)
        codec = codec_of(self.settings)
        c = Consumer(
            {
                **self.settings.client_config(),
                "group.id": f"tier3-router-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            parts = c.list_topics(full, timeout=30).topics[full].partitions
            unread: dict[int, int] = {}
            for p in parts:
                low, high = c.get_watermark_offsets(TopicPartition(full, p), timeout=30)
                if high > low:
                    unread[p] = high
            c.assign([TopicPartition(full, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                if not unread:
                    self._caught_up.set()
                msg = c.poll(0.2)
                if msg is None or msg.error():
                    continue
                self._take(msg.key(), msg.value(), codec)
                if msg.offset() + 1 >= unread.get(msg.partition(), 0):
                    unread.pop(msg.partition(), None)
        except Exception as exc:  # a watcher must never take the backend down
            log.error("deployment watcher stopped", reason=str(exc))
        finally:
            c.close()

    def _take(self, key: bytes | None, value: bytes | None, codec: Any) -> None:
        if key != self.model.encode() or value is None:
            return
        try:
            decoded = codec.decode(value)
        except DecodeError as exc:
            log.warning("skipping undecodable training result", reason=str(exc))
            return
        if decoded.name != MODEL_DEPLOYED:
            return
        with self._lock:
            self._events.append(decoded.record)
            self._events.sort(key=lambda r: r["deployed_at"])
            stack = replay_deployments(self._events)
            self._current = stack[-1] if stack else None
            self._seen_any = True
        log.info("deployment changed", model=self.model, action=decoded.record["action"])

