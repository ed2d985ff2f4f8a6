"""Prometheus metrics: every long-running tier3 command serves them on ``--metrics-port``."""

from __future__ import annotations

import structlog
from prometheus_client import start_http_server

log = structlog.get_logger("tier3.metrics")


def serve_metrics(port: int | None, addr: str = "127.0.0.1") -> None:
    """Serve the default registry on ``addr:port``; ``None`` or 0 turns the endpoint off."""
    if not port:
        return
    start_http_server(port, addr=addr)
    log.info("serving Prometheus metrics", url=f"http://{addr}:{port}/metrics")
