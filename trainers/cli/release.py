"""``tier3 eval``, ``export``, ``deploy``, ``rollback`` and ``tier3 run release|ab-guard``.

Registered by ``trainers.cli.training.register`` (the trainer's entry point). Every command
works on a training run named by its request id: its artefacts are found in object storage under
``models/<model>/<request_id>/`` and its events on training-results, so an operator never has
to pass paths around. The Ollama server is the ``ollama`` SDK's (``OLLAMA_HOST``) unless
``--ollama-host`` says otherwise. Each command parses, calls the release domain
(``trainers.release``) and prints; how runs are evaluated and deployed is ``ReleaseSettings``,
whose fields give the options their help, variables and defaults.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from tier3.streams.cli.settings_options import settings_options
from tier3.streams.telemetry.metrics import MetricsPort, serve_metrics
from tier3.trainers.release.settings import ReleaseSettings

console = Console(stderr=True)

# Every option below that sets how runs are evaluated or deployed is a ReleaseSettings field.
MODEL = {"student_model": "--model"}
EVALUATION = ["tolerance", "schema_file", "max_examples", "max_new_tokens", "batch_size"]
RequestOpt = Annotated[str, typer.Option(help="The training request whose run to use.")]
HostOpt = Annotated[
    str | None, typer.Option(help="Ollama server URL (default: OLLAMA_HOST or localhost).")
]


def _completed(model: str, request_id: str) -> dict[str, Any]:
    from tier3.streams.kafka.settings import LocalSettings
    from tier3.trainers.artifacts import RunArtifacts

    run = RunArtifacts(LocalSettings().object_root, model, request_id)
    completed = run.completed()
    if completed is None:
        console.print(f"[red]no finished run of {model} for {request_id} under {run.uri}[/red]")
        raise typer.Exit(2)
    return completed


def _ollama(host: str | None) -> Any:
    import ollama

    return ollama.Client(host=host) if host else ollama.Client()


@settings_options(
    ReleaseSettings, ["student_model", *EVALUATION], flags={**MODEL, "schema_file": "--schema"}
)
def evaluate_cmd(
    settings: ReleaseSettings,
    request_id: RequestOpt,
    served: Annotated[
        str | None,
        typer.Option(help="Evaluate this model as Ollama serves it, instead of the checkpoint."),
    ] = None,
    ollama_host: HostOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also keep the report in this folder.")] = None,
) -> None:
    """Evaluate a run's student against the teacher on its held-out split; emit EvalReport.

    Measures JSON validity, appropriateness-score match (within --tolerance), widget selection
    agreement and latency p50/p95 of both, adds user ratings per A/B arm from feedback, applies
    the gate (TIER3_GATE_*), writes report.md with plots next to the run's artefacts, and puts an
    EvalReport on training-results. Exit code 0 when the gate passed, 1 when it did not.
    """
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.trainers.release.consumer import Release, evaluate_served

    completed = _completed(settings.student_model, request_id)
    kafka, local = KafkaSettings(), LocalSettings()
    if served:
        client = _ollama(ollama_host)
        released = evaluate_served(kafka, local, completed, served, client, settings, out)
    else:
        released = Release(kafka, local, settings).handle(completed)
    _print_eval(released.eval_report)
    if out and not served:
        console.print(f"report: {released.eval_report['report_uri']}")
    raise typer.Exit(0 if released.decision.passed else 1)


def _print_eval(record: dict) -> None:
    verdict = "[green]PASSED[/green]" if record["passed"] else "[red]FAILED[/red]"
    console.print(f"gate {verdict} for {record['model']} {record['request_id']}")
    for reason in record["reasons"]:
        console.print(f"  {reason}")
    typer.echo(json.dumps(record, indent=2))


@settings_options(ReleaseSettings, ["student_model"], flags=MODEL)
def export_cmd(
    settings: ReleaseSettings,
    out: Annotated[Path, typer.Option(help="Where to write the F16 GGUF file.")],
    request_id: Annotated[str | None, typer.Option(help="Export this run's student.")] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="Export this merged checkpoint instead of a run.")
    ] = None,
) -> None:
    """Merge a run's LoRA adapter into its base and write it as GGUF (F16, tokenizer inside).

    Quantization to q4_k_m happens at deploy time, in Ollama. Prints what the file holds, read
    back with the gguf reader.
    """
    from tier3.trainers.release.consumer import weights_of
    from tier3.trainers.release.gguf_export import export_gguf, summary_json

    if (request_id is None) == (model_dir is None):
        raise typer.BadParameter("give exactly one of --request-id and --model-dir")
    model = settings.student_model
    with tempfile.TemporaryDirectory(prefix="tier3-export-") as tmp:
        source = model_dir or weights_of(_completed(model, request_id), Path(tmp))
        result = export_gguf(source, out, name=model)
    console.print(f"wrote {result.path} ({result.tensors} tensors, sha256 {result.sha256[:12]})")
    typer.echo(summary_json(result.path))


@settings_options(ReleaseSettings, ["student_model", "ollama_name"], flags=MODEL)
def deploy_cmd(
    settings: ReleaseSettings,
    request_id: RequestOpt,
    ollama_host: HostOpt = None,
    gguf: Annotated[
        Path | None, typer.Option(help="A GGUF already exported (default: export the run now).")
    ] = None,
) -> None:
    """Deploy a run's student to Ollama as q4_k_m, if its evaluation passed the gate.

    Refuses a run with no EvalReport or a failed one (run `tier3 eval` first). Registers the
    model through the ollama SDK (blob push, create with quantize=q4_K_M) and emits
    ModelDeployed with the served digest and the lineage: request, dataset manifest, report.
    """
    from tier3.streams.kafka.settings import KafkaSettings
    from tier3.trainers.release.consumer import eval_reports, weights_of
    from tier3.trainers.release.gate import GateDecision
    from tier3.trainers.release.gguf_export import GGUF_NAME, export_gguf
    from tier3.trainers.release.ollama_deploy import deploy

    kafka, model, name = KafkaSettings(), settings.student_model, settings.ollama_name
    completed = _completed(model, request_id)
    report = eval_reports(kafka).get(request_id)
    if report is None:
        console.print(f"[red]{request_id} has no EvalReport: run `tier3 eval` first[/red]")
        raise typer.Exit(2)
    decision = GateDecision(report["passed"], list(report["reasons"]))
    if not decision.passed:
        console.print(f"[red]{request_id} did not pass the gate:[/red] {decision.summary()}")
        raise typer.Exit(1)
    with tempfile.TemporaryDirectory(prefix="tier3-deploy-") as tmp:
        path = gguf or export_gguf(weights_of(completed, Path(tmp)), Path(tmp) / GGUF_NAME).path
        record = deploy(
            kafka,
            _ollama(ollama_host),
            gguf_path=path,
            decision=decision,
            request_id=request_id,
            model=model,
            ollama_name=name,
            manifest_uri=completed["manifest_uri"],
            eval_report_uri=report["report_uri"],
        )
    console.print(f"deployed {name} ({record['digest']}, {record['quantization']})")
    typer.echo(json.dumps(record, indent=2))


@settings_options(ReleaseSettings, ["student_model"], flags=MODEL)
def rollback_cmd(
    settings: ReleaseSettings,
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "operator rollback",
) -> None:
    """Take the current deployment back: the previous one (or the teacher) serves again.

    Writes ModelDeployed(action=rollback) on training-results; every backend's router follows
    within a poll interval. Run again to go back one more step.
    """
    from tier3.streams.backend.deployments import DeploymentLog
    from tier3.streams.kafka.settings import KafkaSettings

    try:
        record = DeploymentLog(KafkaSettings(), settings.student_model).rollback(reason)
    except LookupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    serving = record["ollama_name"] or "the teacher"
    console.print(f"rolled back; now serving {serving}")


@settings_options(ReleaseSettings, ["ollama_name", *EVALUATION], flags={"schema_file": "--schema"})
def run_release(
    settings: ReleaseSettings,
    deploy_models: Annotated[
        bool, typer.Option("--deploy/--no-deploy", help="Deploy runs that pass the gate.")
    ] = True,
    ollama_host: HostOpt = None,
    group: Annotated[str, typer.Option(help="Consumer group id.")] = "tier3-release",
    max_runs: Annotated[int | None, typer.Option(help="Exit after this many runs.")] = None,
    metrics_port: MetricsPort = 0,
) -> None:
    """Evaluate every finished training run, gate it, and deploy it when it passes.

    Consumes TrainingCompleted from training-results; each run is evaluated once (a run that
    already has an EvalReport is skipped on redelivery or replay).
    """
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.trainers.release.consumer import Release, ReleaseConsumer

    serve_metrics(metrics_port)
    client = _ollama(ollama_host) if deploy_models else None
    release = Release(KafkaSettings(), LocalSettings(), settings, ollama_client=client)
    stage = ReleaseConsumer(release, group=group)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"release stage: evaluated {stage.run(stop, max_runs)} run(s)")


@settings_options(ReleaseSettings, ["student_model"], flags=MODEL)
def run_ab_guard(
    settings: ReleaseSettings,
    interval: Annotated[float, typer.Option(help="Seconds between comparisons.")] = 60.0,
    min_ratings: Annotated[int, typer.Option(help="Ratings per arm before testing.")] = 30,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    once: Annotated[bool, typer.Option("--once", help="Compare once and exit.")] = False,
    metrics_port: MetricsPort = 0,
) -> None:
    """Watch the A/B ratings; roll the student back when it is rated significantly worse.

    Compares user ratings of the student and teacher arms since the current deployment with a
    Mann-Whitney U test; rolls back when the student's mean is lower and p < --alpha.
    """
    from prometheus_client import Counter, Gauge
    from tier3.streams.backend.ab_test import guard_once
    from tier3.streams.kafka.settings import KafkaSettings

    checks = Gauge("tier3_ab_guard_last_check_seconds", "When the A/B ratings were last compared")
    rollbacks = Counter("tier3_ab_guard_rollbacks", "Rollbacks the A/B guard made")
    serve_metrics(metrics_port)
    kafka, model = KafkaSettings(), settings.student_model
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while True:
        result, rolled_back = guard_once(kafka, model, min_ratings=min_ratings, alpha=alpha)
        checks.set_to_current_time()
        if rolled_back:
            rollbacks.inc()
        console.print(("[red]ROLLED BACK[/red] " if rolled_back else "") + result.summary())
        if once or stop.wait(interval):
            return


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the evaluation and deployment commands to the ``tier3`` command line."""
    app.command("eval")(evaluate_cmd)
    app.command("export")(export_cmd)
    app.command("deploy")(deploy_cmd)
    app.command("rollback")(rollback_cmd)
    run_app.command("release")(run_release)
    run_app.command("ab-guard")(run_ab_guard)
