"""Model switching for the backend: teacher or fine-tuned student, per user, with a safety net.

The seed's switch, grown up:

- ``USE_FINETUNED_MODEL=true`` turns the student on (off: every query goes to the teacher, as
  in the seed). ``TIER3_STUDENT_PERCENT`` (default 100) is the share of users (or sessions,
  ``TIER3_STICKY_BY``) the student serves: an A/B split.
- **Sticky assignment**: a user's arm is decided by a hash of their (already hashed) id and
  the model name, never by a random draw, so a user sees one model for the whole test, every
  backend process agrees without sharing state, and raising the percentage only moves users
  from teacher to student (bucket < percent), never back.
- **Fallback**: when the student raises, or its reply is not a valid answer for the task, the
  teacher answers instead; the user never sees the student's failure. The Experience then says
  ``model_variant="student-fallback"``, so the A/B comparison can count failures honestly
  instead of silently crediting the teacher's answer to either arm.
- Every answered query is published as an Experience with the variant that served it, through
  the backend's ``Publisher``, so feedback can be compared per variant (``ab_test``).

**Where "which student is deployed" lives**: on the ``training-results`` topic, as the
ModelDeployed events the deployer (``action="deploy"``) and rollbacks (``action="rollback"``)
write, keyed by the logical model name. Replaying them gives a stack: a deploy pushes, a
rollback pops, and the top is what serves (an empty stack after a rollback: teacher only). No
extra topic or database; the history is the audit trail, and every backend process converges on
the same state by reading the same events (``DeploymentWatcher`` tails the topic). With no
deployment event at all, the router uses ``TIER3_STUDENT_MODEL`` (the seed's
``cc-widget-selector-v2``), so the switch works without a tier3 deployer too.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from prometheus_client import Counter
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.schemas import DecodeError
from tier3.schemas.codec import Record
from tier3.schemas.registry import MODEL_DEPLOYED
from tier3.streams.backend.publisher import Publisher
from tier3.streams.kafka.events import EventProducer, codec_of
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRAINING_RESULTS
from tier3.tasks.answers import read_answer

log = structlog.get_logger("tier3.router")

TEACHER, STUDENT, FALLBACK = "teacher", "student", "student-fallback"
REASON_HEADER = "tier3-reason"

ROUTED = Counter("tier3_router_answers", "Answers served, by variant", ["variant"])
FALLBACKS = Counter("tier3_router_fallbacks", "Student failures answered by the teacher", ["why"])

# (query, context) -> reply text
Teacher = Callable[[str, dict[str, Any]], str]
# (student model name, query, context) -> reply text
Student = Callable[[str, str, dict[str, Any]], str]


class RoutingSettings(BaseSettings):
    """The backend's switch (env: ``USE_FINETUNED_MODEL`` and ``TIER3_*``)."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    use_finetuned_model: bool = Field(
        False,
        validation_alias=AliasChoices("USE_FINETUNED_MODEL", "TIER3_USE_FINETUNED_MODEL"),
        description="Serve the fine-tuned student (to student_percent of users).",
    )
    student_percent: float = Field(
        100.0, ge=0.0, le=100.0, description="Share of users (or sessions) the student serves."
    )
    sticky_by: Literal["user", "session"] = Field(
        "user", description="Keep each user's (or each session's) arm for the whole test."
    )
    student_model: str = Field(
        "cc-widget-selector-v2", description="Ollama name of the student when none is deployed."
    )
    model: str = Field(
        # The trainer's default student name (TIER3_TRAIN_STUDENT_MODEL); set both together.
        "cc-widget-selector",
        description="Logical model name (key of its deployment events).",
    )
    teacher_model: str = Field("claude-sonnet-4-5", description="Recorded on teacher answers.")


# -- deployment state ----------------------------------------------------------------------------


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
            now_serving=restored.ollama_name if restored else TEACHER,
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


# -- the router ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routed:
    """One answered query."""

    reply: str
    variant: str  # TEACHER, STUDENT or FALLBACK
    model: str
    latency_ms: float
    fallback_reason: str | None
    experience: Record


def bucket(identity: str, salt: str) -> float:
    """A stable number in [0, 100) for an identity: the same on every process and every run."""
    digest = hashlib.sha256(f"{salt}\0{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class Router:
    """Answer queries with the teacher or the student, and publish what was served."""

    def __init__(
        self,
        teacher: Teacher,
        student: Student,
        settings: RoutingSettings | None = None,
        *,
        publisher: Publisher | None = None,
        deployments: DeploymentWatcher | None = None,
    ) -> None:
        self.teacher = teacher
        self.student = student
        self.settings = settings or RoutingSettings()
        self.publisher = publisher
        self.deployments = deployments

    def student_model(self) -> str | None:
        """The student that serves now: None when the student is off or rolled back."""
        if not self.settings.use_finetuned_model:
            return None
        if self.deployments is not None and not self.deployments.caught_up:
            return None  # until the history is read, a rolled-back model must not serve
        if self.deployments is not None and self.deployments.seen_any:
            current = self.deployments.current()
            return current.ollama_name if current and current.ollama_name else None
        return self.settings.student_model

    def assigned_to_student(self, user_id_hash: str, session_id_hash: str) -> bool:
        """Whether this user (or session) is in the student's share of the split."""
        identity = user_id_hash if self.settings.sticky_by == "user" else session_id_hash
        return bucket(identity, self.settings.model) < self.settings.student_percent

    def answer(
        self,
        query: str,
        context: dict[str, Any],
        *,
        user_id_hash: str,
        session_id_hash: str,
        query_id: str | None = None,
        confidence: float | None = None,
    ) -> Routed:
        """Answer one query; publish its Experience (when a publisher is set)."""
        model = self.student_model()
        routed: Routed | None = None
        fallback_reason = None
        if model is not None and self.assigned_to_student(user_id_hash, session_id_hash):
            routed, fallback_reason = self._try_student(model, query, context)
        if routed is None:
            start = time.perf_counter()
            reply = self.teacher(query, context)
            latency = (time.perf_counter() - start) * 1000
            variant = FALLBACK if fallback_reason else TEACHER
            routed = Routed(
                reply, variant, self.settings.teacher_model, latency, fallback_reason, {}
            )
        experience = self._experience(
            routed, query, context, query_id, user_id_hash, session_id_hash, confidence
        )
        ROUTED.labels(routed.variant).inc()
        if self.publisher is not None:
            self.publisher.publish_experience(experience)
        return replace(routed, experience=experience)

    def _try_student(
        self, model: str, query: str, context: dict[str, Any]
    ) -> tuple[Routed | None, str | None]:
        start = time.perf_counter()
        try:
            reply = self.student(model, query, context)
        except Exception as exc:  # any student failure is the teacher's cue, never the user's
            why = f"student error: {type(exc).__name__}: {exc}"
            FALLBACKS.labels("error").inc()
            log.warning("student failed, teacher answers", model=model, reason=why)
            return None, why
        latency = (time.perf_counter() - start) * 1000
        if read_answer(reply) is None:
            FALLBACKS.labels("invalid").inc()
            log.warning("student reply not a valid answer, teacher answers", model=model)
            return None, "student reply is not a valid answer for the task"
        return Routed(reply, STUDENT, model, latency, None, {}), None

    def _experience(
        self,
        routed: Routed,
        query: str,
        context: dict[str, Any],
        query_id: str | None,
        user_id_hash: str,
        session_id_hash: str,
        confidence: float | None,
    ) -> Record:
        answer = read_answer(routed.reply)
        if confidence is None:
            confidence = float(answer["appropriateness"]) if answer else 0.0
        return {
            "query_id": query_id or str(uuid.uuid4()),
            "timestamp": int(time.time() * 1000),
            "user_id_hash": user_id_hash,
            "session_id_hash": session_id_hash,
            "query": query,
            "context": json.dumps(context, sort_keys=True),
            "response": json.dumps(answer) if answer else routed.reply,
            "model": routed.model,
            "model_variant": routed.variant,
            "confidence": confidence,
            "latency_ms": round(routed.latency_ms, 3),
        }


# -- adapters for the SDKs the backend already uses ----------------------------------------------


def ollama_student(client: Any, options: dict[str, Any] | None = None) -> Student:
    """A ``Student`` calling an ``ollama.Client``'s chat API with the task's prompt."""
    from tier3.tasks.widgets import render_prompt

    def call(model: str, query: str, context: dict[str, Any]) -> str:
        response = client.chat(
            model=model,
            messages=[{"role": "user", "content": render_prompt(query, context)}],
            options={"temperature": 0, **(options or {})},
        )
        return response.message.content

    return call


def anthropic_teacher(client: Any, model: str, max_tokens: int = 512) -> Teacher:
    """A ``Teacher`` calling an ``anthropic.Anthropic`` client's messages API."""
    from tier3.tasks.widgets import render_prompt

    def call(query: str, context: dict[str, Any]) -> str:
        message = client.messages.create(
            model=model,
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": render_prompt(query, context)}],
        )
        return "".join(block.text for block in message.content if block.type == "text")

    return call
