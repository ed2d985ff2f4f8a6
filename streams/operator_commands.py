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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.table import Table
from tier3.streams.settings import KafkaSettings, LocalSettings

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


# -- groups -------------------------------------------------------------------------------------

groups_app = typer.Typer(
    help="List tier3's consumer groups, show their lag, and reset their offsets (dry run first).",
    no_args_is_help=True,
)


def _groups() -> Any:
    from tier3.streams.consumer_groups import ConsumerGroups

    return ConsumerGroups(KafkaSettings())


def _group_errors() -> Any:
    from tier3.streams.consumer_groups import GroupError

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
            "[default: <TIER3_HOME>/offset-backups]."
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
                (to_earliest, to_latest, to_datetime, shift_by is not None, to_offset is not None)
            ):
                raise _fail("--from-file cannot be combined with another strategy")
            plan = groups.plan_from_file(group, from_file)
        else:
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


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add the operators' commands to the ``tier3`` command line."""
    app.add_typer(groups_app, name="groups")
