"""``tier3 run capture``: run one member of the capture consumer group.

Registered through the ``tier3.commands`` entry point, so the streams layer's command line never
imports this package. Each option is a field of ``CaptureSettings`` (its help, default and
``TIER3_*`` variable come from the field) and overrides the environment.
"""

from __future__ import annotations

import asyncio
import signal

import structlog
import typer
from tier3.consumers.settings import CaptureSettings
from tier3.streams.cli.settings_options import SettingsError, settings_options

log = structlog.get_logger("tier3.capture")


@settings_options(
    CaptureSettings,
    ["group", "concurrency", "attempts", "shutdown_deadline_s", "metrics_port"],
    flags={"shutdown_deadline_s": "--shutdown-deadline"},
)
def capture(settings: CaptureSettings) -> None:
    """Capture teacher and student traces for the jobs on capture-jobs.

    Each job asks the teacher (Claude with extended thinking, an OpenAI-compatible server, an
    Ollama model, or the offline reference rules) and the student (Ollama or an offline
    heuristic) at once, redacts personal data, stores the trace in object storage and produces
    it to the compacted traces topic. Offsets are committed only past jobs whose writes are
    confirmed. A job that keeps failing goes to capture-jobs.dlq. SIGTERM stops taking jobs and
    finishes the ones in flight. Providers, limits and redaction are set by TIER3_* variables
    (docs/capture.md); the task (its prompt, answer and offline rules) by TIER3_TASK
    (docs/tasks.md).
    """
    from tier3.consumers.capture import CaptureConsumer
    from tier3.consumers.object_store import TraceStore
    from tier3.consumers.providers import build_student, build_teacher
    from tier3.consumers.redaction import Redactor
    from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
    from tier3.streams.telemetry.metrics import serve_metrics
    from tier3.tasks.registry import TaskNotFound, configured_task

    try:
        task = configured_task()  # a misnamed task stops the start, not the first job
    except TaskNotFound as exc:
        raise SettingsError(str(exc)) from exc
    try:
        redactor = (
            Redactor.configured(settings.redact_patterns, settings.redact_defaults)
            if settings.redact else None
        )
    except ValueError as exc:
        raise SettingsError(f"bad redaction pattern (TIER3_REDACT_PATTERNS): {exc}") from exc
    if redactor is None:
        log.warning("redaction is OFF (TIER3_REDACT=false): traces keep personal data as given")
    serve_metrics(settings.metrics_port)
    kafka, local = KafkaSettings(), LocalSettings()
    worker = CaptureConsumer(
        kafka, settings, TraceStore(local.object_root),
        build_teacher(settings, task), build_student(settings, task), redactor, task,
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
