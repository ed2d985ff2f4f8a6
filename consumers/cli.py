"""``tier3 run capture``: run one member of the capture consumer group.

Registered through the ``tier3.commands`` entry point, so the streams layer's command line never
imports this package. Options override the ``TIER3_*`` environment (see ``CaptureSettings``).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import structlog
import typer
from pydantic import ValidationError

log = structlog.get_logger("tier3.capture")


def capture(
    group: Annotated[str | None, typer.Option(help="Consumer group id (env TIER3_GROUP).")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Most jobs in flight at once (env TIER3_CONCURRENCY).")
    ] = None,
    attempts: Annotated[
        int | None, typer.Option(help="Attempts before a dead letter (env TIER3_ATTEMPTS).")
    ] = None,
    shutdown_deadline: Annotated[
        float | None,
        typer.Option(help="Seconds to finish after SIGTERM (env TIER3_SHUTDOWN_DEADLINE_S)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus metrics port (env TIER3_METRICS_PORT).")
    ] = None,
) -> None:
    """Capture teacher and student traces for the jobs on capture-jobs.

    Each job asks the teacher (Claude with extended thinking, an OpenAI-compatible server, an
    Ollama model, or the offline reference rules) and the student (Ollama or an offline
    heuristic) at once, redacts personal data, stores the trace in object storage and produces
    it to the compacted traces topic. Offsets are committed only past jobs whose writes are
    confirmed. A job that keeps failing goes to capture-jobs.dlq. SIGTERM stops taking jobs and
    finishes the ones in flight. Providers, limits and redaction are set by TIER3_* variables
    (docs/capture.md).
    """
    from tier3.consumers.capture import CaptureConsumer
    from tier3.consumers.object_store import TraceStore
    from tier3.consumers.providers import build_student, build_teacher
    from tier3.consumers.redaction import Redactor
    from tier3.consumers.settings import CaptureSettings
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.streams.telemetry.metrics import serve_metrics

    overrides = {
        "group": group, "concurrency": concurrency, "attempts": attempts,
        "shutdown_deadline_s": shutdown_deadline, "metrics_port": metrics_port,
    }
    try:
        settings = CaptureSettings(**{k: v for k, v in overrides.items() if v is not None})
        redactor = (
            Redactor.configured(settings.redact_patterns, settings.redact_defaults)
            if settings.redact else None
        )
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: bad capture configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    if redactor is None:
        log.warning("redaction is OFF (TIER3_REDACT=false): traces keep personal data as given")
    serve_metrics(settings.metrics_port)
    kafka, local = KafkaSettings(), LocalSettings()
    worker = CaptureConsumer(
        kafka, settings, TraceStore(local.object_root),
        build_teacher(settings), build_student(settings), redactor,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    asyncio.run(main())


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 run capture`` to the command line."""
    run_app.command("capture")(capture)
