"""``tier3 status``: one screen of the deployment, from ``tier3.streams.ops.status``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table
from tier3.streams.cli.output import JsonOpt, out, print_json
from tier3.streams.kafka.errors import AUTHENTICATION
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import DLQ_SUFFIX


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status(
    as_json: JsonOpt = False,
) -> None:
    """One screen: broker, topics and sizes, groups and lag, traces since the last training,
    and the last training, evaluation and deployment. Exit code 3 when the broker is down, 5 when
    it refuses the credentials."""
    from tier3.streams.ops.status import collect

    s = collect(KafkaSettings())
    if as_json:
        print_json(s.to_dict())
    else:
        _render_status(s)
    if not s.broker_up:
        raise typer.Exit(s.exit_code)


def _render_status(s: Any) -> None:
    if not s.broker_up:
        what = "authentication failed" if s.exit_code == AUTHENTICATION else "not reachable"
        out.print(f"broker  [red]{what}[/] at {s.bootstrap}")
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


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 status`` to the command line."""
    app.command("status")(_status)
