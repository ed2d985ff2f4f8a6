"""The task contract: everything the stages must agree on about one kind of query.

tier3 moves a product's LLM traffic; what that traffic *is* (a dashboard's widget selection, a
support ticket's triage, ...) is a ``Task``. Every stage that needs the task's behaviour asks the
configured one (``tasks.registry.configured_task``) and never imports a particular task:

- **messages**: how a query and its context become the chat messages sent to the teacher and the
  student. Capture sends them and records them in the trace (``Trace.teacher_messages``); the
  dataset and the evaluation reuse the recorded messages and never render them again, so the
  student is trained and judged on exactly the text the teacher saw. The backend's router
  renders live queries with the same function.
- **answer_schema** and **parse**: the answer's JSON Schema (Ollama is asked to follow it) and
  the rule that turns a reply into a valid answer, or None.
- **agree** and **score**: how two answers are compared (the evaluation's selection agreement
  and score match; the router's confidence is the answer's score).
- **reference_answer** / **reference_thinking**: the offline rules that stand in for the teacher
  on machines without a key; **baseline_answer** the deliberately weak offline student.
- **random_query**: optional, a generator of the task's traffic for simulations and demos.

A task is plain data and functions: a frozen dataclass, so a team writes one in a module of its
own and registers it by name (``docs/tasks.md``), without editing tier3.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ROLES = ("system", "user", "assistant")


class ChatMessage(TypedDict):
    """One chat turn, as the Anthropic, OpenAI and Ollama chat APIs all take it."""

    role: str
    content: str


@dataclass(frozen=True)
class Query:
    """One query of a task's traffic: what the user asked, and the context it came with."""

    text: str
    context: dict[str, Any]


Context = Mapping[str, Any]
Answer = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One task's behaviour. Only ``name`` to ``reference_answer`` are required."""

    name: str
    messages: Callable[[str, Context], list[ChatMessage]]
    answer_schema: Mapping[str, Any]
    parse: Callable[[str], Answer | None]
    agree: Callable[[Answer, Answer], bool]
    score: Callable[[Answer], float | None]
    reference_answer: Callable[[str, Context], Answer]
    reference_thinking: Callable[[str, Context], str] = lambda query, context: ""
    baseline_answer: Callable[[str, Context], Answer] | None = None
    random_query: Callable[[random.Random], Query] | None = None

    def render(self, query: str, context: Context) -> list[ChatMessage]:
        """The messages for a query, checked: a task's bug fails here, not inside an SDK."""
        messages = self.messages(query, context)
        return check_messages(messages, f"task {self.name!r}")

    def read(self, reply: str) -> Answer | None:
        """A model's reply as the task's answer: thinking block dropped, then ``parse``."""
        return self.parse(final_answer(reply))

    def scores_match(self, a: Answer, b: Answer, tolerance: float) -> bool:
        """Whether two answers' scores differ by at most ``tolerance`` (no score: no match)."""
        try:
            sa, sb = self.score(a), self.score(b)
        except (KeyError, TypeError, ValueError):
            return False
        if sa is None or sb is None:
            return False
        return abs(float(sa) - float(sb)) <= tolerance + 1e-9  # 0.9 - 0.8 < 0.1 in floats

    def generate_query(self, rng: random.Random) -> Query:
        """One query of simulated traffic; a task without a generator cannot be simulated."""
        if self.random_query is None:
            raise ValueError(
                f"task {self.name!r} has no random_query, so it cannot simulate traffic; "
                "give the Task a random_query or simulate with TIER3_TASK=widgets"
            )
        return self.random_query(rng)


def check_messages(messages: Any, what: str) -> list[ChatMessage]:
    """``messages`` as a list of ChatMessage, or a ValueError that says what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{what}: messages must be a non-empty list, got {messages!r:.80}")
    out: list[ChatMessage] = []
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise ValueError(f"{what}: each message needs a role in {ROLES}, got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{what}: message content must be a string, got {m!r:.80}")
        out.append(ChatMessage(role=m["role"], content=m["content"]))
    if out[-1]["role"] != "user":
        raise ValueError(f"{what}: the last message must be the user's, got {out[-1]['role']!r}")
    return out


def final_answer(reply: str) -> str:
    """The reply without its thinking block (an unclosed block leaves no answer at all).

    A student trained on the teacher's traces replies with its reasoning first,
    ``<think>…</think>``, then the answer (``trainers.training.dataset.assistant_turn``); every
    reader of a reply (the router, the evaluator) must judge the same part of it.
    """
    text = reply.strip()
    if text.startswith(THINK_OPEN):
        _, closed, rest = text.partition(THINK_CLOSE)
        return rest.strip() if closed else ""
    return text


def load_json_answer(text: str) -> Any:
    """A reply's JSON (a Markdown code fence around it is tolerated), or None if it is not JSON.

    The first step of most tasks' ``parse``; validating the value is the task's own business.
    """
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None


def context_of(document: str) -> dict[str, Any]:
    """A trace's or job's context (a JSON document) as the dict a task renders.

    A context that is not a JSON object is kept whole under ``"raw"``, never dropped.
    """
    try:
        value = json.loads(document)
    except (json.JSONDecodeError, TypeError):
        return {"raw": document}
    return value if isinstance(value, dict) else {"raw": value}


def trace_messages(trace: Mapping[str, Any], task: Task) -> list[ChatMessage]:
    """The messages the teacher saw for a trace: as the trace recorded them.

    Traces written before schema version 3 have no ``teacher_messages`` (they read as ``[]``);
    for those alone the messages are rendered with ``task``, which is exact only as long as the
    task's prompt has not changed since they were captured.
    """
    recorded = trace.get("teacher_messages") or []
    if recorded:
        return check_messages(list(recorded), f"trace {trace.get('query_id', '?')}")
    return task.render(trace["query"], context_of(trace["context"]))


def split_system(messages: list[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    """(system prompt, the other turns), for APIs that take the system prompt apart (Anthropic's
    Messages API); several system turns are joined by a blank line, None if there is none."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    return ("\n\n".join(system) if system else None), [m for m in messages if m["role"] != "system"]
