"""The trainer's commands as a user runs them: ``tier3 train`` and ``tier3 run trainer``.

The resume test kills a real ``tier3 run trainer`` process with SIGKILL after its first
checkpoint reached object storage, wipes its local folder (as if it restarted on another
machine), and starts it again: the run must finish from that checkpoint, once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tier3.schemas.registry import TRAINING_COMPLETED, TRAINING_REQUESTED
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.kafka.topics import TRAINING_REQUESTS, TRAINING_RESULTS

from tests.support.kafka_reading import read_events
from tests.support.trainer_harness import (
    OFFLINE_ENV,
    TINY_CACHE,
    publish_request,
    publish_traces,
    request,
)

pytest.importorskip("trl")
pytestmark = pytest.mark.train

MODEL = "cc-widget-selector"


def tier3_env(settings: KafkaSettings, home: Path, **train: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update(OFFLINE_ENV)
    env.update(
        TIER3_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TIER3_TOPIC_PREFIX=settings.topic_prefix,
        TIER3_HOME=str(home),
        TIER3_LOG_JSON="1",
    )
    env.update({f"TIER3_TRAIN_{k.upper()}": str(v) for k, v in train.items()})
    return env


def tier3(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tier3.streams", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_train_without_enough_traces_does_nothing(kafka, tmp_path):
    publish_traces(kafka, 5)
    env = tier3_env(kafka, tmp_path) | {"TIER3_MIN_TRACES": "10"}
    done = tier3("train", env=env)
    # The documented contract (tier3 train --help): exit 0, nothing on stdout, why on stderr.
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "5 usable traces, fewer than TIER3_MIN_TRACES=10" in done.stderr
    assert read_events(kafka, TRAINING_REQUESTS) == []
    assert read_events(kafka, TRAINING_RESULTS) == []


def test_train_force_publish_makes_the_counters_request(kafka, tmp_path):
    from tier3.streams.processors.training_requests import request_id

    traces = publish_traces(kafka, 5)
    done = tier3("train", "--force", "--publish", env=tier3_env(kafka, tmp_path))
    assert done.returncode == 0, done.stderr
    [(name, record)] = read_events(kafka, TRAINING_REQUESTS)
    ids = sorted(t["query_id"] for t in traces)
    assert name == TRAINING_REQUESTED
    assert record["query_ids"] == ids
    assert record["trigger"] == "manual"
    assert record["request_id"] == request_id(MODEL, ids)


def test_train_force_trains_here_and_prints_the_result(kafka, tmp_path):
    from tier3.trainers.training.tiny_model import cached_tiny_student

    publish_traces(kafka, 20)
    env = tier3_env(
        kafka,
        tmp_path,
        base_model=cached_tiny_student(TINY_CACHE),
        max_steps=3,
        per_device_train_batch_size=2,
        max_seq_length=256,
        progress="bar",
    )
    done = tier3("train", "--force", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert printed["event"] == TRAINING_COMPLETED
    assert printed["metrics"]["global_step"] == 3
    [(name, record)] = read_events(kafka, TRAINING_RESULTS)
    assert name == TRAINING_COMPLETED
    assert record["request_id"] == printed["request_id"]
    assert "3/3 steps" in done.stderr  # the progress bar, asked for with progress=bar


@pytest.mark.slow
def test_killed_trainer_resumes_from_its_last_checkpoint(kafka, tmp_path):
    from tier3.trainers.artifacts import RunArtifacts
    from tier3.trainers.training.tiny_model import cached_tiny_student

    student = cached_tiny_student(TINY_CACHE)
    traces = publish_traces(kafka, 40)
    req = request(MODEL, [t["query_id"] for t in traces])
    publish_request(kafka, req)
    env = tier3_env(
        kafka,
        tmp_path,
        base_model=student,
        max_steps=60,
        save_steps=5,
        per_device_train_batch_size=2,
        max_seq_length=256,
        learning_rate=0.01,
        lora_r=8,
        logging_steps=5,
        min_train_examples=8,
    )
    artifacts = RunArtifacts(LocalSettings(home=tmp_path).object_root, MODEL, req["request_id"])
    group = f"trainer-{kafka.topic_prefix}"  # not shared with concurrent test sessions
    command = [sys.executable, "-m", "tier3.streams", "run", "trainer", "--max-requests", "1"]
    command += ["--group", group]
    first_log = tmp_path / "first.log"
    with first_log.open("wb") as sink:
        first = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 120
        while artifacts.latest_checkpoint() is None:
            assert first.poll() is None, first_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
    finally:
        first.kill()
        first.wait(30)
    step, _ = artifacts.latest_checkpoint()
    assert step < 60, "the first process finished before it could be killed"
    assert artifacts.completed() is None
    assert read_events(kafka, TRAINING_RESULTS) == []
    # Restart elsewhere: nothing local survives, only what reached object storage.
    subprocess.run(["rm", "-rf", str(tmp_path / "training")], check=True)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    [(name, done)] = read_events(kafka, TRAINING_RESULTS)
    assert name == TRAINING_COMPLETED
    assert done["metrics"]["resumed_from_step"] >= step
    assert done["metrics"]["global_step"] == 60
    assert artifacts.completed() == done
    logs = [json.loads(line) for line in second.stderr.splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "training" and entry.get("resume_from") for entry in logs)
