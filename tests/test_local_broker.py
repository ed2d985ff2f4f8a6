"""`tier3 broker`: status of the running broker, and clear errors instead of a broken start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tier3.streams.local.kafka_broker import BrokerError, LocalBroker


def broker_command(
    action: str, home: Path, port: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``tier3 broker <action> --home HOME --port PORT``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tier3.streams", "broker", action,
         "--home", str(home), "--port", str(port)],
        capture_output=True,
        text=True,
        env=env,
    )


def test_status_says_the_broker_runs(broker: LocalBroker) -> None:
    done = broker_command("status", broker.home, broker.port)
    assert done.returncode == 0
    assert f"running (pid {broker.pid()}) at {broker.bootstrap}" in " ".join(done.stdout.split())


def test_status_of_a_broker_that_is_not_there(tmp_path: Path) -> None:
    done = broker_command("status", tmp_path, 1)
    assert done.returncode == 3
    assert "not running" in done.stdout


def test_a_port_taken_by_another_broker_is_refused(broker: LocalBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=f"port {broker.port} on 127.0.0.1 is taken"):
        LocalBroker(home=tmp_path, port=broker.port).start()


def test_missing_java_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # neither java nor mvn on it
    done = broker_command("start", tmp_path, 1, env=env)
    assert done.returncode == 1
    assert "`java` was not found on PATH: install a Java 17+ runtime" in " ".join(
        done.stderr.split()
    )
