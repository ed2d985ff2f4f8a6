"""The report a person reads after an evaluation: Markdown with PNG plots.

Markdown is readable in a terminal, in a code review and rendered by any Git host; matplotlib
draws what a picture says faster: the rates against their gate thresholds and the two latency
distributions. ``metrics.json`` beside it holds the headline numbers for machines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tier3.trainers.release.evaluate import EvalMetrics


def write_report(
    metrics: EvalMetrics,
    out_dir: str | Path,
    *,
    title: str,
    decision: Any = None,  # gate.GateDecision
    ratings: Any = None,  # streams.ab_test.ABResult
    examples_shown: int = 8,
) -> Path:
    """Write ``report.md`` with its plots into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(metrics, out, decision)
    lines = [f"# {title}", ""]
    if decision is not None:
        verdict = "PASSED" if decision.passed else "FAILED"
        lines += [f"**Gate: {verdict}**", ""] + [f"- {r}" for r in decision.reasons] + [""]
    lines += [
        f"Held-out queries: **{metrics.examples}** (student errors: {metrics.student_errors}); "
        f"score tolerance ±{metrics.tolerance}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| JSON validity | {metrics.json_validity_rate:.1%} |",
        f"| appropriateness score match | {metrics.score_match_rate:.1%} |",
        f"| widget selection agreement | {metrics.selection_agreement:.1%} |",
        "",
        "| latency (ms) | p50 | p95 |",
        "| --- | --- | --- |",
        _latency_row("student", metrics.student_latency_p50_ms, metrics.student_latency_p95_ms),
        _latency_row("teacher", metrics.teacher_latency_p50_ms, metrics.teacher_latency_p95_ms),
        "",
    ]
    lines += [f"![{name}]({file})" for name, file in plots] + [""]
    lines += _ratings_section(ratings)
    misses = [r for r in metrics.rows if not (r.valid and r.selection_match and r.score_match)]
    lines += [
        f"## Disagreements ({len(misses)} of {metrics.examples}; first {examples_shown})",
        "",
    ]
    for r in misses[:examples_shown]:
        lines += [
            f"- `{r.query_id}` {r.query!r}: valid={r.valid}, widgets={r.selection_match}, "
            f"score={r.score_match}",
            f"  - student: `{_clip(r.student)}`",
            f"  - teacher: `{_clip(r.teacher)}`",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics.headline(), indent=2))
    return path


def _latency_row(who: str, p50: float, p95: float) -> str:
    return f"| {who} | {p50:.1f} | {p95:.1f} |"


def _ratings_section(ratings: Any) -> list[str]:
    lines = ["## User ratings by A/B arm", ""]
    if ratings is None or not ratings.arms:
        return [*lines, "No rated traffic yet.", ""]
    lines += ["| arm | ratings | mean |", "| --- | --- | --- |"]
    for arm in ratings.arms.values():
        mean = "-" if arm.mean is None else f"{arm.mean:.2f}"
        lines.append(f"| {arm.variant} | {arm.ratings} | {mean} |")
    p = ratings.p_value
    lines += [
        "",
        "Mann-Whitney U test, student vs teacher: "
        + (f"p = {p:.4g}" if p is not None else f"fewer than {ratings.min_ratings} ratings per arm")
        + ("; **student rated worse**" if ratings.student_worse else ""),
        "",
    ]
    return lines


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plots(metrics: EvalMetrics, out: Path, decision: Any) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a trainer
    import matplotlib.pyplot as plt

    made = []
    names = ["JSON validity", "score match", "selection"]
    values = [metrics.json_validity_rate, metrics.score_match_rate, metrics.selection_agreement]
    fig, ax = plt.subplots(figsize=(6, 3))
    bars = ax.barh(names, values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=3)
    for i, key in enumerate(("json_validity", "score_match", "selection_agreement")):
        threshold = getattr(decision, "thresholds", {}).get(key) if decision else None
        if threshold is not None:
            ax.plot([threshold, threshold], [i - 0.4, i + 0.4], color="#c44e52", linewidth=2)
    ax.set_xlim(0, 1.15)
    ax.set_title("Student vs teacher (red: gate threshold)")
    fig.tight_layout()
    fig.savefig(out / "rates.png", dpi=110)
    plt.close(fig)
    made.append(("rates", "rates.png"))

    if metrics.student_latencies or metrics.teacher_latencies:
        fig, ax = plt.subplots(figsize=(6, 3))
        data = [metrics.student_latencies or [0.0], metrics.teacher_latencies or [0.0]]
        ax.boxplot(data, orientation="horizontal", tick_labels=["student", "teacher"])
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_title("Latency per query")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        made.append(("latency", "latency.png"))
    return made
