"""The deployment gate: a model ships only when its evaluation passes every configured threshold.

Thresholds come from ``TIER3_GATE_*`` variables. The defaults are the issue's goal for the
widget task (99% valid JSON, 90% selection agreement) plus a score-match floor; a latency
ceiling is off unless set, because the teacher's latency is not the student's budget everywhere.
When user ratings exist, a student the A/B test finds significantly worse never passes. When a
student already serves, the candidate is also compared with it on the same held-out queries
(``trainers.release.champion``: McNemar's exact test on per-query agreement) and a candidate
worse than the serving model beyond noise never passes, however good its absolute numbers.

The decision carries one reason per check, pass or fail, so the EvalReport event, the Markdown
report and the ModelDeployed event all record why a model did or did not ship.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GateThresholds(BaseSettings):
    """What an evaluation must reach to deploy (env: ``TIER3_GATE_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="TIER3_GATE_", env_file=".env", extra="ignore")

    min_examples: int = Field(20, ge=1, description="Held-out queries needed to judge at all.")
    json_validity: float = Field(0.99, ge=0, le=1, description="Minimum JSON validity rate.")
    selection_agreement: float = Field(0.90, ge=0, le=1, description="Minimum widget agreement.")
    score_match: float = Field(0.80, ge=0, le=1, description="Minimum score-match rate.")
    max_student_p95_ms: float | None = Field(None, gt=0, description="Student p95 ceiling (ms).")


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        failed = [r for r in self.reasons if r.startswith("FAIL")]
        return "passed the gate" if self.passed else "; ".join(failed)


def decide(
    metrics: Any,  # evaluate.EvalMetrics
    thresholds: GateThresholds | None = None,
    ratings: Any = None,  # streams.ab_test.ABResult
    champion: Any = None,  # champion.ChampionComparison
) -> GateDecision:
    """Check ``metrics`` (the A/B ratings and the serving model's comparison, if any) against
    ``thresholds``."""
    t = thresholds or GateThresholds()
    checks: list[tuple[bool, str]] = [
        (
            metrics.examples >= t.min_examples,
            f"held-out queries {metrics.examples} >= {t.min_examples}",
        ),
        (
            metrics.json_validity_rate >= t.json_validity,
            f"JSON validity {metrics.json_validity_rate:.1%} >= {t.json_validity:.1%}",
        ),
        (
            metrics.selection_agreement >= t.selection_agreement,
            f"selection agreement {metrics.selection_agreement:.1%} >= {t.selection_agreement:.1%}",
        ),
        (
            metrics.score_match_rate >= t.score_match,
            f"score match (±{metrics.tolerance}) {metrics.score_match_rate:.1%} "
            f">= {t.score_match:.1%}",
        ),
    ]
    if t.max_student_p95_ms is not None:
        checks.append(
            (
                metrics.student_latency_p95_ms <= t.max_student_p95_ms,
                f"student p95 {metrics.student_latency_p95_ms:.0f} ms "
                f"<= {t.max_student_p95_ms:.0f} ms",
            )
        )
    if ratings is not None and ratings.p_value is not None:
        checks.append(
            (not ratings.student_worse, f"A/B ratings: student not worse ({ratings.summary()})")
        )
    if champion is not None:
        checks.append((not champion.worse, f"champion vs challenger: {champion.summary()}"))
    reasons = [f"{'PASS' if ok else 'FAIL'}: {text}" for ok, text in checks]
    return GateDecision(
        passed=all(ok for ok, _ in checks),
        reasons=reasons,
        thresholds={
            "json_validity": t.json_validity,
            "selection_agreement": t.selection_agreement,
            "score_match": t.score_match,
        },
    )
