"""The operators' commands: ``tier3 replay``, ``tier3 groups ...``, ``tier3 status``,
``tier3 traces delete`` and ``tier3 broker start-sasl``.

Registered through the ``tier3.commands`` entry point, like every layer's commands. Each command
is a thin shell over a module that does the work (``replay``, ``consumer_groups``, ``status``,
``trace_deletion``): the module returns plain data, the command renders it as a table for people
or as JSON (``--json``) for scripts. Anything that changes state is a dry run unless asked to
``--execute`` (except ``traces delete``, whose whole point is to act, and which says what it did).
Errors are one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.table import Table
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS as CAPTURE_JOBS_TOPIC
from tier3.streams.kafka.topics import DLQ_SUFFIX
from tier3.streams.kafka.topics import EXPERIENCES as EXPERIENCES_TOPIC

console = Console(stderr=True)
out = Console()

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _print_json(data: Any) -> None:
    # Plain print, not rich: JSON for scripts must not be wrapped or coloured.
    print(json.dumps(data, indent=2, default=str))


@contextmanager
def _operator_errors(*expected: type[Exception]) -> Iterator[None]:
    """Turn the errors an operator can act on into one line and exit code 1."""
    try:
        yield
    except (KafkaException, ValueError, *expected) as exc:
        raise _fail(str(exc)) from exc


def _parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-01-01T12:00``, ``...Z``, with an offset) or milliseconds since the epoch."""
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO 8601 datetime nor milliseconds since the epoch"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive means UTC


def _parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, or an ISO 8601 duration such as ``PT1H30M`` / ``P1D``."""
    simple = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if simple:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[simple.group(2)]
        return timedelta(**{unit: int(simple.group(1))})
    iso = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text.strip())
    if iso and any(iso.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise typer.BadParameter(f"{text!r} is not a duration such as 15m, 2h, 1d or PT1H30M")


# -- groups -------------------------------------------------------------------------------------

groups_app = typer.Typer(
    help="List tier3's consumer groups, show their lag, and reset their offsets (dry run first).",
    no_args_is_help=True,
)


def _groups() -> Any:
    from tier3.streams.ops.consumer_groups import ConsumerGroups

    return ConsumerGroups(KafkaSettings())


def _group_errors() -> Any:
    from tier3.streams.ops.consumer_groups import GroupError

    return _operator_errors(GroupError)


@groups_app.command("list")
def groups_list(
    include_all: Annotated[
        bool, typer.Option("--all", help="Also groups that read no topic with tier3's prefix.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the consumer groups that read this deployment's topics, with state and total lag."""
    with _group_errors():
        summaries = _groups().list(include_all=include_all)
    if as_json:
        _print_json([s.__dict__ for s in summaries])
        return
    table = Table("group", "state", "members", "lag", "topics")
    for s in summaries:
        table.add_row(s.group, s.state, str(s.members), str(s.lag), ", ".join(s.topics))
    out.print(table)


def _render_group(d: Any) -> None:
    out.print(f"group [bold]{d.group}[/]  state {d.state}  members {len(d.members)}  lag {d.lag}")
    table = Table("topic", "partition", "committed", "log start", "log end", "lag", "member")
    for p in d.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        table.add_row(
            p.topic,
            str(p.partition),
            committed,
            str(p.log_start),
            str(p.log_end),
            str(p.lag),
            p.member or "-",
        )
    out.print(table)


@groups_app.command("describe")
def groups_describe(
    group: Annotated[str, typer.Argument(help="The consumer group id.")],
    as_json: JsonOpt = False,
) -> None:
    """One group in full: state, members and their partitions, committed offsets and lag."""
    with _group_errors():
        d = _groups().describe(group)
    if as_json:
        _print_json(d.to_dict())
        return
    _render_group(d)
    for m in d.members:
        out.print(f"  member {m['client_id']} ({m['host']}): {', '.join(m['partitions']) or '-'}")


@groups_app.command("lag")
def groups_lag(
    group: Annotated[
        str | None, typer.Argument(help="One group (default: all of tier3's).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Lag per partition: log end offset minus committed offset (like kafka-consumer-groups)."""
    with _group_errors():
        groups = _groups()
        names = [group] if group else [s.group for s in groups.list()]
        descriptions = [groups.describe(name) for name in names]
    if as_json:
        data = [d.to_dict() for d in descriptions]
        _print_json(data[0] if group else data)
        return
    for d in descriptions:
        _render_group(d)


@groups_app.command("export")
def groups_export(
    group: Annotated[str, typer.Argument(help="The consumer group id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file to write.")],
) -> None:
    """Write a group's committed offsets to a JSON file (restore with reset --from-file)."""
    with _group_errors():
        path = _groups().export(group, output)
    out.print(str(path))


@groups_app.command("reset")
def groups_reset(
    group: Annotated[str, typer.Argument(help="The consumer group id.")],
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            "-t",
            help="Topic (design or full name); repeatable. "
            "Default: every topic the group has offsets on.",
        ),
    ] = None,
    to_earliest: Annotated[bool, typer.Option(help="Move to the oldest retained message.")] = False,
    to_latest: Annotated[bool, typer.Option(help="Move to the end (skip the backlog).")] = False,
    to_datetime: Annotated[
        str | None,
        typer.Option(
            help="Move to the first message at or after this time (ISO 8601, UTC if "
            "no offset given, or ms since the epoch)."
        ),
    ] = None,
    shift_by: Annotated[
        int | None, typer.Option(help="Move by N (negative: back), clamped to the log.")
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option(help="Move every partition to this offset.")
    ] = None,
    by_duration: Annotated[
        str | None,
        typer.Option(
            help="Move to where the log was this long ago: 90s, 15m, 2h, 1d or ISO 8601 "
            "(PT1H30M, P1D)."
        ),
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option(help="Put back the offsets of a backup/export file (undo).")
    ] = None,
    execute: Annotated[
        bool, typer.Option("--execute", help="Apply the reset (default: dry run, show the plan).")
    ] = False,
    backup_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the old offsets are saved before a reset "
            "(default: $TIER3_HOME/offset-backups)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Reset a group's offsets. Dry run unless --execute; refused while the group has members.

    The old offsets are saved to a JSON file before anything changes; `tier3 groups reset GROUP
    --from-file FILE --execute` puts them back.
    """
    with _group_errors():
        groups = _groups()
        if from_file is not None:
            if any(
                (
                    to_earliest,
                    to_latest,
                    to_datetime,
                    by_duration,
                    shift_by is not None,
                    to_offset is not None,
                )
            ):
                raise _fail("--from-file cannot be combined with another strategy")
            plan = groups.plan_from_file(group, from_file)
        else:
            if by_duration and to_datetime:
                raise _fail("choose one of --to-datetime and --by-duration")
            if by_duration:
                to_datetime = (datetime.now(UTC) - _parse_duration(by_duration)).isoformat()
            plan = groups.plan_reset(
                group,
                topics=topic,
                to_earliest=to_earliest,
                to_latest=to_latest,
                to_datetime=_parse_time(to_datetime) if to_datetime else None,
                shift_by=shift_by,
                to_offset=to_offset,
            )
        if execute:
            groups.execute(plan, backup_dir or LocalSettings().home / "offset-backups")
    if as_json:
        _print_json(plan.to_dict())
        return
    table = Table("topic", "partition", "current", "new", "log start", "log end")
    for m in plan.moves:
        current = "-" if m.current is None else str(m.current)
        table.add_row(
            m.topic, str(m.partition), current, str(m.target), str(m.log_start), str(m.log_end)
        )
    out.print(table)
    if plan.executed:
        out.print(f"reset done ({plan.strategy}); old offsets saved to {plan.backup}")
        out.print(f"undo: tier3 groups reset {group} --from-file {plan.backup} --execute")
    else:
        out.print("dry run: nothing changed; add --execute to apply")


@groups_app.command("delete")
def groups_delete(
    group: Annotated[str, typer.Argument(help="The consumer group id.")],
    execute: Annotated[
        bool, typer.Option("--execute", help="Delete it (default: dry run, show its offsets).")
    ] = False,
    backup_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where its offsets are saved first (default: $TIER3_HOME/offset-backups)."
        ),
    ] = None,
) -> None:
    """Delete an inactive group and its offsets (saved first; reset --from-file restores them).
    Refused while the group has members."""
    with _group_errors():
        groups = _groups()
        committed = groups.committed(group)
        if not execute:
            out.print(
                f"group {group} has {len(committed)} committed offset(s); "
                "dry run: nothing deleted; add --execute to delete it"
            )
            return
        backup = groups.delete(group, backup_dir or LocalSettings().home / "offset-backups")
    out.print(f"group {group} deleted; its offsets were saved to {backup}")
    out.print(f"undo: tier3 groups reset {group} --from-file {backup} --execute")


# -- replay -------------------------------------------------------------------------------------

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
    from tier3.streams.ops.replay import Window

    return Window(
        since=_parse_time(since) if since else None,
        until=_parse_time(until) if until else None,
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
    from tier3.streams.kafka.offsets import RangeReadError
    from tier3.streams.ops.replay import Replayer, ReplayError, resolve

    with _operator_errors(ReplayError, RangeReadError, LookupError):
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
        _print_json(report.to_dict())
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
def replay_resample(
    since: SinceOpt = None,
    until: UntilOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    partition: PartitionOpt = None,
    sample_rate: Annotated[
        float | None, typer.Option(help="New random share (default: $TIER3_SAMPLE_RATE).")
    ] = None,
    high_confidence: Annotated[
        float | None,
        typer.Option(
            help="New confidence threshold, negative for off (default: $TIER3_HIGH_CONFIDENCE)."
        ),
    ] = None,
    low_rating: Annotated[
        int | None,
        typer.Option(
            help="Also capture answers rated at most this, 0 for off (default: $TIER3_LOW_RATING)."
        ),
    ] = None,
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

    Sampling is a hash of the query_id, so the same policy makes the same choices; jobs are keyed
    by query_id, so replaying a window twice does not add a query twice.
    """
    from dataclasses import replace

    from tier3.streams.processors.sampling import PolicySettings

    policy = PolicySettings().policy()
    if sample_rate is not None:
        policy = replace(policy, random_rate=sample_rate)
    if high_confidence is not None:
        policy = replace(policy, high_confidence=high_confidence if high_confidence >= 0 else None)
    if low_rating is not None:
        policy = replace(policy, low_rating=low_rating or None)
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


# -- status -------------------------------------------------------------------------------------


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status(
    as_json: JsonOpt = False,
) -> None:
    """One screen: broker, topics and sizes, groups and lag, traces since the last training,
    and the last training, evaluation and deployment. Exit code 3 when the broker is down."""
    from tier3.streams.ops.status import collect

    s = collect(KafkaSettings())
    if as_json:
        _print_json(s.to_dict())
    else:
        _render_status(s)
    if not s.broker_up:
        raise typer.Exit(3)


def _render_status(s: Any) -> None:
    if not s.broker_up:
        out.print(f"broker  [red]not reachable[/] at {s.bootstrap}")
        for error in s.errors:
            out.print(f"  {error}", highlight=False)
        return
    out.print(f"broker  [green]up[/] at {s.bootstrap} ({s.brokers} broker(s))")
    topics = Table("topic", "partitions", "messages", title="topics", title_justify="left")
    for t in s.topics:
        if t.exists:
            # Dead letters want an operator's eye: say so in colour.
            alarm = t.name.endswith(DLQ_SUFFIX) and t.messages
            count = f"[red]{t.messages}[/]" if alarm else str(t.messages)
            topics.add_row(t.name, str(t.partitions), count)
        else:
            topics.add_row(t.name, "[red]missing[/]", "-")
    out.print(topics)
    groups = Table(
        "group", "state", "members", "lag", title="consumer groups", title_justify="left"
    )
    for g in s.groups:
        groups.add_row(g["group"], g["state"], str(g["members"]), str(g["lag"]))
    out.print(groups if s.groups else "consumer groups: none yet")
    request = s.last_request
    if request:
        out.print(
            f"last training request  {request['request_id']} for {request['model']} "
            f"({request['trace_count']} traces, {request['trigger']}) at "
            f"{_when(request['requested_at'])}"
        )
    else:
        out.print("last training request  none yet")
    out.print(f"traces since then      {s.traces_since_last_request}")
    training = s.last_training
    if training is None:
        out.print("last training          none yet")
    elif training["event"] == "TrainingFailed":
        out.print(
            f"last training          [red]failed[/] at {_when(training['failed_at'])} "
            f"in {training['stage']}: {training['reason']}"
        )
    else:
        out.print(
            f"last training          [green]completed[/] at {_when(training['completed_at'])}"
            f" ({training['train_examples']} train / {training['eval_examples']} eval)"
        )
    ev = s.last_eval
    if ev:
        verdict = "[green]passed[/]" if ev["passed"] else "[red]failed[/]"
        out.print(
            f"last evaluation        {verdict} at {_when(ev['created_at'])}: JSON valid "
            f"{ev['json_validity_rate']:.0%}, selection agreement "
            f"{ev['selection_agreement']:.0%} on {ev['examples']} examples"
        )
    else:
        out.print("last evaluation        none yet")
    dep = s.last_deployment
    if dep:
        out.print(
            f"last deployment        {dep['action']} {dep['ollama_name']} "
            f"({dep['quantization']}) at {_when(dep['deployed_at'])}"
        )
    else:
        out.print("last deployment        none yet")
    for error in s.errors:
        out.print(f"[yellow]warning:[/] {error}", highlight=False)


# -- traces -------------------------------------------------------------------------------------

traces_app = typer.Typer(help="Operate on captured traces.", no_args_is_help=True)


@traces_app.command("delete")
def traces_delete(
    query_id: Annotated[
        list[str] | None, typer.Option("--query-id", "-q", help="The query to forget; repeatable.")
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option(help="A file of query_ids, one per line.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete queries' traces everywhere: the object in storage, then a tombstone on the
    compacted traces topic, so the next dataset leaves them out. Safe to run again."""
    from tier3.streams.kafka.offsets import RangeReadError
    from tier3.streams.ops.trace_deletion import DeletionError, delete_traces

    ids = list(query_id or [])
    if from_file is not None:
        try:
            ids += [line.strip() for line in from_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise _fail(f"cannot read {from_file}: {exc}") from exc
    if not ids:
        raise _fail("name the queries to delete with --query-id or --from-file")
    with _operator_errors(DeletionError, RangeReadError, LookupError):
        deletions = delete_traces(KafkaSettings(), ids)
    if as_json:
        _print_json([d.to_dict() for d in deletions])
        return
    for d in deletions:
        where = "found" if d.found_on_topic else "no live trace"
        obj = f"object deleted ({d.object_uri})" if d.object_deleted else "no object to delete"
        out.print(f"{d.query_id}: {where}; {obj}; tombstone written", highlight=False)


# -- broker start-sasl --------------------------------------------------------------------------


def _secret(value: str | None, file: Path | None, what: str) -> str:
    if value:
        return value
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise _fail(f"cannot read the {what} from {file}: {exc}") from exc
    raise _fail(f"no {what}: set it in the environment or give a file")


def broker_start_sasl(
    home: Annotated[
        Path | None, typer.Option(help="Local state folder (default: $TIER3_HOME or .tier3).")
    ] = None,
    port: Annotated[
        int, typer.Option(help="Client (SASL) port on 127.0.0.1.", envvar="TIER3_BROKER_PORT")
    ] = 9092,
    admin_password: Annotated[
        str | None,
        typer.Option(
            envvar="TIER3_BROKER_ADMIN_PASSWORD",
            show_default=False,
            help="The broker's own super user's password (env only: never type it).",
        ),
    ] = None,
    admin_password_file: Annotated[
        Path | None,
        typer.Option(envvar="TIER3_BROKER_ADMIN_PASSWORD_FILE", help="File holding it."),
    ] = None,
) -> None:
    """Start the local broker with SASL/SCRAM-SHA-512 on its client listener.

    The application user is TIER3_SASL_USERNAME with TIER3_SASL_PASSWORD(_FILE), the same
    variables every tier3 client reads, so the broker and the clients agree by construction.
    Users are written when the broker's storage is first formatted: start a new --home to change
    them. Clients then need TIER3_SECURITY_PROTOCOL=SASL_PLAINTEXT.
    """
    from tier3.streams.local.kafka_broker import BrokerError, LocalBroker
    from tier3.streams.local.sasl_broker import ScramUser, sasl_server_config

    admin = _secret(admin_password, admin_password_file, "broker admin password")
    client = KafkaSettings()
    password = client.password()
    if not client.sasl_username or password is None:
        raise _fail(
            "set TIER3_SASL_USERNAME and TIER3_SASL_PASSWORD (or _FILE) for the application user"
        )
    with _operator_errors(BrokerError):
        user = ScramUser(client.sasl_username, password.get_secret_value())
        broker = LocalBroker(
            home=home or LocalSettings().home,
            port=port,
            extra_config=sasl_server_config(port, port + 1, admin, [user]),
        )
        console.print(f"starting Kafka with SASL/SCRAM in {broker.root} ...")
        bootstrap = broker.start()
    out.print(bootstrap)
    console.print(
        f"clients: TIER3_BOOTSTRAP_SERVERS={bootstrap} "
        "TIER3_SECURITY_PROTOCOL=SASL_PLAINTEXT "
        f"TIER3_SASL_USERNAME={user.name} TIER3_SASL_PASSWORD_FILE=<file>",
        highlight=False,
    )


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the operators' commands to the ``tier3`` command line."""
    app.add_typer(groups_app, name="groups")
    app.add_typer(replay_app, name="replay")
    app.command("status")(_status)
    app.add_typer(traces_app, name="traces")
    from tier3.streams.cli.main import broker_app  # the group exists already: the CLI is calling us

    broker_app.command("start-sasl")(broker_start_sasl)
