"""The report a person reads after an evaluation: Markdown with PNG plots.

Markdown is readable in a terminal, in a code review and rendered by any Git host; matplotlib
draws what a picture says faster: the rates against their gate thresholds and the two latency
distributions. ``metrics.json`` beside it holds the headline numbers for machines.

A release evaluated on served models (``trainers.release.served_eval``) adds **Before and
after**: one row per variant (the base as served, the serving model, the candidate as served,
the teacher) on the same held-out queries, a grouped bar plot of their rates, the champion
comparison (how far the candidate is from the serving model, and whether beyond noise), and
``variants.json`` with the same figures for machines.
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
    served: Any = None,  # served_eval.ServedEvaluation
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
    if served is not None:
        lines += _before_after_section(served, out)
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


def _before_after_section(served: Any, out: Path) -> list[str]:
    """The variants side by side; writes ``variants.json`` and ``variants.png``."""
    names = {"base": "base (served)", "champion": "serving now", "candidate": "fine-tuned (served)",
             "teacher": "teacher (recorded)"}
    lines = [
        "## Before and after (same held-out queries)",
        "",
        "| variant | model | JSON validity | score match | agreement | p50 ms | p95 ms "
        "| user rating |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in served.variants:
        m = v.metrics
        rating = "-" if v.rating is None else f"{v.rating:.2f} ({v.ratings})"
        lines.append(
            f"| {names.get(v.role, v.role)} | `{v.model}` | {m.json_validity_rate:.1%} "
            f"| {m.score_match_rate:.1%} | {m.selection_agreement:.1%} "
            f"| {m.student_latency_p50_ms:.0f} | {m.student_latency_p95_ms:.0f} | {rating} |"
        )
    lines.append("")
    if served.comparison is not None:
        lines += [f"**Champion vs challenger**: {served.comparison.summary()}.", ""]
    lines += ["![before and after](variants.png)", ""]
    _variants_plot(served.variants, names, out / "variants.png")
    figures = {
        "variants": [v.as_dict() for v in served.variants],
        "comparison": served.comparison.as_dict() if served.comparison else None,
        "candidate": {"ollama_name": served.candidate.ollama_name,
                      "quantization": served.candidate.quantization,
                      "digest": served.candidate.digest},
    }
    (out / "variants.json").write_text(json.dumps(figures, indent=2))
    return lines


def _variants_plot(variants: list[Any], names: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("JSON validity", "json_validity_rate"), ("score match", "score_match_rate"),
               ("agreement", "selection_agreement")]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs = [j + i * width for j in range(len(metrics))]
        values = [getattr(v.metrics, key) for _, key in metrics]
        bars = ax.bar(xs, values, width, label=names.get(v.role, v.role))
        ax.bar_label(bars, labels=[f"{x:.0%}" for x in values], fontsize=7, padding=1)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([name for name, _ in metrics])
    ax.set_ylim(0, 1.12)
    ax.legend(fontsize=7, loc="upper left", ncol=len(variants))
    ax.set_title("Before and after, on the same held-out queries")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
