"""Reading a model's reply as the widget task's answer.

A student trained on the teacher's traces replies with its reasoning first,
``<think>…</think>``, then the JSON answer (see ``trainers.dataset.assistant_turn``). Every
reader of a reply (the backend's router, the evaluator) must judge the same part of it, so the
rule lives here once: drop a leading thinking block, then parse with ``widgets.parse_answer``.
"""

from __future__ import annotations

from typing import Any

from tier3.tasks import widgets

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def final_answer(reply: str) -> str:
    """The reply without its thinking block (an unclosed block leaves no answer at all)."""
    text = reply.strip()
    if text.startswith(THINK_OPEN):
        _, closed, rest = text.partition(THINK_CLOSE)
        return rest.strip() if closed else ""
    return text


def read_answer(reply: str) -> dict[str, Any] | None:
    """The reply's answer as a dict if it is valid for the task, else None."""
    return widgets.parse_answer(final_answer(reply))
