"""Structured logs for every tier3 process: key=value on a terminal, JSON lines otherwise.

tier3 is also a library (a backend imports the publisher and the router), and a library must not
print on its own (the logging HOWTO, "Configuring Logging for a Library"): the ``tier3`` logger
ends in a ``NullHandler``, so in a program that configures no logging Python's last-resort
handler never prints tier3's (or librdkafka's) warnings on stderr, and in one that does they
reach its own handlers. Code that runs inside other programs logs through ``library_logger``:
structlog once the process configured it (every ``tier3`` command does, ``configure_logging``),
the standard library's logging under the same name otherwise, since unconfigured structlog prints
to stdout.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

LIBRARY_ROOT = logging.getLogger("tier3")
LIBRARY_ROOT.addHandler(logging.NullHandler())


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was set up.

    Loggers are cached on first use; bound to the stream of that moment, they would write to a
    closed file once a test harness (or a daemon's redirection) swapped ``sys.stderr``.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str | None = None, json_logs: bool | None = None) -> None:
    """Set up structlog and the standard library's logging once per process.

    ``TIER3_LOG_LEVEL`` and ``TIER3_LOG_JSON`` override the defaults (INFO; JSON when stderr is
    not a terminal, so that log shippers get one event per line).
    """
    level_name = (level or os.environ.get("TIER3_LOG_LEVEL", "INFO")).upper()
    if json_logs is None:
        env = os.environ.get("TIER3_LOG_JSON")
        json_logs = env.lower() in ("1", "true", "yes") if env else not sys.stderr.isatty()
    renderer = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=level_name, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


class _LibraryLogger:
    """structlog's ``log.warning("event", key=value)`` calls, delivered as ``library_logger``
    says: structlog's configured pipeline, or stdlib logging (``event key=value ...``)."""

    def __init__(self, name: str) -> None:
        self._structured = structlog.get_logger(name)
        self._stdlib = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, object]) -> None:
        if structlog.is_configured():
            self._structured.log(level, event, **fields)
        elif self._stdlib.isEnabledFor(level):
            pairs = " ".join(f"{key}={value!r}" for key, value in fields.items())
            self._stdlib.log(level, "%s %s", event, pairs)

    def debug(self, event: str, **fields: object) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._log(logging.ERROR, event, fields)


def library_logger(name: str) -> _LibraryLogger:
    """The logger for a module that other programs import (``name`` under ``tier3.``)."""
    return _LibraryLogger(name)
