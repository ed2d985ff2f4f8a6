"""How ``tier3 demo`` ends: the before/after table, live queries through the router, the summary.

The release stage writes its figures beside its report (``variants.json``: every variant's
metrics on the same held-out queries, the champion comparison, the candidate's quantization);
the demo reads them from object storage through the EvalReport's ``report_uri``, as an operator
would, rather than importing the trainers (``streams`` sits below them).

The live queries are the backend's view: ``USE_FINETUNED_MODEL=true`` switches the router to
the student, which it finds through the ModelDeployed history (``DeploymentWatcher``), and the
router asks Ollama for the answers, falling back to the teacher on any failure; each answer says
which variant served it. The summary JSON gathers everything a machine needs to judge the run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import fsspec
from rich.console import Console
from rich.table import Table
from tier3.streams.backend.deployments import DeploymentWatcher
from tier3.streams.backend.publisher import Publisher
from tier3.streams.backend.router import Router, RoutingSettings, ollama_student
from tier3.streams.kafka.settings import KafkaSettings
from tier3.tasks.registry import configured_task

ROLES = {"base": "base", "champion": "serving", "candidate": "fine-tuned", "teacher": "teacher"}


def before_after(report_uri: str) -> dict[str, Any] | None:
    """The release's ``variants.json`` beside ``report_uri``, if it evaluated served models."""
    folder = report_uri.rsplit("/", 1)[0]
    fs, path = fsspec.core.url_to_fs(f"{folder}/variants.json")
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def print_table(console: Console, figures: dict[str, Any]) -> None:
    """The variants side by side, on the same held-out queries."""
    table = Table(title="before and after, on the same held-out queries", title_justify="left")
    for column in ("variant", "JSON valid", "agreement", "score match", "p50 ms", "p95 ms",
                   "rating"):  # fmt: skip
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in figures["variants"]:
        rating = "-" if v.get("user_rating") is None else f"{v['user_rating']:.2f}"
        table.add_row(
            ROLES.get(v["role"], v["role"]), f"{v['json_validity_rate']:.0%}",
            f"{v['selection_agreement']:.0%}", f"{v['score_match_rate']:.0%}",
            f"{v['student_latency_p50_ms']:.0f}", f"{v['student_latency_p95_ms']:.0f}", rating,
        )  # fmt: skip
    console.print(table)
    names = ", ".join(f"{ROLES.get(v['role'], v['role'])} = {v['model']}"
                      for v in figures["variants"])  # fmt: skip
    console.print(f"    ({names}; the fine-tuned model served at "
                  f"{figures['candidate']['quantization']})")
    comparison = figures.get("comparison")
    if comparison:
        console.print(
            f"    champion vs challenger ({comparison['test']}): "
            f"{comparison['difference_points']:+.1f} points against {comparison['champion']}, "
            f"p = {comparison['p_value']:.3g}: "
            + ("worse beyond noise" if comparison["worse"] else "not worse beyond noise")
        )


def live_queries(
    settings: KafkaSettings, ollama_url: str, count: int, seed: int = 99
) -> list[dict[str, Any]]:
    """Answer ``count`` fresh queries through the router with ``USE_FINETUNED_MODEL=true``."""
    import random

    import ollama

    os.environ["USE_FINETUNED_MODEL"] = "true"  # the backend's switch, as a backend sets it
    routing = RoutingSettings()
    task = configured_task()

    def teacher(query: str, context: dict[str, Any]) -> str:  # the fallback: offline rules
        return json.dumps(task.reference_answer(query, context))

    watcher = DeploymentWatcher(settings, routing.model)
    publisher = Publisher(settings, enabled=True)
    try:
        watcher.wait_caught_up(30)
        router = Router(
            teacher,
            ollama_student(ollama.Client(host=ollama_url), {"num_predict": 96}),
            routing,
            publisher=publisher,
            deployments=watcher,
        )
        rng = random.Random(seed)
        answered = []
        for i in range(count):
            q = task.generate_query(rng)
            routed = router.answer(
                q.text, dict(q.context), user_id_hash=f"demo-user-{i}", session_id_hash=f"s{i}"
            )
            answered.append({
                "query": q.text, "variant": routed.variant, "model": routed.model,
                "reply": routed.reply, "latency_ms": round(routed.latency_ms, 1),
                "fallback_reason": routed.fallback_reason,
            })  # fmt: skip
    finally:
        publisher.close(10)
        watcher.close()
    return answered


def machine_load() -> dict[str, Any]:
    """The load averages and core count, recorded beside every timing."""
    one, five, fifteen = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_1m": one, "load_5m": five, "load_15m": fifteen,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path


def summary(
    *,
    started: float,
    timings: dict[str, float],
    results: dict[str, dict],
    figures: dict | None,
    live: list[dict],
    base: dict,
    training: dict[str, Any],
    gpu: bool,
    load_at_start: dict,
    base_name: str | None,
) -> dict[str, Any]:
    """The machine-readable record of a run: figures, identities, timings and the load."""
    roles = {v["role"]: v for v in (figures or {}).get("variants", [])}
    base_v, tuned = roles.get("base"), roles.get("candidate")
    report = results.get("EvalReport", {})
    completed = results.get("TrainingCompleted", {})
    deployed = results.get("ModelDeployed")
    goal: dict[str, Any] = {"json_validity": 0.9, "agreement_over_base_points": 30, "met": None}
    seconds = round(time.monotonic() - started, 1)
    verdict = f"no before/after figures (no Ollama, or the loop stopped early) after {seconds:.0f}s"
    if base_v and tuned:
        gain = (tuned["selection_agreement"] - base_v["selection_agreement"]) * 100
        goal["agreement_gain_points"] = round(gain, 1)
        goal["met"] = tuned["json_validity_rate"] >= 0.9 and gain >= 30
        verdict = (
            f"goal {'MET' if goal['met'] else 'NOT met'} in {seconds:.0f}s: fine-tuned JSON "
            f"validity {tuned['json_validity_rate']:.0%}, agreement "
            f"{tuned['selection_agreement']:.0%} against the base's "
            f"{base_v['selection_agreement']:.0%} ({gain:+.0f} points)"
        )
    thinking_note = None if training["thinking"] else (
        "trained on the teacher's answer without its thinking (the CPU budget); on a GPU the "
        "demo trains both, through the same code path"
    )
    return {
        "verdict": verdict,
        "goal": goal,
        "wall_seconds": seconds,
        "within_15_minutes": seconds <= 900,
        "timings_s": timings,
        "machine": {
            "device": "cuda" if gpu else "cpu",
            "load_at_start": load_at_start,
            "load_at_end": machine_load(),
        },
        "base_model": {
            "spec": base["spec"],
            "file": base.get("gguf"),
            "sha256": base.get("sha256"),
            "ollama_name": base_name,
        },
        "training": {
            **training,
            "device": "cuda" if gpu else "cpu",
            "thinking_note": thinking_note,
            "train_examples": completed.get("train_examples"),
            "metrics": completed.get("metrics"),
        },
        "evaluation": {
            "held_out_queries": report.get("examples"),
            "gate_passed": report.get("passed"),
            "gate_reasons": report.get("reasons"),
            "variants": (figures or {}).get("variants", []),
            "champion_comparison": (figures or {}).get("comparison"),
            "report": report.get("report_uri"),
        },
        "deployment": None if not deployed else {
            "ollama_name": deployed["ollama_name"],
            "quantization": deployed["quantization"],
            "digest": deployed["digest"],
            "request_id": deployed["request_id"],
        },
        "router": {"use_finetuned_model": bool(live), "answers": live},
    }
