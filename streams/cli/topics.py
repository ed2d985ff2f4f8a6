"""``tier3 topics create|describe``: create tier3's topics, check them for drift."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from tier3.streams.cli.output import out
from tier3.streams.kafka.settings import KafkaSettings

topics_app = typer.Typer(help="Create and check tier3's topics.", no_args_is_help=True)


@topics_app.command("create")
def topics_create() -> None:
    """Create every tier3 topic that is missing, with the design's configuration (idempotent)."""
    from tier3.streams.kafka.topics import create_topics

    settings = KafkaSettings()
    for name, outcome in create_topics(settings).items():
        out.print(f"{outcome:8} {name}")


@topics_app.command("describe")
def topics_describe(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show every tier3 topic as read back from the broker; exit 4 if any drifts from the design."""
    from tier3.streams.kafka.topics import describe_topics

    reports = describe_topics(KafkaSettings())
    if as_json:
        out.print_json(json.dumps([{**r.__dict__, "ok": r.ok} for r in reports]))
    else:
        table = Table("topic", "partitions", "cleanup.policy", "status", "purpose")
        for r in reports:
            status = "[green]ok[/]" if r.ok else "[red]" + "; ".join(r.drift) + "[/]"
            table.add_row(
                r.name,
                str(r.partitions or "-"),
                r.config.get("cleanup.policy", "-"),
                status,
                r.purpose,
            )
        out.print(table)
    if not all(r.ok for r in reports):
        raise typer.Exit(4)


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 topics`` to the command line."""
    app.add_typer(topics_app, name="topics")
