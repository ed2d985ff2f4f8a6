"""``tier3 run sampler`` and ``tier3 run counter``: the stream processors as commands.

Each command runs one Faust worker in the foreground until SIGINT or SIGTERM, when it finishes
the events in hand, commits, and leaves its group. Start the same command again (here or on
another machine) to add a worker: the group shares the partitions. Settings come from the same
``TIER3_*`` environment as every tier3 process; the options override the processor's own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import structlog
import typer
from tier3.streams.telemetry.logs import configure_logging
from tier3.streams.telemetry.metrics import MetricsPort, serve_metrics

log = structlog.get_logger("tier3.processors")

Workdir = Annotated[
    Path | None,
    typer.Option(help="The worker's own folder (Faust's datadir); default: a temporary folder."),
]
SessionTimeout = Annotated[
    float,
    typer.Option(
        help="Seconds before the group gives a silent (crashed) worker's partitions to the others.",
        envvar="TIER3_SESSION_TIMEOUT_S",
    ),
]
FaustLogLevel = Annotated[
    str, typer.Option(help="Log level of Faust's own messages.", envvar="TIER3_FAUST_LOG_LEVEL")
]


def _run(
    role: str, workdir: Path | None, metrics_port: int, faust_log_level: str, build: object
) -> None:
    """Create the topics if missing, serve metrics, and run the worker built by ``build(dir)``."""
    from tier3.streams.kafka.events import codec_of
    from tier3.streams.kafka.settings import KafkaSettings
    from tier3.streams.kafka.topics import create_topics
    from tier3.streams.processors import faust_app

    configure_logging()
    settings = KafkaSettings()
    create_topics(settings)
    serve_metrics(metrics_port)
    with tempfile.TemporaryDirectory(prefix=f"tier3-{role}-") as scratch:
        folder = workdir or Path(scratch)
        app = build(settings, folder, codec_of(settings))  # type: ignore[operator]
        faust_app.create_internal_topics(app, settings)
        log.info("starting", role=role, group=app.conf.id, broker=settings.bootstrap_servers,
                 workdir=str(folder))
        faust_app.run_worker(app, faust_log_level)


def run_sampler(
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds an experience waits for its feedback"
            " (env TIER3_SAMPLING_TIMEOUT_S; default 600).",
            show_default=False,
        ),
    ] = None,
    dedupe_window: Annotated[
        float | None,
        typer.Option(
            help="Seconds a captured query is remembered against repeats"
            " (env TIER3_DEDUPE_WINDOW_S; default 3600).",
            show_default=False,
        ),
    ] = None,
    sample_rate: Annotated[
        float | None,
        typer.Option(
            help="Share captured at random, by query_id hash"
            " (env TIER3_SAMPLE_RATE; default 0.15).",
            show_default=False,
        ),
    ] = None,
    high_confidence: Annotated[
        float | None,
        typer.Option(
            help="Capture every answer at least this confident"
            " (env TIER3_HIGH_CONFIDENCE; default 0.9).",
            show_default=False,
        ),
    ] = None,
    workdir: Workdir = None,
    metrics_port: MetricsPort = 0,
    session_timeout: SessionTimeout = 30.0,
    faust_log_level: FaustLogLevel = "warning",
) -> None:
    """Join experiences with feedback and emit capture jobs for the queries the policy picks.

    The policy: a deterministic random share (hash of query_id) plus every high-confidence
    answer; ENABLE_TIER3_CAPTURE=false turns capture off. Jobs go to capture-jobs, one per chosen
    query, never twice. Bad events go to experiences.dlq and feedback.dlq.
    """
    from dataclasses import replace

    from tier3.streams.processors import sampler
    from tier3.streams.processors.sampling import PolicySettings

    policy = PolicySettings().policy()
    if sample_rate is not None:
        policy = replace(policy, random_rate=sample_rate)
    if high_confidence is not None:
        policy = replace(policy, high_confidence=high_confidence)
    env = sampler.SamplerSettings()
    config = sampler.SamplerConfig(
        policy=policy,
        timeout_s=env.sampling_timeout_s if timeout is None else timeout,
        dedupe_window_s=env.dedupe_window_s if dedupe_window is None else dedupe_window,
    )

    def build(settings, folder, codec):  # type: ignore[no-untyped-def]
        return sampler.build(settings, config, folder, codec, session_timeout_s=session_timeout)[0]

    _run(sampler.ROLE, workdir, metrics_port, faust_log_level, build)


def run_counter(
    min_traces: Annotated[
        int | None,
        typer.Option(
            help="New traces that trigger training"
            " (env TIER3_MIN_TRACES; default 100).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The student model to train"
            " (env TIER3_STUDENT_MODEL; default cc-widget-selector).",
            show_default=False,
        ),
    ] = None,
    workdir: Workdir = None,
    metrics_port: MetricsPort = 0,
    session_timeout: SessionTimeout = 30.0,
    faust_log_level: FaustLogLevel = "warning",
) -> None:
    """Count distinct new traces and request training each time min-traces more have come.

    A trace that is re-delivered or replayed counts once. Each request names its traces' query_ids
    and has a stable request id. Bad traces go to traces.dlq.
    """
    from tier3.streams.processors import counter

    env = counter.CounterSettings()
    config = counter.CounterConfig(
        min_traces=env.min_traces if min_traces is None else min_traces,
        model=env.student_model if model is None else model,
    )

    def build(settings, folder, codec):  # type: ignore[no-untyped-def]
        return counter.build(settings, config, folder, codec, session_timeout_s=session_timeout)[0]

    _run(counter.ROLE, workdir, metrics_port, faust_log_level, build)


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the stream processors under ``tier3 run``."""
    run_app.command("sampler")(run_sampler)
    run_app.command("counter")(run_counter)
