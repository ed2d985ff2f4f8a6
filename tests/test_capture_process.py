"""``tier3 run capture`` as a real process: SIGKILL mid-stream and restart, SIGTERM shutdown.

The process runs the real SDKs against the fake servers of this test process, on the real broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tier3.consumers.object_store import TraceStore
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES

from tests.support.capture_harness import (
    committed,
    end_offsets,
    latest_traces,
    make_job,
    publish_jobs,
)
from tests.support.kafka_reading import read_all
from tests.support.servers import AnthropicServer, OllamaServer

pytestmark = pytest.mark.slow

TIER3 = str(Path(sys.executable).with_name("tier3"))


def capture_env(kafka: KafkaSettings, teacher: str, student: str, root: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update({
        "TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": kafka.topic_prefix,
        "TIER3_PARTITIONS": str(kafka.partitions),
        "TIER3_OBJECT_STORE_URL": root,
        "TIER3_TEACHER_PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": "sk-test-key",
        "TIER3_ANTHROPIC_BASE_URL": teacher,
        "TIER3_STUDENT_PROVIDER": "ollama",
        "TIER3_OLLAMA_HOST": student,
        "TIER3_GROUP": "capture-process-test",
        "TIER3_COMMIT_INTERVAL_S": "0.2",
        "TIER3_LOG_JSON": "1",
        **extra,
    })
    return env


class CaptureProcess:
    def __init__(self, env: dict, log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen([TIER3, "run", "capture"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture
def processes() -> Iterator[list[CaptureProcess]]:
    started: list[CaptureProcess] = []
    yield started
    for p in started:  # whatever a failed test left running
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_mid_stream_then_restart_gives_exactly_one_trace_per_job(
    kafka: KafkaSettings, tmp_path: Path, processes: list[CaptureProcess]
):
    root = (tmp_path / "objects").as_uri()
    store = TraceStore(root)
    jobs = [make_job(i) for i in range(150)]
    ids = {j["query_id"] for j in jobs}
    with AnthropicServer(delay_s=0.3) as teacher, OllamaServer(delay_s=0.05) as student:
        # A restarted pod keeps its instance id, so it takes its partitions back at once.
        env = capture_env(kafka, teacher.url, student.url, root, TIER3_CONCURRENCY="20",
                          TIER3_INSTANCE_ID="capture-0")
        publish_jobs(kafka, jobs)
        first = CaptureProcess(env, tmp_path / "capture.log")
        processes.append(first)
        wait_for(lambda: len(list(store.query_ids())) >= 40, 60, "the first traces")
        wait_for(lambda: teacher.in_flight >= 10, 10, "jobs in flight")
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        done_before_restart = len(list(store.query_ids()))
        assert done_before_restart < len(jobs), "the kill came too late to test anything"

        second = CaptureProcess(env, tmp_path / "capture.log")
        processes.append(second)
        wait_for(lambda: set(store.query_ids()) == ids, 90, "every job's trace")
        wait_for(lambda: set(latest_traces(kafka)) == ids, 30, "every job on the topic")
        wait_for(lambda: committed(kafka, "capture-process-test") == end_offsets(kafka), 10,
                 "offsets committed")
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
        asked = len(teacher.requests)

    # The jobs in flight at the kill were asked again: the crash really was mid-stream.
    assert asked > len(jobs)
    # Exactly one object per job, each whole; no stray object.
    objects = sorted((tmp_path / "objects" / "traces").glob("*/*.json"))
    assert len(objects) == len(jobs)
    assert {json.loads(p.read_text())["query_id"] for p in objects} == ids
    # One latest value per job in the compacted topic, pointing at its object.
    latest = latest_traces(kafka)
    assert set(latest) == ids
    assert all(t["object_uri"] == store.uri(q) for q, t in latest.items())
    # Redelivery may repeat records in the raw log (at-least-once), never lose one.
    assert len(read_all(kafka, TRACES)) >= len(jobs)


def test_sigterm_finishes_in_flight_jobs_takes_no_more_and_commits(
    kafka: KafkaSettings, tmp_path: Path, processes: list[CaptureProcess]
):
    root = (tmp_path / "objects").as_uri()
    store = TraceStore(root)
    with AnthropicServer(delay_s=1.0) as teacher, OllamaServer() as student:
        env = capture_env(kafka, teacher.url, student.url, root, TIER3_CONCURRENCY="10",
                          TIER3_GROUP="capture-sigterm")
        publish_jobs(kafka, [make_job(i) for i in range(25)])
        proc = CaptureProcess(env, tmp_path / "capture.log")
        processes.append(proc)
        wait_for(lambda: teacher.in_flight == 10, 30, "ten jobs in flight")
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    assert len(list(store.query_ids())) == 10  # the ten in flight were finished, no more taken
    assert len(latest_traces(kafka)) == 10
    assert sum(max(0, o) for o in committed(kafka, "capture-sigterm").values()) == 10


def test_sigterm_deadline_abandons_slow_jobs_uncommitted(
    kafka: KafkaSettings, tmp_path: Path, processes: list[CaptureProcess]
):
    root = (tmp_path / "objects").as_uri()
    with AnthropicServer(delay_s=20.0) as teacher, OllamaServer() as student:
        env = capture_env(kafka, teacher.url, student.url, root, TIER3_CONCURRENCY="5",
                          TIER3_GROUP="capture-deadline", TIER3_SHUTDOWN_DEADLINE_S="0.5")
        publish_jobs(kafka, [make_job(i) for i in range(5)])
        proc = CaptureProcess(env, tmp_path / "capture.log")
        processes.append(proc)
        wait_for(lambda: teacher.in_flight == 5, 30, "five jobs in flight")
        stopped_at = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - stopped_at < 10  # the deadline, not the 20 s teacher

    assert list(TraceStore(root).query_ids()) == []
    assert all(offset < 0 for offset in committed(kafka, "capture-deadline").values())
