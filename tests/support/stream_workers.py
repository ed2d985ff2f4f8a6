"""Real stream-processor workers for tests: ``tier3 run sampler|counter`` as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families
from tier3.streams.kafka.settings import KafkaSettings

from tests.support.ports import free_port

TIER3 = str(Path(sys.executable).with_name("tier3"))
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Worker:
    """One ``tier3 run <role>`` process, its log in ``folder``, its metrics on a free port."""

    # Every worker a test started, so that a failing test can show their logs (conftest).
    started: list[Worker] = []

    def __init__(
        self, settings: KafkaSettings, role: str, folder: Path, *args: str, **env: str
    ) -> None:
        self.role = role
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{role}-{self.port}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
        environment.update(
            TIER3_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
            TIER3_TOPIC_PREFIX=settings.topic_prefix,
            TIER3_PARTITIONS=str(settings.partitions),
            TIER3_LOG_JSON="1",
            # A killed worker's partitions move on after 8 s instead of the default 30.
            TIER3_SESSION_TIMEOUT_S="8",
            # Faust's rebalance and recovery steps in the log, for the report of a failed test.
            TIER3_FAUST_LOG_LEVEL="info",
        )
        environment.update(env)  # the test's own settings win
        workdir = folder / f"work-{self.port}"
        command = [TIER3, "run", role, "--workdir", str(workdir), "--metrics-port", str(self.port)]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*command, *args], env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )
        Worker.started.append(self)

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, ``name{label=value,...}`` → value; {} if not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples

    def metric(self, prefix: str) -> float:
        """The sum of every sample whose name and labels start with ``prefix``."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the process to end (SIGKILL if it will not)."""
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """Die at once, as a crash would: no commit, no leaving the group."""
        self.stop(signal.SIGKILL)
