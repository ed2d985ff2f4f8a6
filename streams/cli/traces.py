"""``tier3 traces delete``: forget queries' traces, through ``tier3.streams.ops.trace_deletion``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from tier3.streams.cli.output import JsonOpt, fail, out, print_json
from tier3.streams.kafka.settings import KafkaSettings

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
    from tier3.streams.ops.trace_deletion import delete_traces

    ids = list(query_id or [])
    if from_file is not None:
        try:
            ids += [line.strip() for line in from_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise fail(f"cannot read {from_file}: {exc}") from exc
    if not ids:
        raise fail("name the queries to delete with --query-id or --from-file")
    deletions = delete_traces(KafkaSettings(), ids)
    if as_json:
        print_json([d.to_dict() for d in deletions])
        return
    for d in deletions:
        where = "found" if d.found_on_topic else "no live trace"
        obj = f"object deleted ({d.object_uri})" if d.object_deleted else "no object to delete"
        out.print(f"{d.query_id}: {where}; {obj}; tombstone written", highlight=False)


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 traces`` to the command line."""
    app.add_typer(traces_app, name="traces")
