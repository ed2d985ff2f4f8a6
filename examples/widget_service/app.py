"""The widget selector as a FastAPI service that answers through tier3: what a backend copies.

- ``POST /select`` answers a dashboard query with the teacher (Claude, through the anthropic SDK)
  or the fine-tuned student (Ollama, through the ollama SDK), as tier3's router decides:
  ``USE_FINETUNED_MODEL``, the A/B split (``TIER3_STUDENT_PERCENT``), sticky per user, and the
  teacher whenever the student fails. It publishes the Experience with the variant that served.
- ``POST /feedback`` publishes the user's rating of an answer (by its ``query_id``).
- ``GET /metrics`` (Prometheus): answers per variant, fallbacks, publisher outcomes (dropped
  events show here); ``GET /healthz``. Under ``uvicorn --workers N``, with
  ``PROMETHEUS_MULTIPROC_DIR`` set, the page sums every worker's counts, whichever answers.

Everything is configured by tier3's environment variables (``TIER3_BOOTSTRAP_SERVERS``,
``ENABLE_TIER3_CAPTURE``, ``USE_FINETUNED_MODEL``, ...; ``README.md`` beside this file). Nothing
on a request's path blocks the event loop: the models are awaited, publishing only appends to a
queue, and the lifespan does its waiting (the deployment history, the final flush) in threads.

Run: ``uvicorn app:app --app-dir examples/widget_service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anthropic
import ollama
import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)
from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.streams.backend.async_router import (
    AsyncRouter,
    anthropic_teacher_async,
    ollama_student_async,
)
from tier3.streams.backend.deployments import DeploymentWatcher
from tier3.streams.backend.publisher import (
    EVENTS_METRIC,
    OUTCOMES,
    PENDING_METRIC,
    Publisher,
    PublisherConfig,
    PublisherStats,
)
from tier3.streams.backend.router import RoutingSettings
from tier3.streams.kafka.settings import KafkaSettings

log = structlog.get_logger("widget_service")

# Several uvicorn workers are several processes, each with its own counters. prometheus_client's
# multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before the service starts) keeps them in files
# there, and /metrics sums them. Custom collectors are not exported in that mode, so each worker
# copies its publisher's counts into the two metrics below, which are.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
PUBLISHED = Counter(*EVENTS_METRIC, ["outcome"], registry=None)
PENDING = Gauge(
    *PENDING_METRIC,
    multiprocess_mode="livesum",  # the workers alive now
    registry=None,
)


class ServiceSettings(BaseSettings):
    """The service's own settings; the names are the ones the capture consumers use."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    anthropic_api_key: SecretStr = Field(
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "TIER3_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(None, description="Anthropic API base URL override.")
    ollama_host: str | None = Field(None, description="Ollama URL (default: the SDK's).")
    teacher_timeout_s: float = Field(30.0, gt=0, description="Timeout of one teacher request.")
    student_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of one student request; past it the teacher answers."
    )
    publisher_buffer_messages: int = Field(
        PublisherConfig.buffer_messages,
        ge=1,
        description="Events held while the broker is away; beyond: dropped.",
    )
    publisher_linger_ms: int = Field(
        PublisherConfig.linger_ms,
        ge=0,
        description="How long an event waits for others to share its request to the broker.",
    )
    watch_deployments: bool = Field(
        True, description="Follow tier3's deployments and rollbacks of the student."
    )


# -- start and stop: the lifespan owns the clients ------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings, kafka, routing = ServiceSettings(), KafkaSettings(), RoutingSettings()
    publisher = Publisher(
        kafka,
        PublisherConfig(
            buffer_messages=settings.publisher_buffer_messages,
            linger_ms=settings.publisher_linger_ms,
        ),
    )
    if MULTIPROCESS:
        mirror = asyncio.create_task(mirror_publisher(publisher.stats))
    else:
        publisher.register_metrics()
    deployments = DeploymentWatcher(kafka, routing.model) if settings.watch_deployments else None
    if deployments is not None and not await asyncio.to_thread(deployments.wait_caught_up, 30):
        log.warning("deployment history not read yet: the teacher answers until it is")
    teacher = anthropic.AsyncAnthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        timeout=settings.teacher_timeout_s,
        http_client=anthropic.DefaultAioHttpClient(),  # aiohttp: many requests on one loop
    )
    student = ollama.AsyncClient(host=settings.ollama_host, timeout=settings.student_timeout_s)
    app.state.publisher = publisher
    app.state.router = AsyncRouter(
        anthropic_teacher_async(teacher, routing.teacher_model),
        ollama_student_async(student),
        routing,
        publisher=publisher,
        deployments=deployments,
    )
    log.info(
        "serving",
        student=app.state.router.student_model(),
        student_percent=routing.student_percent if routing.use_finetuned_model else 0,
        publishing=publisher.enabled,
    )
    try:
        yield
    finally:
        await teacher.close()
        await student.close()
        if deployments is not None:
            await asyncio.to_thread(deployments.close)
        undelivered = await publisher.aclose(timeout=10)
        if MULTIPROCESS:
            mirror.cancel()  # its last copy counts the final flush
            with contextlib.suppress(asyncio.CancelledError):
                await mirror
        log.info("stopped", undelivered=undelivered, dropped=publisher.stats.dropped)


async def mirror_publisher(stats: PublisherStats, every_s: float = 1.0) -> None:
    """Copy this worker's publisher counts into the multiprocess metrics until cancelled."""
    copied = dict.fromkeys(OUTCOMES, 0)
    try:
        while True:
            copy_counts(stats, copied)
            await asyncio.sleep(every_s)
    finally:
        copy_counts(stats, copied)


def copy_counts(stats: PublisherStats, copied: dict[str, int]) -> None:
    for outcome in OUTCOMES:
        # "delivered" is accepted - failed - pending, and the publisher refreshes pending a
        # moment after publish() counts an event accepted: it can step back by a few
        # events, which a counter cannot. It is copied when it has grown; it has caught up by
        # the time those events are delivered.
        now, counter = getattr(stats, outcome), PUBLISHED.labels(outcome)
        if now > copied[outcome]:
            counter.inc(now - copied[outcome])
            copied[outcome] = now
    PENDING.set(stats.pending)


def scrape_registry() -> CollectorRegistry:
    """The registry /metrics renders: every worker's files in multiprocess mode (a fresh
    registry per scrape, as prometheus_client asks), else this process's own."""
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


app = FastAPI(title="widget selector", lifespan=lifespan)


# async: FastAPI runs a plain-def dependency in its thread pool, a thread hop per request.
async def get_router(request: Request) -> AsyncRouter:
    return request.app.state.router


async def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher


# -- the API ---------------------------------------------------------------------------------------


class SelectRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000, examples=["show revenue by region"])
    context: dict[str, Any] = Field(default_factory=dict, examples=[{"page": "sales"}])
    user_id: str = Field(min_length=1, description="Hashed here; never leaves the service.")
    session_id: str = Field(min_length=1)


class Selection(BaseModel):
    query_id: str = Field(description="Rate this answer with POST /feedback and this id.")
    answer: dict[str, Any]
    variant: str = Field(description="teacher, student or student-fallback")
    model: str


class FeedbackRequest(BaseModel):
    query_id: str = Field(min_length=1)
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)


class FeedbackAccepted(BaseModel):
    query_id: str
    published: bool = Field(description="False when capture is off or the buffer was full.")


def pseudonym(identity: str) -> str:
    """What tier3 records instead of a user's or session's id."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@app.post("/select")
async def select(
    body: SelectRequest, router: Annotated[AsyncRouter, Depends(get_router)]
) -> Selection:
    try:
        routed = await router.answer(
            body.query,
            body.context,
            user_id_hash=pseudonym(body.user_id),
            session_id_hash=pseudonym(body.session_id),
        )
    except anthropic.APIError as exc:  # the teacher failed; the student's failures never get here
        raise HTTPException(502, f"the teacher did not answer: {exc}") from exc
    answer = router.task.read(routed.reply)
    if answer is None:
        raise HTTPException(502, "the teacher's reply is not a valid answer")
    return Selection(
        query_id=routed.experience["query_id"],
        answer=answer,
        variant=routed.variant,
        model=routed.model,
    )


@app.post("/feedback", status_code=202)
async def feedback(
    body: FeedbackRequest, publisher: Annotated[Publisher, Depends(get_publisher)]
) -> FeedbackAccepted:
    record = {
        "query_id": body.query_id,
        "timestamp": int(time.time() * 1000),
        "rating": body.rating,
        "comment": body.comment,
    }
    return FeedbackAccepted(
        query_id=body.query_id, published=await publisher.apublish_feedback(record)
    )


@app.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)


@app.get("/healthz")
async def healthz(publisher: Annotated[Publisher, Depends(get_publisher)]) -> dict[str, Any]:
    s = publisher.stats
    return {
        "ok": True,
        "publisher": {"pending": s.pending, "dropped": s.dropped, "last_error": s.last_error},
    }
