"""Synthetic backend traffic: the task's queries, answers and (some) feedback.

The queries come from the configured task's generator (``Task.random_query``; the built-in
widget task has one, so by default this is widget-selection traffic) and the backend's answers
from its reference rules.

``simulate(n, seed)`` is deterministic: the same seed gives the same events, ids and timestamps
included (timestamps count from a fixed epoch, not from the wall clock), so tests, demos and
benchmarks can predict exactly what the sampler will do with them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tier3.schemas.codec import Record
from tier3.schemas.registry import EXPERIENCE, FEEDBACK
from tier3.streams.backend.publisher import Publisher
from tier3.tasks.contract import Task
from tier3.tasks.registry import configured_task

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: simulated time starts here


@dataclass(frozen=True)
class SimulatedEvent:
    event: str  # EXPERIENCE or FEEDBACK
    key: str
    record: Record
    at_ms: int  # simulated time of the event, used to order the stream


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def simulate(
    events: int, seed: int = 0, rated_share: float = 0.7, task: Task | None = None
) -> Iterator[SimulatedEvent]:
    """Yield ``events`` experiences and feedback for ``rated_share`` of them, in time order.

    Feedback arrives 1 to 30 simulated seconds after its experience; some queries are never rated.
    ``task`` (default: the configured one) makes the queries and answers.
    """
    task = task or configured_task()
    rng = random.Random(seed)
    pending: list[SimulatedEvent] = []
    now = EPOCH_MS
    for _ in range(events):
        now += rng.randint(5, 200)
        query_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        q = task.generate_query(rng)
        answer = task.reference_answer(q.text, q.context)
        confidence = round(rng.betavariate(5, 2), 4)
        experience = {
            "query_id": query_id,
            "timestamp": now,
            "user_id_hash": _hash(f"user-{rng.randint(1, 500)}"),
            "session_id_hash": _hash(f"session-{rng.randint(1, 5000)}"),
            "query": q.text,
            "context": json.dumps(q.context, sort_keys=True),
            "response": json.dumps(answer),
            "model": "claude-sonnet-4-5",
            "model_variant": "teacher",
            "confidence": confidence,
            "latency_ms": round(rng.lognormvariate(7.0, 0.4), 1),
        }
        pending.sort(key=lambda e: e.at_ms)
        while pending and pending[0].at_ms <= now:
            yield pending.pop(0)
        yield SimulatedEvent(EXPERIENCE, query_id, experience, now)
        if rng.random() < rated_share:
            at = now + rng.randint(1_000, 30_000)
            rating = max(1, min(5, round(1 + 4 * confidence + rng.gauss(0, 0.7))))
            comment = rng.choice([None, None, "great", "not what I asked", "too dense"])
            pending.append(
                SimulatedEvent(
                    FEEDBACK,
                    query_id,
                    {"query_id": query_id, "timestamp": at, "rating": rating, "comment": comment},
                    at,
                )
            )
    yield from sorted(pending, key=lambda e: e.at_ms)


def run_simulation(
    publisher: Publisher,
    events: int,
    seed: int = 0,
    rate: float | None = None,
    on_event: object = None,
) -> dict[str, int]:
    """Publish simulated traffic through ``publisher`` at ``rate`` events/s (None: flat out)."""
    counts = {EXPERIENCE: 0, FEEDBACK: 0, "dropped": 0}
    start = time.perf_counter()
    for i, ev in enumerate(simulate(events, seed)):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if publisher.publish(ev.event, ev.key, ev.record):
            counts[ev.event] += 1
        else:
            counts["dropped"] += 1
        if callable(on_event):
            on_event(ev)
    return counts
