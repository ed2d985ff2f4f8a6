"""Champion against challenger, the before/after report, and training without the thinking.

The statistics are checked against scipy; the gate and the report on evaluations whose answers
are known. The served path itself (Ollama registering, asking and promoting) runs for real in
tests/test_demo.py.
"""

from __future__ import annotations

import json

import pytest
from tier3.tasks import widgets
from tier3.trainers.release.champion import compare_champion, mcnemar_exact_worse
from tier3.trainers.release.evaluate import HeldOut, StudentReply, evaluate
from tier3.trainers.release.gate import GateThresholds, decide
from tier3.trainers.release.ollama_deploy import Registered
from tier3.trainers.release.report import write_report
from tier3.trainers.release.served_eval import ServedEvaluation, Variant, teacher_variant

QUERIES = [
    ("show revenue by region", {"page": "sales", "alerts_open": False, "screen": "desktop"}),
    ("plot churn over time", {"page": "growth", "alerts_open": False, "screen": "desktop"}),
    ("latency right now", {"page": "ops", "alerts_open": True, "screen": "mobile"}),
    ("give me orders on a map", {"page": "sales", "alerts_open": False, "screen": "mobile"}),
] * 5


def held_out() -> list[HeldOut]:
    return [
        HeldOut(f"q{i}", q, json.dumps(c), json.dumps(widgets.reference_answer(q, c)), 900.0)
        for i, (q, c) in enumerate(QUERIES)
    ]


def replies(right: int) -> list[StudentReply]:
    """The teacher's answer for the first ``right`` queries, a table for the rest."""
    out = []
    for i, (q, c) in enumerate(QUERIES):
        answer = widgets.reference_answer(q, c)
        if i >= right:
            answer = {**answer, "widgets": ["table", "kpi_card"]}
        out.append(StudentReply(json.dumps(answer), 40.0 + i))
    return out


@pytest.mark.parametrize(("b", "c"), [(0, 0), (5, 0), (8, 1), (3, 3), (1, 9), (12, 4)])
def test_the_exact_mcnemar_p_value_is_scipys_binomial_test(b, c):
    from scipy.stats import binomtest

    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert mcnemar_exact_worse(b, c) == pytest.approx(expected)


def test_a_candidate_losing_most_discordant_queries_is_worse_beyond_noise():
    champion = [True] * 16 + [False] * 4
    candidate = [True] * 6 + [False] * 10 + [True] * 1 + [False] * 3
    worse = compare_champion("v2", "v2-candidate", champion, candidate)
    assert (worse.champion_only, worse.candidate_only) == (10, 1)
    assert worse.worse and worse.p_value < 0.01
    assert worse.difference == pytest.approx(-0.45)
    low, high = worse.difference_ci
    assert low < worse.difference < high < 0
    assert "-45.0 points" in worse.summary() and "worse beyond noise" in worse.summary()

    # One query lost more than won is noise, not a verdict.
    close = compare_champion("v2", "c", [True] * 10 + [False], [True] * 9 + [False, True])
    assert not close.worse and close.champion_only == close.candidate_only == 1
    tied = compare_champion("v2", "c", [True, False] * 5, [True, False] * 5)
    assert not tied.worse and tied.p_value == 1.0


def test_the_gate_refuses_a_candidate_worse_than_the_serving_model():
    examples = held_out()
    candidate = evaluate(examples, replies(right=12))
    champion = evaluate(examples, replies(right=20))
    thresholds = GateThresholds(
        min_examples=10, json_validity=0.9, selection_agreement=0.5, score_match=0.0
    )
    assert decide(candidate, thresholds).passed  # good enough on its own thresholds...
    comparison = compare_champion(
        "cc-widget-selector-v2",
        "cc-widget-selector-v2-candidate",
        [r.selection_match for r in champion.rows],
        [r.selection_match for r in candidate.rows],
    )
    decision = decide(candidate, thresholds, champion=comparison)
    assert not decision.passed  # ...but worse than what users get now
    failed = [r for r in decision.reasons if r.startswith("FAIL")]
    assert len(failed) == 1 and "champion vs challenger" in failed[0]
    assert "-40.0 points" in failed[0] and "McNemar" in failed[0]

    better = compare_champion("base", "cand", [r.selection_match for r in candidate.rows],
                              [r.selection_match for r in champion.rows])  # fmt: skip
    assert decide(champion, thresholds, champion=better).passed


def test_the_report_puts_every_variant_side_by_side(tmp_path):
    examples = held_out()
    base = evaluate(examples, [StudentReply("Sure! Here is a dashboard for you.", 300.0)] * 20)
    tuned = evaluate(examples, replies(right=18))
    served = ServedEvaluation(Registered("cc-widget-selector-v2-candidate", "sha256:ab", "Q4_K_M"))
    served.variants = [
        Variant("base", "cc-widget-selector-base", base),
        Variant("champion", "cc-widget-selector-base", base),
        Variant("candidate", "cc-widget-selector-v2-candidate", tuned),
        Variant("teacher", "reference-rules", teacher_variant(
            examples, "reference-rules", None, 0.1).metrics, rating=4.2, ratings=31),
    ]  # fmt: skip
    served.comparison = compare_champion(
        "cc-widget-selector-base", "cc-widget-selector-v2-candidate",
        [r.selection_match for r in base.rows], [r.selection_match for r in tuned.rows],
    )  # fmt: skip
    report = write_report(tuned, tmp_path, title="t", served=served).read_text()
    assert "## Before and after (same held-out queries)" in report
    assert "| base (served) | `cc-widget-selector-base` | 0.0% |" in report
    assert "| fine-tuned (served) | `cc-widget-selector-v2-candidate` | 100.0% |" in report
    assert "| teacher (recorded) | `reference-rules` | 100.0% |" in report and "4.20 (31)" in report
    assert "+90.0 points" in report and "not worse beyond noise" in report
    assert (tmp_path / "variants.png").read_bytes()[:4] == b"\x89PNG"
    figures = json.loads((tmp_path / "variants.json").read_text())
    assert [v["role"] for v in figures["variants"]] == ["base", "champion", "candidate", "teacher"]
    assert figures["variants"][2]["selection_agreement"] == pytest.approx(0.9)
    assert figures["candidate"]["quantization"] == "Q4_K_M"
    assert figures["comparison"]["difference_points"] == pytest.approx(90.0)
    assert figures["comparison"]["test"].startswith("McNemar exact")


def test_training_without_the_thinking_teaches_the_answer_alone():
    from tier3.trainers.training.dataset import build_dataset
    from tier3.trainers.training.settings import TrainerSettings

    traces = {
        f"q{i}": {
            "query_id": f"q{i}", "created_at": i, "query": q, "context": json.dumps(c),
            "teacher_thinking": widgets.reference_thinking(q, c),
            "teacher_answer": json.dumps(widgets.reference_answer(q, c)),
        }
        for i, (q, c) in enumerate(QUERIES[:4])
    }  # fmt: skip
    request = {"request_id": "r", "model": "m", "query_ids": sorted(traces)}
    with_thinking = build_dataset(request, traces, 0.0, "base")
    answer_only = build_dataset(request, traces, 0.0, "base", thinking=False)
    replies_with = [e["messages"][-1]["content"] for e in with_thinking.train]
    replies_without = [e["messages"][-1]["content"] for e in answer_only.train]
    assert all(r.startswith("<think>") for r in replies_with)
    assert replies_without == [traces[q]["teacher_answer"] for q in sorted(traces)]
    assert [e["messages"][:-1] for e in answer_only.train] == [
        e["messages"][:-1] for e in with_thinking.train
    ]  # the same prompts
    assert answer_only.manifest["thinking"] is False and with_thinking.manifest["thinking"]
    assert TrainerSettings().thinking is True
