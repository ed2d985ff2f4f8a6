"""The ``tier3`` command line: the app, its command groups, and how they are found.

One module per command group (``topics``, ``broker``, ``groups``, ``replay``, ``status``,
``traces``, ``simulate``, ``processors``), each of which parses, calls the domain module that does
the work, and prints. The capture consumers and the trainer add their own commands through the
``tier3.commands`` entry-point group, so this module never imports the packages above it
(``consumers``, ``trainers``) and each stays installable on its own.

**One error path.** No command catches broker, network or credential errors itself: ``main``
turns whatever a command raises into one line on stderr that names the cause and the setting to
check, and the exit code of that cause (``tier3.streams.kafka.errors``: 2 bad usage, 3 broker
unreachable, 5 authentication failed, 6 not authorized, 7 topic missing, 1 anything else the
operator can act on). A traceback is printed only for a bug, or with ``--log-level DEBUG``.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points
from typing import Annotated

import typer
from tier3.streams.cli import broker, groups, replay, simulate, status, topics, traces
from tier3.streams.cli.output import fail, say_error
from tier3.streams.kafka.errors import explain
from tier3.streams.kafka.settings import LIBRDKAFKA_LOG, KafkaSettings
from tier3.streams.telemetry.logs import configure_logging

EXIT_CODES = (
    "Exit codes: 0 done; 1 failed or refused; 2 bad usage or setting; 3 broker unreachable; "
    "4 topics drift from the design; 5 authentication failed; 6 not authorized; 7 topic missing."
)

app = typer.Typer(
    name="tier3",
    help="Turn live LLM traffic into a better, cheaper local model, over Kafka.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
run_app = typer.Typer(
    help="Run a pipeline stage (a long-running consumer group member).", no_args_is_help=True
)

# The streams layer's own command groups, in the order ``tier3 --help`` lists them.
_BUILT_IN = (broker, topics, simulate, groups, replay, status, traces)


# Long-running stages log what librdkafka says; one-shot commands say it in their error line.
_STAGES = ("run", "demo")
_debug = False


@app.callback()
def _main(
    ctx: typer.Context,
    log_level: Annotated[
        str,
        typer.Option(help="Log level; DEBUG also shows tracebacks.", envvar="TIER3_LOG_LEVEL"),
    ] = "INFO",
) -> None:
    global _debug
    _debug = log_level.upper() == "DEBUG"
    configure_logging(log_level)
    if not _debug and ctx.invoked_subcommand not in _STAGES:
        LIBRDKAFKA_LOG.setLevel(logging.CRITICAL + 1)


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
    try:
        app()
    except Exception as exc:
        problem = explain(exc, _settings())
        if problem is None or _debug:
            raise
        say_error(str(problem))
        sys.exit(problem.exit_code)


def _settings() -> KafkaSettings | None:
    """The settings the failed command used (for probing the broker), if they load at all."""
    try:
        return KafkaSettings()
    except Exception:
        return None
