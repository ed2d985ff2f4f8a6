"""What every test shares. The fixtures live in ``tests/support/`` and load here as plugins:
``broker`` and ``kafka`` (the real broker, a topic set per test) and ``sasl`` (a SASL/SCRAM
broker, started the first time a test asks for it) and ``s3_server``/``s3_bucket`` (a real
SeaweedFS S3 server).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.stream_workers import Worker

pytest_plugins = ["tests.support.broker", "tests.support.sasl_broker", "tests.support.s3"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that need a server built from source (Ollama, SeaweedFS) last:
    `scripts/test.sh` builds them in the background while the other tests run, and such a test
    waits for its build (the build scripts take a lock) rather than starting a second one."""
    items.sort(key=lambda item: any(item.iter_markers("ollama")) or any(item.iter_markers("s3")))


@pytest.fixture(autouse=True)
def _no_ambient_tier3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure tier3 explicitly; a developer's TIER3_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("TIER3_") and name not in (
            "TIER3_TEST_HOME",
            "TIER3_TEST_BROKER_PORT",
            "TIER3_KAFKA_CACHE",
            "TIER3_SEAWEEDFS_CACHE",
            "TIER3_WEED_BIN",
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ENABLE_TIER3_CAPTURE", raising=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """When a test fails, attach the log tail of every stream worker it started: a CI run
    prints only the report, and the logs are gone with the machine."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup":
        Worker.started.clear()
    if report.failed and report.when == "call":
        for worker in Worker.started:
            lines = [
                line for line in worker.log().splitlines() if "kafka client error" not in line
            ]
            report.sections.append(
                (f"log of {worker.role} worker {worker.port}", "\n".join(lines[-60:]))
            )
