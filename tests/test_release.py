"""The release stage: a TrainingCompleted becomes an evaluation, a report and an EvalReport."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import fsspec
import pytest
from tier3.schemas import SingleObjectCodec
from tier3.schemas.registry import EVAL_REPORT, TRACE, TRAINING_COMPLETED
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import LocalSettings
from tier3.streams.kafka.topics import TRACES, TRAINING_RESULTS
from tier3.tasks import widgets
from tier3.trainers.artifacts import RunArtifacts
from tier3.trainers.release.consumer import Release, ReleaseConsumer
from tier3.trainers.release.gate import GateThresholds
from tier3.trainers.release.settings import ReleaseSettings

from tests.support.kafka_reading import read_all, read_events

pytestmark = pytest.mark.train

QUERIES = ["show revenue by region", "plot churn over time", "display orders total today"]


def trace(i: int, query: str) -> dict:
    context = {"page": "sales", "alerts_open": False, "screen": "desktop"}
    return {
        "query_id": f"q{i}",
        "created_at": 1_000 + i,
        "query": query,
        "context": json.dumps(context),
        "capture_reason": "random",
        "teacher_provider": "offline",
        "teacher_model": "reference",
        "teacher_thinking": widgets.reference_thinking(query, context),
        "teacher_answer": json.dumps(widgets.reference_answer(query, context)),
        "teacher_latency_ms": 900.0 + i,
        "teacher_input_tokens": 10,
        "teacher_output_tokens": 20,
        "student_provider": "offline",
        "student_model": "none",
        "student_answer": "",
        "student_latency_ms": 0.0,
        "student_error": None,
        "teacher_answer_valid": True,
        "object_uri": "",
    }


@pytest.fixture
def finished_run(kafka, tmp_path) -> tuple[LocalSettings, dict]:
    """A finished run in object storage, with its held-out traces on the traces topic."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from tier3.trainers.training.tiny_model import cached_tiny_student

    local = LocalSettings(home=tmp_path / "home")
    producer = EventProducer(kafka)
    for i, query in enumerate(QUERIES):
        producer.send(TRACES, TRACE, f"q{i}", trace(i, query))
    producer.flush()
    run = f"{local.object_root}/models/tier3-student/req-1"
    fs, root = fsspec.core.url_to_fs(run)
    fs.makedirs(root, exist_ok=True)
    examples = [{"query_id": f"q{i}", "split": "eval"} for i in range(len(QUERIES))]
    examples.append({"query_id": "q-train", "split": "train"})
    fs.pipe_file(f"{root}/manifest.json", json.dumps({"examples": examples}).encode())
    tiny = cached_tiny_student(os.environ.get("TIER3_TINY_CACHE") or tmp_path / "tiny")
    shutil.copytree(tiny, Path(root) / "merged")
    completed = {
        "request_id": "req-1",
        "model": "tier3-student",
        "completed_at": 5_000,
        "base_model": str(tiny),
        "adapter_uri": f"{run}/adapter",
        "merged_uri": f"{run}/merged",
        "manifest_uri": f"{run}/manifest.json",
        "train_examples": 1,
        "eval_examples": len(QUERIES),
        "metrics": {"train_loss": 1.0},
    }
    RunArtifacts(local.object_root, "tier3-student", "req-1").mark_complete(completed)
    return local, completed


def options() -> ReleaseSettings:
    return ReleaseSettings(thresholds=GateThresholds(min_examples=3), max_new_tokens=8)


def test_a_finished_run_is_evaluated_reported_and_gated(kafka, finished_run):
    local, completed = finished_run
    released = Release(kafka, local, options()).handle(completed)

    assert released.metrics.examples == len(QUERIES)
    assert released.metrics.teacher_latency_p50_ms == pytest.approx(901.0)
    assert not released.decision.passed  # an untrained student
    assert released.deployed is None
    events = [r for n, r in read_events(kafka, TRAINING_RESULTS) if n == EVAL_REPORT]
    assert events == [released.eval_report]
    report = events[0]
    assert report["request_id"] == "req-1" and report["examples"] == 3
    assert report["passed"] is False
    assert any(r.startswith("FAIL: JSON validity") for r in report["reasons"])
    fs, path = fsspec.core.url_to_fs(report["report_uri"])
    text = fs.cat_file(path).decode()
    assert "**Gate: FAILED**" in text and "| JSON validity | 0.0% |" in text
    assert fs.exists(path.replace("report.md", "rates.png"))


def test_the_release_stage_evaluates_each_run_once_and_dead_letters_garbage(kafka, finished_run):
    local, completed = finished_run
    producer = EventProducer(kafka)
    producer.raw.produce(kafka.topic(TRAINING_RESULTS), b"not an event", b"tier3-student")
    producer.send(TRAINING_RESULTS, TRAINING_COMPLETED, "tier3-student", completed)
    producer.send(TRAINING_RESULTS, TRAINING_COMPLETED, "tier3-student", completed)  # again
    producer.flush()

    stage = ReleaseConsumer(Release(kafka, local, options()), group=f"release-{kafka.topic_prefix}")
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)
    timer.start()
    try:
        # Stops after the first run, or when the timer runs out.
        assert stage.run(stop, max_runs=1) == 1
    finally:
        timer.cancel()

    codec = SingleObjectCodec()
    events = [r.value for r in read_all(kafka, TRAINING_RESULTS) if r.value != b"not an event"]
    assert [codec.decode(v).name for v in events].count(EVAL_REPORT) == 1
    dead = read_all(kafka, TRAINING_RESULTS + ".dlq")
    assert [d.value for d in dead] == [b"not an event"]

    again = ReleaseConsumer(Release(kafka, local, options()), group=f"again-{kafka.topic_prefix}")
    stop = threading.Event()
    threading.Timer(8, stop.set).start()
    assert again.run(stop) == 0  # a replay of the same runs evaluates nothing twice


def tier3(kafka, local: LocalSettings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": kafka.topic_prefix,
        "TIER3_HOME": str(local.home),
        "TIER3_GATE_MIN_EXAMPLES": "3",
        "COLUMNS": "200",  # rich wraps messages at the terminal's width
    }
    return subprocess.run(
        [sys.executable, "-m", "tier3.streams", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_eval_and_deploy_commands_gate_a_run(kafka, finished_run):
    local, _ = finished_run
    model = ["--model", "tier3-student", "--request-id", "req-1"]

    refused = tier3(kafka, local, "deploy", *model)
    assert refused.returncode == 2 and "no EvalReport" in refused.stderr

    evaluated = tier3(kafka, local, "eval", *model, "--max-examples", "2")
    assert evaluated.returncode == 1, evaluated.stderr  # the gate failed: exit 1
    assert "gate FAILED" in evaluated.stderr
    report = json.loads(evaluated.stdout[evaluated.stdout.index("{") :])
    assert report["examples"] == 2 and report["passed"] is False

    refused = tier3(kafka, local, "deploy", *model)
    assert refused.returncode == 1 and "did not pass the gate" in refused.stderr
    assert [n for n, _ in read_events(kafka, TRAINING_RESULTS)] == [EVAL_REPORT]
