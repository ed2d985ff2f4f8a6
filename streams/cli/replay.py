"""``tier3 replay resample|recapture|dead-letters``: re-run a window of history.

Parse the window and the policy, call ``tier3.streams.ops.replay``, print what was read and
chosen. A dry run unless ``--execute``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from tier3.streams.cli.output import JsonOpt, console, out, print_json
from tier3.streams.cli.settings_options import settings_options
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS as CAPTURE_JOBS_TOPIC
from tier3.streams.kafka.topics import DLQ_SUFFIX
from tier3.streams.kafka.topics import EXPERIENCES as EXPERIENCES_TOPIC
from tier3.streams.processors.sampling import PolicySettings

replay_app = typer.Typer(
    help="Replay a window of history through the pipeline (dry run unless --execute).",
    no_args_is_help=True,
)

SinceOpt = Annotated[
    str | None,
    typer.Option(help="Window start, inclusive (ISO 8601, UTC unless an offset is given, or ms)."),
]
UntilOpt = Annotated[str | None, typer.Option(help="Window end, exclusive (same formats).")]
FromOffsetOpt = Annotated[int | None, typer.Option(help="First offset, inclusive.")]
ToOffsetOpt = Annotated[int | None, typer.Option(help="Last offset, exclusive.")]
PartitionOpt = Annotated[
    list[int] | None, typer.Option("--partition", "-p", help="Only this partition; repeatable.")
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        help="Send jobs to the topics of this prefix (created if missing) instead of "
        "the live capture-jobs topic."
    ),
]
ExecuteOpt = Annotated[
    bool, typer.Option("--execute", help="Send the jobs (default: dry run, show the counts).")
]
RateOpt = Annotated[float | None, typer.Option(help="At most this many jobs per second.")]
IncludeDeletedOpt = Annotated[
    bool,
    typer.Option(
        "--include-deleted",
        help="Also replay queries whose trace was deleted (default: leave them out).",
    ),
]


def _window(
    since: str | None,
    until: str | None,
    from_offset: int | None,
    to_offset: int | None,
    partition: list[int] | None,
) -> Any:
    from tier3.streams.ops.replay_window import Window, parse_time

    return Window(
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        from_offset=from_offset,
        to_offset=to_offset,
        partitions=tuple(partition) if partition else None,
    )


def _run_replay(
    action: str,
    window: Any,
    target_prefix: str | None,
    rate: float | None,
    as_json: bool,
    include_deleted: bool,
    run: Any,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from tier3.streams.ops.replay import Replayer, resolve

    replayer = Replayer(
        KafkaSettings(),
        target_prefix=target_prefix,
        rate=rate,
        respect_deletions=not include_deleted,
    )
    total = sum(
        r.size for r in resolve(replayer.admin, replayer.settings.topic(action), window)
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("reading window", total=total)
        report = run(replayer, lambda n: progress.advance(task, n))
    if as_json:
        print_json(report.to_dict())
        return
    table = Table("topic", "partition", "from offset", "to offset", "messages")
    for r in report.ranges:
        table.add_row(r.topic, str(r.partition), str(r.start), str(r.end), str(r.size))
    out.print(table)
    chosen = ", ".join(f"{k} {v}" for k, v in sorted(report.chosen.items())) or "none"
    out.print(
        f"read {report.read} ({report.undecodable} undecodable, {report.duplicates} "
        f"repeated, {report.skipped_deleted} deleted and {report.skipped_traced} already traced "
        f"queries left out); jobs: {chosen}; "
        f"target {report.target}"
    )
    if report.executed:
        out.print(f"sent {report.sent} jobs (replay id {report.replay_id})")
    else:
        out.print("dry run: nothing sent; add --execute to send")


@replay_app.command("resample")
@settings_options(PolicySettings, ["sample_rate", "high_confidence", "low_rating"], param="rules")
def replay_resample(
    rules: PolicySettings,
    since: SinceOpt = None,
    until: UntilOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    partition: PartitionOpt = None,
    feedback_grace: Annotated[
        float, typer.Option(help="Seconds after the window in which feedback still counts.")
    ] = 600.0,
    target_prefix: TargetOpt = None,
    execute: ExecuteOpt = False,
    rate: RateOpt = None,
    include_deleted: IncludeDeletedOpt = False,
    include_traced: Annotated[
        bool,
        typer.Option(
            "--include-traced",
            help="Also send queries that already have a trace (default: leave them).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Decide a window of experiences again with a new capture policy; send the chosen jobs.

    The policy's rules are the sampler's settings (TIER3_SAMPLE_RATE, ...) with the options on
    top. Sampling is a hash of the query_id, so the same policy makes the same choices; jobs are
    keyed by query_id, so replaying a window twice does not add a query twice.
    """
    policy = rules.policy()
    window = _window(since, until, from_offset, to_offset, partition)
    _run_replay(
        EXPERIENCES_TOPIC,
        window,
        target_prefix,
        rate,
        as_json,
        include_deleted,
        lambda r, progress: r.resample(
            window,
            policy,
            execute=execute,
            feedback_grace_s=feedback_grace,
            skip_traced=not include_traced,
            progress=progress,
        ),
    )


@replay_app.command("recapture")
def replay_recapture(
    since: SinceOpt = None,
    until: UntilOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    partition: PartitionOpt = None,
    target_prefix: TargetOpt = None,
    execute: ExecuteOpt = False,
    rate: RateOpt = None,
    include_deleted: IncludeDeletedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a window of capture jobs again (reason 'replay'), e.g. after changing the teacher
    prompt: the capture consumers overwrite each query's trace, they do not add a second one."""
    window = _window(since, until, from_offset, to_offset, partition)
    _run_replay(
        CAPTURE_JOBS_TOPIC,
        window,
        target_prefix,
        rate,
        as_json,
        include_deleted,
        lambda r, progress: r.recapture(window, execute=execute, progress=progress),
    )


@replay_app.command("dead-letters")
def replay_dead_letters(
    topic: Annotated[
        str, typer.Argument(help="The topic whose dead letters go back, e.g. capture-jobs.")
    ],
    since: SinceOpt = None,
    until: UntilOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    partition: PartitionOpt = None,
    include_undecodable: Annotated[
        bool,
        typer.Option(
            "--include-undecodable",
            help="Also send back letters that still do not decode (default: leave them).",
        ),
    ] = False,
    target_prefix: TargetOpt = None,
    execute: ExecuteOpt = False,
    rate: RateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a topic's dead letters back to it (original key and bytes), once their cause is
    fixed; by default only those that now decode as the topic's event."""
    window = _window(since, until, from_offset, to_offset, partition)
    _run_replay(
        topic + DLQ_SUFFIX,
        window,
        target_prefix,
        rate,
        as_json,
        False,
        lambda r, progress: r.dead_letters(
            topic,
            window,
            execute=execute,
            include_undecodable=include_undecodable,
            progress=progress,
        ),
    )


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 replay`` to the command line."""
    app.add_typer(replay_app, name="replay")
