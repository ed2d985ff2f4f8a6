"""``tier3 run sampler`` and ``tier3 run counter``: the stream processors as commands.

Each command runs one Faust worker in the foreground until SIGINT or SIGTERM, when it finishes
the events in hand, commits, and leaves its group. Start the same command again (here or on
another machine) to add a worker: the group shares the partitions. Settings come from the same
``TIER3_*`` environment as every tier3 process; each option is a field of the processor's one
settings class (``SamplerSettings``, ``CounterSettings``), which also gives its help and default.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import structlog
import typer
from tier3.streams.cli.settings_options import settings_options
from tier3.streams.processors.settings import CounterSettings, SamplerSettings, WorkerSettings
from tier3.streams.telemetry.logs import configure_logging
from tier3.streams.telemetry.metrics import serve_metrics

log = structlog.get_logger("tier3.processors")

Workdir = Annotated[
    Path | None,
    typer.Option(help="The worker's own folder (Faust's datadir); default: a temporary folder."),
]
WORKER_FIELDS = ("session_timeout_s", "faust_log_level", "metrics_port")
WORKER_FLAGS = {"session_timeout_s": "--session-timeout"}


def _run(role: str, workdir: Path | None, worker: WorkerSettings, build: object) -> None:
    """Create the topics if missing, serve metrics, and run the worker built by ``build(dir)``."""
    from tier3.streams.kafka.events import codec_of
    from tier3.streams.kafka.settings import KafkaSettings
    from tier3.streams.kafka.topics import create_topics
    from tier3.streams.processors import faust_app

    configure_logging()
    settings = KafkaSettings()
    create_topics(settings)
    serve_metrics(worker.metrics_port)
    with tempfile.TemporaryDirectory(prefix=f"tier3-{role}-") as scratch:
        folder = workdir or Path(scratch)
        app = build(settings, folder, codec_of(settings))  # type: ignore[operator]
        faust_app.create_internal_topics(app, settings)
        log.info("starting", role=role, group=app.conf.id, broker=settings.bootstrap_servers,
                 workdir=str(folder))
        faust_app.run_worker(app, worker.faust_log_level)


@settings_options(
    SamplerSettings,
    ["sampling_timeout_s", "dedupe_window_s", "sample_rate", "high_confidence", *WORKER_FIELDS],
    flags={"sampling_timeout_s": "--timeout", "dedupe_window_s": "--dedupe-window", **WORKER_FLAGS},
)
def run_sampler(settings: SamplerSettings, workdir: Workdir = None) -> None:
    """Join experiences with feedback and emit capture jobs for the queries the policy picks.

    The policy: a deterministic random share (hash of query_id) plus every high-confidence
    answer; ENABLE_TIER3_CAPTURE=false turns capture off. Jobs go to capture-jobs, one per chosen
    query, never twice. Bad events go to experiences.dlq and feedback.dlq.
    """
    from tier3.streams.processors import sampler

    def build(kafka, folder, codec):  # type: ignore[no-untyped-def]
        return sampler.build(kafka, settings, folder, codec)[0]

    _run(sampler.ROLE, workdir, settings, build)


@settings_options(
    CounterSettings,
    ["min_traces", "student_model", *WORKER_FIELDS],
    flags={"student_model": "--model", **WORKER_FLAGS},
)
def run_counter(settings: CounterSettings, workdir: Workdir = None) -> None:
    """Count distinct new traces and request training each time min-traces more have come.

    A trace that is re-delivered or replayed counts once. Each request names its traces' query_ids
    and has a stable request id. Bad traces go to traces.dlq.
    """
    from tier3.streams.processors import counter

    def build(kafka, folder, codec):  # type: ignore[no-untyped-def]
        return counter.build(kafka, settings, folder, codec)[0]

    _run(counter.ROLE, workdir, settings, build)


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the stream processors under ``tier3 run``."""
    run_app.command("sampler")(run_sampler)
    run_app.command("counter")(run_counter)
