"""The router for asyncio services: ``Router``'s decisions, with the model calls awaited.

An asyncio web service (FastAPI, Starlette, aiohttp) must never block its event loop: one
synchronous teacher call of a second stalls every other request the process is serving for that
second. ``AsyncRouter.answer`` awaits the teacher and the student; everything between the calls is
``router``'s own functions (``serving_student``, ``assigned_to_student``, ``student_outcome``,
``teacher_routed``, ``experience_of``), so the switch, the sticky split, what counts as a student
failure and the Experience's variant cannot drift apart between the two routers.

Nothing else on a request's path waits:

- the ``DeploymentWatcher`` answers "which student serves" from memory (a lock held for a read);
  its start (``wait_caught_up``) and ``close`` do wait, so a service runs them in a worker thread
  (``asyncio.to_thread``) in its lifespan, as ``examples/widget_service`` does;
- the Experience goes to ``Publisher.apublish_experience``: with the default ``on_full="drop"``
  that is ``publish`` itself (about a microsecond, never the network); with ``"block"`` a full
  buffer's wait moves to a worker thread instead of sleeping on the loop.

The SDK adapters take the SDKs' async clients (``anthropic.AsyncAnthropic``,
``ollama.AsyncClient``) and send the task's messages, as the synchronous adapters do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from tier3.streams.backend.router import (
    Routed,
    RoutingSettings,
    RoutingState,
    experience_of,
    served,
    student_outcome,
    teacher_routed,
)
from tier3.tasks.contract import Task, split_system
from tier3.tasks.registry import configured_task

# (query, context) -> reply text
AsyncTeacher = Callable[[str, dict[str, Any]], Awaitable[str]]
# (student model name, query, context) -> reply text
AsyncStudent = Callable[[str, str, dict[str, Any]], Awaitable[str]]


class AsyncRouter(RoutingState):
    """Answer queries with the teacher or the student from asyncio code; publish what served."""

    def __init__(
        self,
        teacher: AsyncTeacher,
        student: AsyncStudent,
        settings: RoutingSettings | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(settings, **kw)
        self.teacher = teacher
        self.student = student

    async def answer(
        self,
        query: str,
        context: dict[str, Any],
        *,
        user_id_hash: str,
        session_id_hash: str,
        query_id: str | None = None,
        confidence: float | None = None,
    ) -> Routed:
        """Answer one query; publish its Experience (when a publisher is set).

        A teacher failure propagates (the service decides what the user sees); a student failure
        never does: the teacher answers and the Experience says ``student-fallback``.
        """
        model = self.student_model()
        routed: Routed | None = None
        fallback_reason = None
        if model is not None and self.assigned_to_student(user_id_hash, session_id_hash):
            start = time.perf_counter()
            try:
                reply: str | BaseException = await self.student(model, query, context)
            except Exception as exc:  # any student failure is the teacher's cue, never the user's
                reply = exc
            latency = (time.perf_counter() - start) * 1000
            routed, fallback_reason = student_outcome(self.task, model, reply, latency)
        if routed is None:
            start = time.perf_counter()
            reply = await self.teacher(query, context)
            latency = (time.perf_counter() - start) * 1000
            routed = teacher_routed(self.settings, reply, latency, fallback_reason)
        experience = experience_of(
            self.task, routed, query, context, query_id=query_id,
            user_id_hash=user_id_hash, session_id_hash=session_id_hash, confidence=confidence,
        )
        routed = served(routed, experience, None)  # counted; published below, without waiting
        if self.publisher is not None:
            await self.publisher.apublish_experience(experience)
        return routed


# -- adapters for the SDKs' async clients --------------------------------------------------------


def ollama_student_async(
    client: Any, options: dict[str, Any] | None = None, task: Task | None = None
) -> AsyncStudent:
    """An ``AsyncStudent`` calling an ``ollama.AsyncClient``'s chat API with the task's messages."""
    task = task or configured_task()

    async def call(model: str, query: str, context: dict[str, Any]) -> str:
        response = await client.chat(
            model=model,
            messages=task.render(query, context),
            options={"temperature": 0, **(options or {})},
        )
        return response.message.content

    return call


def anthropic_teacher_async(
    client: Any, model: str, max_tokens: int = 512, task: Task | None = None
) -> AsyncTeacher:
    """An ``AsyncTeacher`` calling an ``anthropic.AsyncAnthropic`` client's messages API with the
    task's messages (a system turn goes to the API's ``system`` parameter)."""
    task = task or configured_task()

    async def call(query: str, context: dict[str, Any]) -> str:
        system, turns = split_system(task.render(query, context))
        extra = {"system": system} if system is not None else {}
        message = await client.messages.create(
            model=model, max_tokens=max_tokens, messages=turns, **extra
        )
        return "".join(block.text for block in message.content if block.type == "text")

    return call
