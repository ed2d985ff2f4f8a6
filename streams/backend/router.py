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
- **The task** (``TIER3_TASK``) decides what a valid reply is and what its confidence is; the SDK
  adapters below render a query with the task's messages, as capture sends them to the teacher.

Which student is deployed comes from the ModelDeployed history (``deployments``, tailed by a
``DeploymentWatcher``). With no deployment event at all, the router uses
``TIER3_STUDENT_MODEL`` (the seed's ``cc-widget-selector-v2``), so the switch works without a
tier3 deployer too.

The decisions are plain functions (``serving_student``, ``assigned_to_student``,
``student_outcome``, ``teacher_routed``, ``experience_of``) and ``Router`` only calls the models
between them, so an async router can reuse every decision and differ only in its awaits.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.schemas.codec import Record
from tier3.streams.backend.deployments import DeploymentWatcher
from tier3.streams.backend.publisher import Publisher
from tier3.streams.kafka.topics import STUDENT_MODEL
from tier3.streams.telemetry.logs import library_logger
from tier3.tasks.contract import ChatMessage, Task, split_system
from tier3.tasks.registry import configured_task

log = library_logger("tier3.router")  # silent unless the backend configures logging

TEACHER, STUDENT, FALLBACK = "teacher", "student", "student-fallback"

ROUTED = Counter("tier3_router_answers", "Answers served, by variant", ["variant"])
FALLBACKS = Counter("tier3_router_fallbacks", "Student failures answered by the teacher", ["why"])

# (query, context) -> reply text
Teacher = Callable[[str, dict[str, Any]], str]
# (student model name, query, context) -> reply text
Student = Callable[[str, str, dict[str, Any]], str]
# (model name, messages) -> reply text: a served model asked with given messages (evaluation)
Chat = Callable[[str, list[ChatMessage]], str]


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
        STUDENT_MODEL,  # the trainer's and the counter's default too
        description="Logical model name (key of its deployment events).",
    )
    teacher_model: str = Field("claude-sonnet-4-5", description="Recorded on teacher answers.")



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


# -- the decisions (shared by any router, sync or async) ----------------------------------------


def serving_student(
    settings: RoutingSettings, deployments: DeploymentWatcher | None
) -> str | None:
    """The student that serves now: None when the student is off or rolled back."""
    if not settings.use_finetuned_model:
        return None
    if deployments is not None and not deployments.caught_up:
        return None  # until the history is read, a rolled-back model must not serve
    if deployments is not None and deployments.seen_any:
        current = deployments.current()
        return current.ollama_name if current and current.ollama_name else None
    return settings.student_model


def assigned_to_student(
    settings: RoutingSettings, user_id_hash: str, session_id_hash: str
) -> bool:
    """Whether this user (or session) is in the student's share of the split."""
    identity = user_id_hash if settings.sticky_by == "user" else session_id_hash
    return bucket(identity, settings.model) < settings.student_percent


def student_outcome(
    task: Task, model: str, reply: str | BaseException, latency_ms: float
) -> tuple[Routed | None, str | None]:
    """What a student call came to: (the answer to serve, None), or (None, why the teacher
    answers instead). ``reply`` is the exception when the call raised."""
    if isinstance(reply, BaseException):
        why = f"student error: {type(reply).__name__}: {reply}"
        FALLBACKS.labels("error").inc()
        log.warning("student failed, teacher answers", model=model, reason=why)
        return None, why
    if task.read(reply) is None:
        FALLBACKS.labels("invalid").inc()
        log.warning("student reply not a valid answer, teacher answers", model=model)
        return None, "student reply is not a valid answer for the task"
    return Routed(reply, STUDENT, model, latency_ms, None, {}), None


def teacher_routed(
    settings: RoutingSettings, reply: str, latency_ms: float, fallback_reason: str | None
) -> Routed:
    """The teacher's answer, as the teacher's own or as the student's fallback."""
    variant = FALLBACK if fallback_reason else TEACHER
    return Routed(reply, variant, settings.teacher_model, latency_ms, fallback_reason, {})


def experience_of(
    task: Task,
    routed: Routed,
    query: str,
    context: dict[str, Any],
    *,
    query_id: str | None,
    user_id_hash: str,
    session_id_hash: str,
    confidence: float | None,
) -> Record:
    """The Experience event of an answered query; its confidence is the answer's score unless
    the caller knows better."""
    answer = task.read(routed.reply)
    if confidence is None:
        score = task.score(answer) if answer else None
        confidence = float(score) if score is not None else 0.0
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


def served(routed: Routed, experience: Record, publisher: Publisher | None) -> Routed:
    """Count and publish an answered query (publishing never blocks); the Routed to return."""
    ROUTED.labels(routed.variant).inc()
    if publisher is not None:
        publisher.publish_experience(experience)
    return replace(routed, experience=experience)


# -- the router ----------------------------------------------------------------------------------


class RoutingState:
    """What the sync and the async router share: the settings, the publisher, the deployment
    watcher, the task, and the two questions every answer starts with."""

    def __init__(
        self,
        settings: RoutingSettings | None = None,
        *,
        publisher: Publisher | None = None,
        deployments: DeploymentWatcher | None = None,
        task: Task | None = None,
    ) -> None:
        self.settings = settings or RoutingSettings()
        self.publisher = publisher
        self.deployments = deployments
        self.task = task or configured_task()

    def student_model(self) -> str | None:
        """The student that serves now: None when the student is off or rolled back."""
        return serving_student(self.settings, self.deployments)

    def assigned_to_student(self, user_id_hash: str, session_id_hash: str) -> bool:
        """Whether this user (or session) is in the student's share of the split."""
        return assigned_to_student(self.settings, user_id_hash, session_id_hash)


class Router(RoutingState):
    """Answer queries with the teacher or the student, and publish what was served."""

    def __init__(
        self, teacher: Teacher, student: Student, settings: RoutingSettings | None = None, **kw: Any
    ) -> None:
        super().__init__(settings, **kw)
        self.teacher = teacher
        self.student = student

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
            start = time.perf_counter()
            try:
                reply: str | BaseException = self.student(model, query, context)
            except Exception as exc:  # any student failure is the teacher's cue, never the user's
                reply = exc
            latency = (time.perf_counter() - start) * 1000
            routed, fallback_reason = student_outcome(self.task, model, reply, latency)
        if routed is None:
            start = time.perf_counter()
            reply = self.teacher(query, context)
            latency = (time.perf_counter() - start) * 1000
            routed = teacher_routed(self.settings, reply, latency, fallback_reason)
        experience = experience_of(
            self.task, routed, query, context, query_id=query_id,
            user_id_hash=user_id_hash, session_id_hash=session_id_hash, confidence=confidence,
        )
        return served(routed, experience, self.publisher)


# -- adapters for the SDKs the backend already uses ----------------------------------------------


def ollama_chat(client: Any, options: dict[str, Any] | None = None) -> Chat:
    """A ``Chat`` over an ``ollama.Client``: asks a model with messages as they are."""

    def call(model: str, messages: list[ChatMessage]) -> str:
        response = client.chat(
            model=model,
            messages=messages,
            options={"temperature": 0, **(options or {})},
        )
        return response.message.content

    return call


def ollama_student(
    client: Any, options: dict[str, Any] | None = None, task: Task | None = None
) -> Student:
    """A ``Student`` calling an ``ollama.Client``'s chat API with the task's messages."""
    task = task or configured_task()
    chat = ollama_chat(client, options)

    def call(model: str, query: str, context: dict[str, Any]) -> str:
        return chat(model, task.render(query, context))

    return call


def anthropic_teacher(
    client: Any, model: str, max_tokens: int = 512, task: Task | None = None
) -> Teacher:
    """A ``Teacher`` calling an ``anthropic.Anthropic`` client's messages API with the task's
    messages (a system turn goes to the API's ``system`` parameter)."""
    task = task or configured_task()

    def call(query: str, context: dict[str, Any]) -> str:
        system, turns = split_system(task.render(query, context))
        extra = {"system": system} if system is not None else {}
        message = client.messages.create(
            model=model, max_tokens=max_tokens, messages=turns, **extra
        )
        return "".join(block.text for block in message.content if block.type == "text")

    return call
