"""The backend's async API: AsyncRouter decides as Router does, and nothing waits on the loop."""

from __future__ import annotations

import asyncio
import json
import time

from tier3.schemas.registry import EXPERIENCE
from tier3.streams.backend.async_router import AsyncRouter
from tier3.streams.backend.publisher import Publisher, PublisherConfig
from tier3.streams.backend.router import FALLBACK, STUDENT, TEACHER, Router, RoutingSettings
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES
from tier3.tasks import widgets

from tests.support.kafka_reading import read_events
from tests.support.samples import SAMPLES

CONTEXT = {"page": "sales", "alerts_open": False, "screen": "desktop"}
QUERY = "show revenue by region for last quarter"


def teacher(query: str, context: dict) -> str:
    return json.dumps(widgets.reference_answer(query, context))


def student(model: str, query: str, context: dict) -> str:
    return json.dumps({**widgets.reference_answer(query, context), "widgets": ["table"]})


async def async_teacher(query: str, context: dict) -> str:
    await asyncio.sleep(0)
    return teacher(query, context)


async def async_student(model: str, query: str, context: dict) -> str:
    await asyncio.sleep(0)
    return student(model, query, context)


def settings(**overrides: object) -> RoutingSettings:
    return RoutingSettings(use_finetuned_model=True, **overrides)


def test_async_router_serves_every_user_as_the_sync_router_does():
    sync = Router(teacher, student, settings(student_percent=40))
    aio = AsyncRouter(async_teacher, async_student, settings(student_percent=40))
    users = [f"user-{i}" for i in range(300)]

    async def ask_all() -> list:
        return [
            await aio.answer(QUERY, CONTEXT, user_id_hash=u, session_id_hash="s") for u in users
        ]

    answered = asyncio.run(ask_all())
    expected = [sync.answer(QUERY, CONTEXT, user_id_hash=u, session_id_hash="s") for u in users]
    assert [(r.variant, r.model, r.reply) for r in answered] == [
        (r.variant, r.model, r.reply) for r in expected
    ]
    assert {r.variant for r in answered} == {STUDENT, TEACHER}


def test_async_student_failures_fall_back_to_the_teacher():
    async def down(model: str, query: str, context: dict) -> str:
        raise ConnectionError("ollama is down")

    async def rambling(model: str, query: str, context: dict) -> str:
        return "I would show a chart."

    async def ask(student_fn) -> object:
        r = AsyncRouter(async_teacher, student_fn, settings())
        return await r.answer(QUERY, CONTEXT, user_id_hash="u", session_id_hash="s")

    for broken, why in ((down, "ollama is down"), (rambling, "not a valid answer")):
        routed = asyncio.run(ask(broken))
        assert routed.variant == FALLBACK
        assert routed.reply == teacher(QUERY, CONTEXT)
        assert why in routed.fallback_reason
        assert routed.experience["model_variant"] == FALLBACK


def test_async_router_publishes_what_served(kafka: KafkaSettings):
    async def serve() -> dict[str, str]:
        publisher = Publisher(kafka, enabled=True)
        r = AsyncRouter(async_teacher, async_student, settings(student_percent=50),
                        publisher=publisher)
        served = await asyncio.gather(*(
            r.answer(QUERY, CONTEXT, user_id_hash=f"u{i}", session_id_hash="s", query_id=f"q{i}")
            for i in range(40)
        ))
        assert await publisher.aclose(10) == 0
        return {routed.experience["query_id"]: routed.variant for routed in served}

    served = asyncio.run(serve())
    events = read_events(kafka, EXPERIENCES)
    assert {name for name, _ in events} == {EXPERIENCE}
    assert {rec["query_id"]: rec["model_variant"] for _, rec in events} == served
    assert set(served.values()) == {STUDENT, TEACHER}


def test_a_full_blocking_publisher_waits_off_the_event_loop():
    """on_full="block" sleeps for room; apublish must do that sleeping in a thread, so the
    other requests of the process go on meanwhile."""
    nowhere = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # the buffer can only fill
    publisher = Publisher(
        nowhere, PublisherConfig(buffer_messages=1, on_full="block", block_ms=600), enabled=True
    )
    record = dict(SAMPLES["Experience"])

    async def ticks_while(publishing) -> tuple[int, bool]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        ticks = 0
        accepted = await publishing()
        stop.set()
        await task
        return ticks, accepted

    async def run() -> tuple[tuple[int, bool], tuple[int, bool]]:
        assert await publisher.apublish_experience(record)  # fills the buffer of one
        deadline = time.monotonic() + 5
        while publisher.stats.pending < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

        async def on_the_loop() -> bool:
            return publisher.publish_experience(record)

        return await ticks_while(lambda: publisher.apublish_experience(record)), await ticks_while(
            on_the_loop
        )

    (async_ticks, async_accepted), (sync_ticks, sync_accepted) = asyncio.run(run())
    publisher.close(timeout=0.1)
    assert not async_accepted and not sync_accepted  # no room came: both dropped, and counted
    assert publisher.stats.dropped == 2
    assert async_ticks >= 5  # 600 ms of waiting: the loop went on ticking (every 10 ms, idle)
    assert sync_ticks <= 1  # the synchronous call held the loop for all of it
