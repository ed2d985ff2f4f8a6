"""``tier3 status`` against the real broker: topic sizes, group lag, traces since the last
training, and the last training, evaluation and deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition
from tier3.schemas.registry import (
    EVAL_REPORT,
    MODEL_DEPLOYED,
    TRACE,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from tier3.streams.kafka.events import EventProducer, consumer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES, TRAINING_REQUESTS, TRAINING_RESULTS
from tier3.streams.ops.status import collect


def trace(query_id: str) -> dict:
    return {
        "query_id": query_id,
        "created_at": int(time.time() * 1000),
        "query": "q",
        "context": "{}",
        "capture_reason": "random",
        "teacher_provider": "offline",
        "teacher_model": "teacher",
        "teacher_thinking": "",
        "teacher_answer": "{}",
        "teacher_latency_ms": 1.0,
        "teacher_input_tokens": 1,
        "teacher_output_tokens": 1,
        "student_provider": "offline",
        "student_model": "student",
        "student_answer": "{}",
        "student_latency_ms": 1.0,
        "student_error": None,
        "teacher_answer_valid": True,
        "object_uri": f"file:///tmp/{query_id}.json",
    }


def _send_traces(producer: EventProducer, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for query_id in ids:
        producer.send(TRACES, TRACE, query_id, trace(query_id))
    assert producer.flush(10) == 0
    return ids


def _training_history(producer: EventProducer, ids: list[str], now: int) -> None:
    model = "widget-selector"
    producer.send(
        TRAINING_REQUESTS,
        TRAINING_REQUESTED,
        model,
        {
            "request_id": "req-1",
            "model": model,
            "requested_at": now,
            "trigger": "threshold",
            "trace_count": len(ids),
            "query_ids": ids,
        },
    )
    producer.send(
        TRAINING_RESULTS,
        TRAINING_FAILED,
        model,
        {
            "request_id": "req-0",
            "model": model,
            "failed_at": now - 10_000,
            "stage": "train",
            "reason": "out of memory",
            "error_type": "OutOfMemoryError",
        },
    )
    producer.send(
        TRAINING_RESULTS,
        TRAINING_COMPLETED,
        model,
        {
            "request_id": "req-1",
            "model": model,
            "completed_at": now + 1,
            "base_model": "tiny",
            "adapter_uri": "file:///a",
            "merged_uri": None,
            "manifest_uri": "file:///m",
            "train_examples": 9,
            "eval_examples": 1,
            "metrics": {"train_loss": 1.5},
        },
    )
    producer.send(
        TRAINING_RESULTS,
        EVAL_REPORT,
        model,
        {
            "request_id": "req-1",
            "model": model,
            "created_at": now + 2,
            "examples": 1,
            "json_validity_rate": 1.0,
            "score_match_rate": 1.0,
            "selection_agreement": 0.5,
            "student_latency_p50_ms": 1.0,
            "student_latency_p95_ms": 2.0,
            "teacher_latency_p50_ms": 3.0,
            "teacher_latency_p95_ms": 4.0,
            "rating_by_variant": {},
            "rating_p_value": None,
            "passed": True,
            "reasons": ["ok"],
            "report_uri": "file:///r",
        },
    )
    producer.send(
        TRAINING_RESULTS,
        MODEL_DEPLOYED,
        model,
        {
            "request_id": "req-1",
            "model": model,
            "ollama_name": "widget-selector-v1",
            "digest": "sha256:00",
            "quantization": "q4_k_m",
            "gguf_uri": "file:///g",
            "manifest_uri": "file:///m",
            "eval_report_uri": "file:///r",
            "deployed_at": now + 3,
        },
    )
    assert producer.flush(10) == 0


def test_status_of_a_deployment_with_history(kafka: KafkaSettings) -> None:
    producer = EventProducer(kafka)
    trained = _send_traces(producer, 10)
    time.sleep(0.05)
    _training_history(producer, trained, int(time.time() * 1000))
    time.sleep(0.05)
    _send_traces(producer, 4)  # written after the last request: not yet trained on

    group = f"{kafka.topic_prefix}counter"
    c = consumer(kafka, group)
    c.commit(
        offsets=[TopicPartition(kafka.topic(TRACES), p, 0) for p in range(3)], asynchronous=False
    )
    c.close()

    s = collect(kafka)
    assert s.broker_up and not s.errors
    sizes = {t.name: t.messages for t in s.topics}
    assert sizes[kafka.topic(TRACES)] == 14
    assert sizes[kafka.topic(TRAINING_RESULTS)] == 4
    assert all(t.exists for t in s.topics)
    assert [(g["group"], g["lag"]) for g in s.groups] == [(group, 14)]
    assert s.traces_since_last_request == 4
    assert s.last_request["request_id"] == "req-1"
    assert s.last_training["event"] == TRAINING_COMPLETED  # the later outcome wins
    assert s.last_eval["passed"] is True
    assert s.last_deployment["ollama_name"] == "widget-selector-v1"


def test_status_of_an_empty_deployment(kafka: KafkaSettings) -> None:
    s = collect(kafka)
    assert s.broker_up and s.last_request is None and s.last_training is None
    assert s.traces_since_last_request == 0
    assert {t.messages for t in s.topics} == {0}


def test_status_when_the_broker_is_down() -> None:
    s = collect(KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    assert not s.broker_up and s.errors


def _tier3(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env |= {
        "TIER3_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": settings.topic_prefix,
        "TIER3_LOG_JSON": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "tier3"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_status_for_people_and_for_scripts(kafka: KafkaSettings) -> None:
    producer = EventProducer(kafka)
    ids = _send_traces(producer, 3)
    _training_history(producer, ids, int(time.time() * 1000))

    as_json = _tier3(kafka, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["last_deployment"]["ollama_name"] == "widget-selector-v1"
    assert data["last_training"]["train_examples"] == 9

    screen = _tier3(kafka, "status")
    assert screen.returncode == 0, screen.stderr
    assert "widget-selector-v1" in screen.stdout
    assert "completed" in screen.stdout and "passed" in screen.stdout
    assert kafka.topic(TRACES) in screen.stdout

    down = _tier3(kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:1"}), "status")
    assert down.returncode == 3 and "not reachable" in down.stdout
