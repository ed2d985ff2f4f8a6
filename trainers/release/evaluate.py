"""Judge the student against the teacher on the held-out split.

What is measured, per held-out query (the teacher's answer is the reference):

- **JSON validity**: the student's reply, thinking block dropped (``streams.answers``), parses as
  JSON and is valid against the task's JSON Schema. By default that is the widget task's own
  check (``widgets.is_valid_answer``); a schema file (``--schema``) is checked with
  ``jsonschema``, for tasks whose contract lives in a file.
- **Score match**: the appropriateness scores differ by at most ``tolerance`` (default 0.1).
- **Selection agreement**: the same set of widgets (order does not matter to a dashboard).
- **Latency** p50/p95 of the student (measured here) and the teacher (recorded in its trace).

Every rate has all held-out queries as its denominator: a student reply that is invalid or that
failed counts against every metric, never drops out of it.

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
from tier3.tasks import widgets
from tier3.tasks.answers import final_answer

log = structlog.get_logger("tier3.evaluate")


@dataclass(frozen=True)
class HeldOut:
    """One held-out query and the teacher's answer to it."""

    query_id: str
    query: str
    context: str  # JSON document, as in the trace
    teacher_answer: str
    teacher_latency_ms: float

    def context_dict(self) -> dict[str, Any]:
        try:
            value = json.loads(self.context)
        except (json.JSONDecodeError, TypeError):
            return {"raw": self.context}
        return value if isinstance(value, dict) else {"raw": value}


@dataclass(frozen=True)
class StudentReply:
    """What the student said to one held-out query, and how long it took."""

    text: str
    latency_ms: float
    error: str | None = None


class AnswerValidator:
    """Reads a reply as the task's answer: JSON, valid against the task's schema."""

    def __init__(self, schema_file: str | Path | None = None) -> None:
        self.schema_file = schema_file
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
            return widgets.parse_answer(final_answer(reply))
        try:
            answer = json.loads(final_answer(reply).strip().strip("`").removeprefix("json"))
        except (json.JSONDecodeError, TypeError):
            return None
        return answer if self._validator.is_valid(answer) else None


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
) -> EvalMetrics:
    """Compare ``replies`` with the teacher's answers to ``examples`` (same order)."""
    if len(examples) != len(replies):
        raise ValueError(f"{len(examples)} examples but {len(replies)} replies")
    validator = validator or AnswerValidator()
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
                score_match=both and _scores_match(student, teacher, tolerance),
                selection_match=both and _same_selection(student, teacher),
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


def _scores_match(student: dict[str, Any], teacher: dict[str, Any], tolerance: float) -> bool:
    try:
        diff = abs(float(student["appropriateness"]) - float(teacher["appropriateness"]))
    except (KeyError, TypeError, ValueError):
        return False
    return diff <= tolerance + 1e-9  # 0.9 - 0.8 is 0.09999999999999998 in floating point


def _same_selection(student: dict[str, Any], teacher: dict[str, Any]) -> bool:
    s, t = student.get("widgets"), teacher.get("widgets")
    return isinstance(s, list) and isinstance(t, list) and set(map(str, s)) == set(map(str, t))


# -- the student's replies -----------------------------------------------------------------------


def held_out_from_traces(
    manifest: dict[str, Any], traces: dict[str, dict[str, Any]]
) -> list[HeldOut]:
    """The eval split a training run's manifest names, from the live traces (in id order)."""
    ids = sorted(e["query_id"] for e in manifest.get("examples", []) if e.get("split") == "eval")
    return [
        HeldOut(
            q,
            traces[q]["query"],
            traces[q]["context"],
            traces[q]["teacher_answer"],
            traces[q]["teacher_latency_ms"],
        )
        for q in ids
        if q in traces
    ]


def replies_from(
    ask: Callable[[str, dict[str, Any]], str], examples: Iterable[HeldOut]
) -> list[StudentReply]:
    """Ask any callable ``(query, context) -> reply`` (e.g. a served model), one query at a time."""
    replies = []
    for e in examples:
        start = time.perf_counter()
        try:
            text = ask(e.query, e.context_dict())
        except Exception as exc:  # a failed call is a data point for the report, not a crash
            replies.append(StudentReply("", (time.perf_counter() - start) * 1000, str(exc)))
            continue
        replies.append(StudentReply(text, (time.perf_counter() - start) * 1000))
    return replies


def generate_with_transformers(
    model_dir: str | Path,
    examples: Sequence[HeldOut],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 1,
    device: str | None = None,
) -> list[StudentReply]:
    """Greedy replies from a checkpoint with ``transformers``' ``generate``.

    With ``batch_size`` > 1 the queries of a batch are generated together (left padding), and
    each reply's latency is its batch's wall time: what a caller of that batch waited.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    replies: list[StudentReply] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": widgets.render_prompt(e.query, e.context_dict())}],
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
