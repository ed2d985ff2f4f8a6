"""``tier3 groups ...``: list tier3's consumer groups, show their lag, reset or delete them.

Parse, call ``tier3.streams.ops.consumer_groups``, print: a table, or JSON with ``--json``. A reset
or a delete is a dry run unless ``--execute``, and saves the old offsets first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from tier3.streams.cli.output import JsonOpt, fail, out, print_json
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.ops.replay_window import parse_duration, parse_time

groups_app = typer.Typer(
    help="List tier3's consumer groups, show their lag, and reset their offsets (dry run first).",
    no_args_is_help=True,
)


def _groups() -> Any:
    from tier3.streams.ops.consumer_groups import ConsumerGroups

    return ConsumerGroups(KafkaSettings())


@groups_app.command("list")
def groups_list(
    include_all: Annotated[
        bool, typer.Option("--all", help="Also groups that read no topic with tier3's prefix.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the consumer groups that read this deployment's topics, with state and total lag."""
    summaries = _groups().list(include_all=include_all)
    if as_json:
        print_json([s.__dict__ for s in summaries])
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
            "-" if p.log_start is None else str(p.log_start),
            "-" if p.log_end is None else str(p.log_end),
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
    d = _groups().describe(group)
    if as_json:
        print_json(d.to_dict())
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
    groups = _groups()
    names = [group] if group else [s.group for s in groups.list()]
    descriptions = [groups.describe(name) for name in names]
    if as_json:
        data = [d.to_dict() for d in descriptions]
        print_json(data[0] if group else data)
        return
    for d in descriptions:
        _render_group(d)


@groups_app.command("export")
def groups_export(
    group: Annotated[str, typer.Argument(help="The consumer group id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file to write.")],
) -> None:
    """Write a group's committed offsets to a JSON file (restore with reset --from-file)."""
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
            raise fail("--from-file cannot be combined with another strategy", code=2)
        plan = groups.plan_from_file(group, from_file)
    else:
        if by_duration and to_datetime:
            raise fail("choose one of --to-datetime and --by-duration", code=2)
        when = parse_time(to_datetime, "--to-datetime") if to_datetime else None
        if by_duration:
            when = datetime.now(UTC) - parse_duration(by_duration, "--by-duration")
        plan = groups.plan_reset(
            group,
            topics=topic,
            to_earliest=to_earliest,
            to_latest=to_latest,
            to_datetime=when,
            shift_by=shift_by,
            to_offset=to_offset,
        )
    if execute:
        groups.execute(plan, backup_dir or LocalSettings().home / "offset-backups")
    if as_json:
        print_json(plan.to_dict())
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


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 groups`` to the command line."""
    app.add_typer(groups_app, name="groups")
