"""Evaluation metrics on inputs whose answers are known, the gate's verdict, and the report."""

from __future__ import annotations

import json
import os

import pytest
from tier3.streams.backend.ab_test import compare
from tier3.trainers.release.evaluate import (
    AnswerValidator,
    HeldOut,
    StudentReply,
    evaluate,
    generate_with_transformers,
    held_out_from_traces,
    percentile,
)
from tier3.trainers.release.gate import GateThresholds, decide
from tier3.trainers.release.report import write_report

TEACHER = {
    "widgets": ["bar_chart", "alert_list"],
    "primary_metric": "latency",
    "appropriateness": 0.9,
}


def held_out(i: int, teacher: dict = TEACHER, latency: float = 100.0) -> HeldOut:
    return HeldOut(f"q{i}", f"query {i}", '{"page": "ops"}', json.dumps(teacher), latency)


def answer(**changes) -> str:
    return json.dumps({**TEACHER, **changes})


KNOWN = [
    # (student reply, valid, score match, same selection)
    (StudentReply(f"<think>ops page, latency</think>\n{answer()}", 10.0), True, True, True),
    (StudentReply("a bar chart, I think", 20.0), False, False, False),
    (StudentReply(answer(widgets=["line_chart"], appropriateness=0.85), 30.0), True, True, False),
    (
        StudentReply(answer(widgets=["alert_list", "bar_chart"], appropriateness=0.6), 40.0),
        True,
        False,
        True,
    ),
    (StudentReply("", 5000.0, error="connection refused"), False, False, False),
]


def known_metrics():
    examples = [held_out(i, latency=100.0 * (i + 1)) for i in range(len(KNOWN))]
    return evaluate(examples, [k[0] for k in KNOWN], tolerance=0.1)


def test_rates_count_every_held_out_query():
    m = known_metrics()
    assert m.examples == 5
    assert m.json_validity_rate == pytest.approx(3 / 5)
    assert m.score_match_rate == pytest.approx(2 / 5)
    assert m.selection_agreement == pytest.approx(2 / 5)
    assert m.student_errors == 1
    assert [(r.valid, r.score_match, r.selection_match) for r in m.rows] == [k[1:] for k in KNOWN]


def test_latency_percentiles_leave_failed_calls_out():
    m = known_metrics()
    # student: 10, 20, 30, 40 (the failed call is no latency); teacher: 100..500
    assert m.student_latency_p50_ms == pytest.approx(25.0)
    assert m.student_latency_p95_ms == pytest.approx(38.5)
    assert m.teacher_latency_p50_ms == pytest.approx(300.0)
    assert m.teacher_latency_p95_ms == pytest.approx(480.0)
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) == 0.0


def test_score_tolerance_is_inclusive_and_configurable():
    examples = [held_out(0)]
    reply = [StudentReply(answer(appropriateness=0.8), 1.0)]
    assert evaluate(examples, reply, tolerance=0.1).score_match_rate == 1.0
    assert evaluate(examples, reply, tolerance=0.05).score_match_rate == 0.0


def test_a_schema_file_replaces_the_task_check(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["widgets"],
                "properties": {"widgets": {"type": "array", "minItems": 1}},
            }
        )
    )
    loose = AnswerValidator(schema)
    reply = '{"widgets": ["sparkline"], "note": "extra field"}'
    assert loose.read(reply) == {"widgets": ["sparkline"], "note": "extra field"}
    assert AnswerValidator().read(reply) is None  # the widget task's own schema refuses it
    assert loose.read('{"widgets": []}') is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "no-such-type"}))
    with pytest.raises(Exception, match="no-such-type"):
        AnswerValidator(bad)


def test_gate_passes_only_when_every_threshold_holds():
    m = known_metrics()
    strict = decide(m, GateThresholds(min_examples=5))
    assert not strict.passed
    assert "FAIL: JSON validity 60.0% >= 99.0%" in strict.reasons
    assert "PASS: held-out queries 5 >= 5" in strict.reasons

    lenient = GateThresholds(
        min_examples=5, json_validity=0.6, selection_agreement=0.4, score_match=0.4
    )
    assert decide(m, lenient).passed
    assert not decide(m, lenient.model_copy(update={"max_student_p95_ms": 30.0})).passed
    assert not decide(m, lenient.model_copy(update={"min_examples": 6})).passed

    worse = compare({"student": [1, 2] * 20, "teacher": [4, 5] * 20})
    verdict = decide(m, lenient, worse)
    assert not verdict.passed and any("A/B ratings" in r for r in verdict.reasons)


def test_gate_thresholds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TIER3_GATE_JSON_VALIDITY", "0.5")
    assert GateThresholds().json_validity == 0.5


def test_report_shows_numbers_verdict_ratings_and_plots(tmp_path):
    m = known_metrics()
    decision = decide(m, GateThresholds(min_examples=5))
    ratings = compare({"student": [4, 5] * 20, "teacher": [4, 4] * 20})
    path = write_report(m, tmp_path, title="tier3-student eval", decision=decision, ratings=ratings)
    text = path.read_text()
    assert "**Gate: FAILED**" in text
    assert "| JSON validity | 60.0% |" in text
    assert "| student | 25.0 | 38.5 |" in text
    assert "| student | 40 | 4.50 |" in text
    assert "Disagreements (4 of 5" in text and "connection refused" in text
    for png in ("rates.png", "latency.png"):
        assert f"]({png})" in text
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text())["examples"] == 5


def test_held_out_examples_are_the_manifest_eval_split():
    manifest = {
        "examples": [
            {"query_id": "b", "split": "eval"},
            {"query_id": "a", "split": "train"},
            {"query_id": "c", "split": "eval"},
            {"query_id": "gone", "split": "eval"},
        ]
    }
    trace = {"query": "q", "context": "{}", "teacher_answer": "{}", "teacher_latency_ms": 5.0}
    traces = {k: {**trace, "query": k} for k in ("a", "b", "c")}
    assert [e.query_id for e in held_out_from_traces(manifest, traces)] == ["b", "c"]


@pytest.mark.train
def test_untrained_student_is_evaluated_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tier3.trainers.training.tiny_model import cached_tiny_student

    model_dir = cached_tiny_student(os.environ.get("TIER3_TINY_CACHE") or tmp_path / "tiny")
    examples = [held_out(i) for i in range(3)]
    replies = generate_with_transformers(model_dir, examples, max_new_tokens=12, batch_size=2)
    assert len(replies) == 3 and all(r.error is None and r.latency_ms > 0 for r in replies)
    m = evaluate(examples, replies)
    # Random weights babble: the "before" of the learning proof is near zero.
    assert m.json_validity_rate == 0.0 and m.selection_agreement == 0.0
