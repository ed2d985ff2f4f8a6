"""``tier3 run trainer`` and ``tier3 train``: the trainer's commands.

Registered through the ``tier3.commands`` entry point, so the streams layer's command line never
imports this package. The evaluation, export and deployment commands live in ``deploy_cli``
(another module of this package) and are registered from here when present.

``tier3 train`` is the seed's manual trigger. It reads the live traces, and when there are
enough (``TIER3_MIN_TRACES``) or ``--force`` is given, builds the same TrainingRequested the
counter would (same id for the same traces) and hands it to the same ``TrainingRun`` the
consumer uses, so a manual run and a triggered one differ only in who asked. ``--publish``
puts the request on training-requests for the trainer group instead of training here.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated

import typer
from rich.console import Console
from tier3.streams.telemetry.metrics import MetricsPort, serve_metrics

console = Console(stderr=True)


def run_trainer(
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
    crash resumes from its last checkpoint. Configure with TIER3_TRAIN_* (base model, LoRA,
    batch size, ...). SIGTERM/SIGINT stop it; an interrupted run resumes on the next start.
    """
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.streams.telemetry.logs import configure_logging
    from tier3.trainers.training.config import TrainerConfig
    from tier3.trainers.training.consumer import TrainerConsumer
    from tier3.trainers.training.run import TrainingRun

    configure_logging()
    serve_metrics(metrics_port)
    kafka = KafkaSettings()
    worker = TrainerConsumer(
        kafka, TrainingRun(kafka, LocalSettings(), TrainerConfig()), group=group
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    handled = worker.run(stop, max_requests)
    console.print(f"trainer stopped after {handled} request(s)")


def train(
    force: Annotated[
        bool, typer.Option("--force", help="Train even with fewer traces than TIER3_MIN_TRACES.")
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="Student model name (default TIER3_STUDENT_MODEL).")
    ] = None,
    publish: Annotated[
        bool,
        typer.Option("--publish", help="Put the request on training-requests; do not train here."),
    ] = False,
) -> None:
    """Train the student now on every live trace, if there are enough of them (or --force).

    Prints the result (TrainingCompleted or TrainingFailed) as JSON; exit code 1 on failure.
    """
    from tier3.schemas.registry import TRAINING_COMPLETED, TRAINING_REQUESTED
    from tier3.streams.kafka.events import EventProducer
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.streams.kafka.topics import TRAINING_REQUESTS
    from tier3.streams.processors.training_requests import MANUAL, training_request
    from tier3.trainers.training.config import TrainerConfig
    from tier3.trainers.training.run import TrainingRun
    from tier3.trainers.training.traces_source import read_traces

    kafka, config = KafkaSettings(), TrainerConfig()
    model = model or config.student_model
    traces = read_traces(kafka).traces
    query_ids = sorted(q for q, t in traces.items() if t.get("teacher_answer_valid", True))
    if len(query_ids) < config.min_traces and not force:
        console.print(
            f"{len(query_ids)} usable traces, fewer than TIER3_MIN_TRACES={config.min_traces}: "
            "not training (use --force to train anyway)"
        )
        return
    request = training_request(model, query_ids, MANUAL)
    if publish:
        EventProducer(kafka).send_and_wait(TRAINING_REQUESTS, TRAINING_REQUESTED, model, request)
        console.print(f"requested {request['request_id']} on {len(query_ids)} traces")
        return
    console.print(f"training {model} on {len(query_ids)} traces ({request['request_id']})")
    outcome = TrainingRun(kafka, LocalSettings(), config).handle(request)
    typer.echo(json.dumps({"event": outcome.event, **outcome.record}, indent=2))
    if outcome.event != TRAINING_COMPLETED:
        raise typer.Exit(1)


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the trainer's commands to the ``tier3`` command line."""
    run_app.command("trainer")(run_trainer)
    app.command("train")(train)
    try:
        from tier3.trainers.cli import release as deploy_cli
    except ImportError:
        return
    deploy_cli.register(app, run_app)
