"""Prometheus metrics: every long-running tier3 command serves them on ``--metrics-port``."""

from __future__ import annotations

from typing import Annotated

import structlog
import typer
from prometheus_client import start_http_server

log = structlog.get_logger("tier3.metrics")

# The ``--metrics-port`` option of every long-running command that takes a plain port.
MetricsPort = Annotated[
    int,
    typer.Option(help="Serve Prometheus metrics on this port (0: off).",
                 envvar="TIER3_METRICS_PORT"),
]


def serve_metrics(port: int | None, addr: str = "127.0.0.1") -> None:
    """Serve the default registry on ``addr:port``; ``None`` or 0 turns the endpoint off."""
    if not port:
        return
    start_http_server(port, addr=addr)
    log.info("serving Prometheus metrics", url=f"http://{addr}:{port}/metrics")
