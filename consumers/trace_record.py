"""The Trace of one capture job: the record for the traces topic and the fuller document for
object storage, with every text field redacted.

The record carries the messages the task rendered and both providers were sent
(``teacher_messages``, schema version 3), so the dataset and the evaluation reuse them. They are
redacted like the query and the answers: what reaches training never holds what the redactor
removes, and a redaction shows in the messages exactly as in the query.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import structlog
from tier3.consumers import metrics
from tier3.consumers.providers import Answer, Provider, Question
from tier3.consumers.redaction import Redactor
from tier3.schemas.registry import TRACE
from tier3.tasks.contract import ChatMessage, Task

log = structlog.get_logger("tier3.capture")


def trace_of(
    job: dict[str, Any],
    question: Question,
    teacher: tuple[Answer, float],
    student: tuple[Answer, float] | BaseException,
    *,
    uri: str,
    task: Task,
    teacher_provider: Provider,
    student_provider: Provider,
    redactor: Redactor | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Trace record (for the topic) and the fuller document (for object storage)."""
    found: Counter[str] = Counter()

    def clean(text: str) -> str:
        return redactor.redact(text, found) if redactor else text

    teacher_answer, teacher_ms = teacher
    valid = task.parse(teacher_answer.text) is not None
    if not valid:
        metrics.MALFORMED.inc()
        log.info("teacher answer is not the task's JSON; kept and marked",
                 query_id=job["query_id"])
    if isinstance(student, BaseException):
        metrics.STUDENT_ERRORS.inc()
        student_answer, student_ms = Answer(""), 0.0
        student_error: str | None = clean(f"{type(student).__name__}: {student}")
    else:
        (student_answer, student_ms), student_error = student, None
    trace = {
        "query_id": job["query_id"],
        "created_at": int(time.time() * 1000),
        "query": clean(question.query),
        "context": clean(question.context),
        "capture_reason": job["reason"],
        "teacher_provider": teacher_provider.name,
        "teacher_model": teacher_provider.model,
        "teacher_thinking": clean(teacher_answer.thinking),
        "teacher_answer": clean(teacher_answer.text),
        "teacher_latency_ms": teacher_ms,
        "teacher_input_tokens": teacher_answer.input_tokens,
        "teacher_output_tokens": teacher_answer.output_tokens,
        "student_provider": student_provider.name,
        "student_model": student_provider.model,
        "student_answer": clean(student_answer.text),
        "student_latency_ms": student_ms,
        "student_error": student_error,
        "teacher_answer_valid": valid,
        "teacher_messages": [
            ChatMessage(role=m["role"], content=clean(m["content"])) for m in question.messages
        ],
        "object_uri": uri,
    }
    document = {
        **trace,
        "schema": TRACE,
        "task": task.name,
        "original_response": clean(job["original_response"]),
        "original_model": job["original_model"],
        "model_variant": job["model_variant"],
        "confidence": job["confidence"],
        "rating": job["rating"],
        "redactions": dict(found),
    }
    for pattern, n in found.items():
        metrics.REDACTIONS.labels(pattern).inc(n)
    return trace, document
