"""Judge the student against the teacher on the held-out split.

What is measured, per held-out query (the teacher's answer is the reference):

- **JSON validity**: the student's reply, thinking block dropped, is a valid answer for the task
  (``Task.read``: the configured task's own ``parse``). A schema file (``--schema``) is checked
  with ``jsonschema`` instead, for a contract that lives in a file.
- **Score match**: the answers' scores (``Task.score``; the widget task's appropriateness)
  differ by at most ``tolerance`` (default 0.1).
- **Selection agreement**: the task's ``agree`` holds (the widget task: the same set of widgets,
  order does not matter to a dashboard).
- **Latency** p50/p95 of the student (measured here) and the teacher (recorded in its trace).

Every rate has all held-out queries as its denominator: a student reply that is invalid or that
failed counts against every metric, never drops out of it.

The student is asked with the messages the trace recorded (``HeldOut.messages``), the exact text
the teacher saw; only traces older than schema version 3 have them rendered by the task.

User ratings per A/B arm come from feedback events (``streams.ab_test``) and are reported
beside these offline metrics in the report (``trainers.release.report``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
from tier3.tasks.contract import (
    ChatMessage,
    Task,
    context_of,
    final_answer,
    load_json_answer,
    trace_messages,
)
from tier3.tasks.registry import configured_task

log = structlog.get_logger("tier3.evaluate")


@dataclass(frozen=True)
class HeldOut:
    """One held-out query and the teacher's answer to it."""

    query_id: str
    query: str
    context: str  # JSON document, as in the trace
    teacher_answer: str
    teacher_latency_ms: float
    # The messages the teacher saw (from the trace); empty: rendered with the task when asked.
    messages: tuple[ChatMessage, ...] = ()

    def context_dict(self) -> dict[str, Any]:
        return context_of(self.context)

    def prompt(self, task: Task) -> list[ChatMessage]:
        """The messages to ask the student with: the recorded ones, else the task's."""
        return list(self.messages) or task.render(self.query, self.context_dict())


@dataclass(frozen=True)
class StudentReply:
    """What the student said to one held-out query, and how long it took."""

    text: str
    latency_ms: float
    error: str | None = None


class AnswerValidator:
    """Reads a reply as the task's answer: the task's own parse, or a JSON Schema file."""

    def __init__(self, schema_file: str | Path | None = None, task: Task | None = None) -> None:
        self.schema_file = schema_file
        self.task = task or configured_task()
        self._validator = None
        if schema_file is not None:
            import jsonschema

            schema = json.loads(Path(schema_file).read_text())
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            self._validator = cls(schema)

    def read(self, reply: str) -> dict[str, Any] | None:
        """The answer if the reply is valid JSON for the task's schema, else None."""
        if self._validator is None:
            return self.task.read(reply)
        answer = load_json_answer(final_answer(reply))
        return answer if answer is not None and self._validator.is_valid(answer) else None


@dataclass
class Row:
    """One held-out query's verdict, kept for the report's examples."""

    query_id: str
    query: str
    valid: bool
    score_match: bool
    selection_match: bool
    student: str
    teacher: str
    error: str | None


@dataclass
class EvalMetrics:
    """The offline comparison of student and teacher on the held-out split."""

    examples: int
    json_validity_rate: float
    score_match_rate: float
    selection_agreement: float
    student_latency_p50_ms: float
    student_latency_p95_ms: float
    teacher_latency_p50_ms: float
    teacher_latency_p95_ms: float
    tolerance: float
    student_errors: int = 0
    rows: list[Row] = field(default_factory=list, repr=False)
    student_latencies: list[float] = field(default_factory=list, repr=False)
    teacher_latencies: list[float] = field(default_factory=list, repr=False)

    def headline(self) -> dict[str, float | int]:
        """The numbers without the per-query detail (for JSON summaries and logs)."""
        keep = {"rows", "student_latencies", "teacher_latencies"}
        return {k: v for k, v in asdict(self).items() if k not in keep}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks; 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return float(cuts[round(q) - 1]) if 1 <= q <= 99 else float(max(values) if q > 99 else 0)


def evaluate(
    examples: Sequence[HeldOut],
    replies: Sequence[StudentReply],
    *,
    tolerance: float = 0.1,
    validator: AnswerValidator | None = None,
    task: Task | None = None,
) -> EvalMetrics:
    """Compare ``replies`` with the teacher's answers to ``examples`` (same order).

    ``task`` (default: the validator's, else the configured one) decides agreement and scores.
    """
    if len(examples) != len(replies):
        raise ValueError(f"{len(examples)} examples but {len(replies)} replies")
    task = task or (validator.task if validator else configured_task())
    validator = validator or AnswerValidator(task=task)
    rows = []
    for example, reply in zip(examples, replies, strict=True):
        teacher = validator.read(example.teacher_answer)
        student = None if reply.error else validator.read(reply.text)
        both = student is not None and teacher is not None
        rows.append(
            Row(
                query_id=example.query_id,
                query=example.query,
                valid=student is not None,
                score_match=both and task.scores_match(student, teacher, tolerance),
                selection_match=both and task.agree(student, teacher),
                student=reply.text if not reply.error else f"(error: {reply.error})",
                teacher=example.teacher_answer,
                error=reply.error,
            )
        )
    n = len(rows)

    def rate(flag: str) -> float:
        return sum(getattr(r, flag) for r in rows) / n if n else 0.0

    student_ms = [r.latency_ms for r in replies if r.error is None]
    teacher_ms = [e.teacher_latency_ms for e in examples]
    return EvalMetrics(
        examples=n,
        json_validity_rate=rate("valid"),
        score_match_rate=rate("score_match"),
        selection_agreement=rate("selection_match"),
        student_latency_p50_ms=percentile(student_ms, 50),
        student_latency_p95_ms=percentile(student_ms, 95),
        teacher_latency_p50_ms=percentile(teacher_ms, 50),
        teacher_latency_p95_ms=percentile(teacher_ms, 95),
        tolerance=tolerance,
        student_errors=sum(1 for r in replies if r.error),
        rows=rows,
        student_latencies=student_ms,
        teacher_latencies=teacher_ms,
    )


# -- the student's replies -----------------------------------------------------------------------


def held_out_from_traces(
    manifest: dict[str, Any], traces: dict[str, dict[str, Any]], task: Task | None = None
) -> list[HeldOut]:
    """The eval split a training run's manifest names, from the live traces (in id order),
    each with the messages its trace recorded (``trace_messages``)."""
    task = task or configured_task()
    ids = sorted(e["query_id"] for e in manifest.get("examples", []) if e.get("split") == "eval")
    return [
        HeldOut(
            q,
            traces[q]["query"],
            traces[q]["context"],
            traces[q]["teacher_answer"],
            traces[q]["teacher_latency_ms"],
            tuple(trace_messages(traces[q], task)),
        )
        for q in ids
        if q in traces
    ]


def replies_from(
    ask: Callable[[list[ChatMessage]], str],
    examples: Iterable[HeldOut],
    task: Task | None = None,
) -> list[StudentReply]:
    """Ask any callable ``messages -> reply`` (e.g. a served model), one query at a time."""
    task = task or configured_task()
    replies = []
    for e in examples:
        start = time.perf_counter()
        try:
            text = ask(e.prompt(task))
        except Exception as exc:  # a failed call is a data point for the report, not a crash
            replies.append(StudentReply("", (time.perf_counter() - start) * 1000, str(exc)))
            continue
        replies.append(StudentReply(text, (time.perf_counter() - start) * 1000))
    return replies


def default_batch_size(device: str) -> int:
    """Replies generated together when the settings leave it open. On one H200 the flywheel's
    evaluation of 85 held-out replies took 105 s in batches of 8 and 23 s in one batch of 128
    (bench/RESULTS.md); a CPU keeps small batches, whose padding costs it real time."""
    return 128 if device == "cuda" else 8


def generate_with_transformers(
    model_dir: str | Path,
    examples: Sequence[HeldOut],
    *,
    max_new_tokens: int = 256,
    batch_size: int | None = None,
    device: str | None = None,
    task: Task | None = None,
) -> list[StudentReply]:
    """Greedy replies from a checkpoint with ``transformers``' ``generate``, to each example's
    messages (``HeldOut.prompt``).

    With ``batch_size`` > 1 (unset: ``default_batch_size``) the queries of a batch are generated
    together (left padding), and each reply's latency is its batch's wall time: what a caller of
    that batch waited.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = task or configured_task()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = batch_size or default_batch_size(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    replies: list[StudentReply] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                e.prompt(task),
                tokenize=False,
                add_generation_prompt=True,
            )
            for e in batch
        ]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            device
        )
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
            )
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - began) * 1000
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
            replies.append(StudentReply(text, elapsed))
    return replies
