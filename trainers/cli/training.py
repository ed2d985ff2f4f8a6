"""``tier3 run trainer`` and ``tier3 train``: the trainer's commands.

Registered through the ``tier3.commands`` entry point, so the streams layer's command line never
imports this package. The evaluation, export and deployment commands live in
``trainers.cli.release`` and are registered from here when present.

Every option of both commands is a field of ``TrainerSettings`` (``TIER3_TRAIN_*``): the field
gives the option its help, its variable and its default, and a flag overrides the variable.
``tier3 train`` is the seed's manual trigger: ``manual_request`` builds the same
TrainingRequested the counter would (same id for the same traces) and the same ``TrainingRun``
the consumer uses does it, so a manual run and a triggered one differ only in who asked.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated

import typer
from rich.console import Console
from tier3.streams.cli.settings_options import settings_options
from tier3.streams.telemetry.metrics import MetricsPort, serve_metrics
from tier3.trainers.training.settings import TrainerSettings

console = Console(stderr=True)

# What a run is trained with; ``sft`` (a JSON object of more SFTConfig arguments) is set by its
# variable, TIER3_TRAIN_SFT, only.
TRAINING_FIELDS = [
    name
    for name in TrainerSettings.model_fields
    if name not in ("student_model", "min_traces", "sft")
]


@settings_options(TrainerSettings, TRAINING_FIELDS)
def run_trainer(
    settings: TrainerSettings,
    group: Annotated[str, typer.Option(help="Consumer group id.")] = "tier3-trainer",
    max_requests: Annotated[
        int | None, typer.Option(help="Exit after this many requests (default: run until stopped).")
    ] = None,
    metrics_port: MetricsPort = 0,
) -> None:
    """Train the student on each request from training-requests, once per request id.

    While a run lasts (hours, on a GPU) the member pauses its partitions and keeps polling, so it
    stays in the group. The offset is committed only after TrainingCompleted or TrainingFailed
    is on training-results. A request already done is not trained again; one cut short by a
    crash resumes from its last checkpoint. SIGTERM/SIGINT stop it; an interrupted run resumes on
    the next start.
    """
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.streams.telemetry.logs import configure_logging
    from tier3.trainers.training.consumer import TrainerConsumer
    from tier3.trainers.training.run import TrainingRun

    configure_logging()
    serve_metrics(metrics_port)
    kafka = KafkaSettings()
    worker = TrainerConsumer(kafka, TrainingRun(kafka, LocalSettings(), settings), group=group)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    handled = worker.run(stop, max_requests)
    console.print(f"trainer stopped after {handled} request(s)")


@settings_options(
    TrainerSettings,
    ["student_model", "min_traces", *TRAINING_FIELDS],
    flags={"student_model": "--model"},
)
def train(
    settings: TrainerSettings,
    force: Annotated[
        bool, typer.Option("--force", help="Train even with fewer traces than TIER3_MIN_TRACES.")
    ] = False,
    publish: Annotated[
        bool,
        typer.Option("--publish", help="Put the request on training-requests; do not train here."),
    ] = False,
) -> None:
    """Train the student now on every live trace, if there are enough of them (or --force).

    Prints the result (TrainingCompleted or TrainingFailed) as JSON on stdout; exit code 1 on
    failure. With fewer usable traces than TIER3_MIN_TRACES (and no --force) it trains nothing,
    says why on stderr, prints nothing on stdout and exits 0: too few traces is the normal state
    between two thresholds, not a failure. A script reads the run from stdout, so empty stdout
    with exit 0 means "nothing trained".
    """
    from tier3.schemas.registry import TRAINING_COMPLETED
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.trainers.training.run import TrainingRun, manual_request, publish_request

    kafka = KafkaSettings()
    found = manual_request(kafka, settings, force)
    request, model, count = found.request, found.request["model"], found.request["trace_count"]
    if not found.enough:
        console.print(
            f"{count} usable traces, fewer than TIER3_MIN_TRACES={settings.min_traces}: "
            "not training (use --force to train anyway)"
        )
        return
    if publish:
        publish_request(kafka, request)
        console.print(f"requested {request['request_id']} on {count} traces")
        return
    console.print(f"training {model} on {count} traces ({request['request_id']})")
    outcome = TrainingRun(kafka, LocalSettings(), settings).handle(request)
    typer.echo(json.dumps({"event": outcome.event, **outcome.record}, indent=2))
    if outcome.event != TRAINING_COMPLETED:
        raise typer.Exit(1)


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the trainer's commands to the ``tier3`` command line."""
    run_app.command("trainer")(run_trainer)
    app.command("train")(train)
    try:
        from tier3.trainers.cli import release
    except ImportError:
        return
    release.register(app, run_app)
