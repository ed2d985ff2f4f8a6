"""The ``tier3`` command line: the app, its command groups, and how they are found.

One module per command group (``topics``, ``broker``, ``groups``, ``replay``, ``status``,
``traces``, ``simulate``, ``processors``), each of which parses, calls the domain module that does
the work, and prints. The capture consumers and the trainer add their own commands through the
``tier3.commands`` entry-point group, so this module never imports the packages above it
(``consumers``, ``trainers``) and each stays installable on its own.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer
from tier3.streams.cli import broker, groups, replay, simulate, status, topics, traces
from tier3.streams.cli.output import fail
from tier3.streams.telemetry.logs import configure_logging

app = typer.Typer(
    name="tier3",
    help="Turn live LLM traffic into a better, cheaper local model, over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
run_app = typer.Typer(
    help="Run a pipeline stage (a long-running consumer group member).", no_args_is_help=True
)

# The streams layer's own command groups, in the order ``tier3 --help`` lists them.
_BUILT_IN = (broker, topics, simulate, groups, replay, status, traces)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="Log level.", envvar="TIER3_LOG_LEVEL")] = "INFO",
) -> None:
    configure_logging(log_level)


def _load_plugins() -> None:
    """Register every command: the built-in groups, then those found by entry point."""
    if getattr(app, "_tier3_loaded", False):
        return
    app._tier3_loaded = True  # type: ignore[attr-defined]
    for module in _BUILT_IN:
        module.register(app, run_app)
    app.add_typer(run_app, name="run")
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
