"""The ``tier3`` command line.

The streams layer owns the command line; the capture consumers and the trainer add their own
commands through the ``tier3.commands`` entry-point group, so this module never imports the
packages above it (``consumers``, ``trainers``) and each stays installable on its own.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.local.kafka_broker import BrokerError, LocalBroker
from tier3.streams.telemetry.logs import configure_logging

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    name="tier3",
    help="Turn live LLM traffic into a better, cheaper local model, over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
broker_app = typer.Typer(
    help="Run a local single-node Kafka broker (KRaft) for development and tests.",
    no_args_is_help=True,
)
topics_app = typer.Typer(help="Create and check tier3's topics.", no_args_is_help=True)
run_app = typer.Typer(
    help="Run a pipeline stage (a long-running consumer group member).", no_args_is_help=True
)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(run_app, name="run")

HomeOpt = Annotated[
    Path | None, typer.Option(help="Local state folder [env: TIER3_HOME; default .tier3].")
]
PortOpt = Annotated[
    int,
    typer.Option(
        help="Broker port on 127.0.0.1 [env: TIER3_BROKER_PORT].", envvar="TIER3_BROKER_PORT"
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def local_broker(home: Path | None, port: int) -> LocalBroker:
    return LocalBroker(home=home or LocalSettings().home, port=port)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="Log level.", envvar="TIER3_LOG_LEVEL")] = "INFO",
) -> None:
    configure_logging(log_level)


# -- broker -------------------------------------------------------------------------------------


@broker_app.command("start")
def broker_start(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Start the local broker (idempotent); wait until it answers; print its bootstrap address."""
    broker = local_broker(home, port)
    try:
        if broker.is_running():
            console.print(f"broker already running (pid {broker.pid()})")
        else:
            console.print(f"starting Kafka in {broker.root} ...")
        bootstrap = broker.start()
    except BrokerError as exc:
        raise fail(str(exc)) from exc
    out.print(bootstrap)


@broker_app.command("stop")
def broker_stop(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Stop the local broker cleanly."""
    stopped = local_broker(home, port).stop()
    console.print("broker stopped" if stopped else "broker was not running")


@broker_app.command("status")
def broker_status(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Say whether the local broker runs (exit code 0) or not (exit code 3)."""
    broker = local_broker(home, port)
    if broker.is_running():
        out.print(f"running (pid {broker.pid()}) at {broker.bootstrap}, data in {broker.root}")
        return
    out.print("not running")
    raise typer.Exit(3)


# -- topics -------------------------------------------------------------------------------------


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


# -- traffic ------------------------------------------------------------------------------------


@app.command("simulate")
def simulate_cmd(
    events: Annotated[int, typer.Option("--events", "-n", help="Experiences to publish.")] = 1000,
    rate: Annotated[
        float | None, typer.Option(help="Events per second (default: as fast as possible).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed gives the same events.")
    ] = 0,
) -> None:
    """Publish synthetic widget-selection traffic (experiences, delayed feedback), as a backend."""
    from rich.progress import Progress
    from tier3.streams.backend.publisher import Publisher
    from tier3.streams.demo.simulate import run_simulation

    publisher = Publisher(enabled=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("publishing", total=None)
        counts = run_simulation(
            publisher, events, seed, rate, on_event=lambda _: progress.advance(task)
        )
    undelivered = publisher.close()
    out.print(
        f"published {counts['Experience']} experiences and {counts['Feedback']} feedback events "
        f"(seed {seed}); dropped {counts['dropped']}, undelivered {undelivered}"
    )
    if undelivered or counts["dropped"]:
        raise typer.Exit(1)


def _load_plugins() -> None:
    """Commands of the packages above streams (consumers, trainers), found by entry point."""
    for ep in entry_points(group="tier3.commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # an extra that is not installed: say so only when asked
            missing = exc.name or str(exc)

            def _missing(name: str = ep.name, why: str = missing) -> None:
                raise fail(
                    f"`{name}` needs an optional dependency that is not installed ({why}); "
                    "install tier3 with its extra, e.g. pip install 'tier3[all]'"
                )

            run_app.command(ep.name, help=f"(unavailable: {missing} not installed)")(_missing)
            continue
        register(app, run_app)


def main() -> None:
    _load_plugins()
    app()
