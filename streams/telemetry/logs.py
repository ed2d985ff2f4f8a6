"""Structured logs for every tier3 process: key=value on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog


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
