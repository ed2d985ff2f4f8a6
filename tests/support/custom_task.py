"""A team's own task, outside tier3: support-ticket triage, registered by dotted path.

``TIER3_TASK=tests.support.custom_task:task`` loads it (tests/test_custom_task.py). Its prompt is
its own, unlike the widget task's in every way that could be lost between stages: a system turn,
a user turn over several lines, non-ASCII characters and a context field shown in its own words.
"""

from __future__ import annotations

import json
from typing import Any

from tier3.tasks import ChatMessage, Task
from tier3.tasks.contract import Context, load_json_answer

QUEUES = ("billing", "outage", "account")
SYSTEM = "You are the support desk's triage assistant — terse, exact, JSON only."
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["queue", "urgency"],
    "properties": {
        "queue": {"type": "string", "enum": list(QUEUES)},
        "urgency": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}


def messages(query: str, context: Context) -> list[ChatMessage]:
    plan = context.get("plan", "free")
    return [
        ChatMessage(role="system", content=SYSTEM),
        ChatMessage(
            role="user",
            content=f"Ticket «{query}»\nPlan: {plan} · queue one of {', '.join(QUEUES)}\n"
            'Reply {"queue": "...", "urgency": 0..1}.',
        ),
    ]


def parse(text: str) -> dict[str, Any] | None:
    answer = load_json_answer(text)
    ok = (
        isinstance(answer, dict)
        and set(answer) == {"queue", "urgency"}
        and answer["queue"] in QUEUES
        and isinstance(answer["urgency"], int | float)
        and 0 <= answer["urgency"] <= 1
    )
    return answer if ok else None


def reference_answer(query: str, context: Context) -> dict[str, Any]:
    queue = "outage" if "down" in query else "billing" if "invoice" in query else "account"
    return {"queue": queue, "urgency": 0.9 if context.get("plan") == "enterprise" else 0.3}


def reference_thinking(query: str, context: Context) -> str:
    answer = reference_answer(query, context)
    return f"The ticket is about {answer['queue']}; the {context.get('plan', 'free')} plan."


def teacher_reply(prompt: str) -> tuple[str, str]:
    """What the fake teacher says to this task's prompt: the reference answer to its ticket."""
    ticket = prompt.split("»")[0].removeprefix("Ticket «")
    plan = prompt.split("Plan: ")[1].split(" ·")[0]
    context = {"plan": plan}
    return reference_thinking(ticket, context), json.dumps(reference_answer(ticket, context))


def task() -> Task:
    return Task(
        name="ticket-triage",
        messages=messages,
        answer_schema=SCHEMA,
        parse=parse,
        agree=lambda a, b: a["queue"] == b["queue"],
        score=lambda a: a.get("urgency"),
        reference_answer=reference_answer,
        reference_thinking=reference_thinking,
    )


not_a_task = {"name": "looks like a task but is a dict"}
