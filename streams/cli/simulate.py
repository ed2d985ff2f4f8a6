"""``tier3 simulate``: publish synthetic widget-selection traffic, as a backend would."""

from __future__ import annotations

from typing import Annotated

import typer
from tier3.streams.cli.output import console, out


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


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 simulate`` to the command line."""
    app.command("simulate")(simulate_cmd)
