"""`tier3 run trainer|release --metrics-port` serve their Prometheus metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tier3.streams.kafka.settings import KafkaSettings

from tests.support.ports import free_port
from tests.support.stream_workers import wait_for


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def _metrics_of(kafka: KafkaSettings, home: Path, *stage: str) -> str:
    """Start ``tier3 run <stage...>`` with a metrics port, return its first scrape, stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update(
        TIER3_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        TIER3_TOPIC_PREFIX=kafka.topic_prefix,
        TIER3_HOME=str(home),
    )
    tier3 = str(Path(sys.executable).with_name("tier3"))
    process = subprocess.Popen(
        [tier3, "run", *stage, "--metrics-port", str(port), "--group", f"m{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return wait_for(lambda: _scrape(port), 60, "the metrics endpoint")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def test_the_trainer_serves_its_metrics(kafka: KafkaSettings, tmp_path: Path) -> None:
    text = _metrics_of(kafka, tmp_path, "trainer")
    assert "tier3_trainer_training 0.0" in text
    assert "# HELP tier3_trainer_requests_total" in text


def test_the_release_stage_serves_its_metrics(kafka: KafkaSettings, tmp_path: Path) -> None:
    assert "process_cpu_seconds_total" in _metrics_of(kafka, tmp_path, "release", "--no-deploy")
