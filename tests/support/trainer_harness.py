"""Test helpers for the trainer: traces and requests written straight to the real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tier3.schemas.registry import TRACE, TRAINING_REQUESTED
from tier3.streams.demo.simulate import simulate
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES, TRAINING_REQUESTS
from tier3.tasks import widgets

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TINY_CACHE = Path(__file__).resolve().parents[2] / ".tier3-test" / "tiny-students"


def trace_record(query_id: str, query: str, context: str, created_at: int) -> dict[str, Any]:
    """A trace as the capture consumer writes it, with the offline teacher's answer."""
    ctx = json.loads(context)
    return {
        "query_id": query_id,
        "created_at": created_at,
        "query": query,
        "context": context,
        "capture_reason": "random",
        "teacher_provider": "offline",
        "teacher_model": "reference-rules",
        "teacher_thinking": widgets.reference_thinking(query, ctx),
        "teacher_answer": json.dumps(widgets.reference_answer(query, ctx)),
        "teacher_latency_ms": 1.0,
        "teacher_input_tokens": 10,
        "teacher_output_tokens": 20,
        "student_provider": "offline",
        "student_model": "tiny",
        "student_answer": "{}",
        "student_latency_ms": 1.0,
        "student_error": None,
        "teacher_answer_valid": True,
        "object_uri": f"file:///traces/{query_id}.json",
    }


def publish_traces(settings: KafkaSettings, count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Write ``count`` traces of simulated queries to the traces topic; return them."""
    producer = EventProducer(settings)
    traces = []
    for event in simulate(count * 3, seed):
        if event.event != "Experience" or len(traces) == count:
            continue
        r = event.record
        trace = trace_record(r["query_id"], r["query"], r["context"], int(time.time() * 1000))
        producer.send(TRACES, TRACE, trace["query_id"], trace)
        traces.append(trace)
    assert producer.flush(30) == 0
    return traces


def request(model: str, query_ids: list[str], request_id: str | None = None) -> dict[str, Any]:
    from tier3.streams.processors.training_requests import request_id as stable_id

    return {
        "request_id": request_id or stable_id(model, query_ids),
        "model": model,
        "requested_at": int(time.time() * 1000),
        "trigger": "threshold",
        "trace_count": len(query_ids),
        "query_ids": sorted(query_ids),
    }


def publish_request(settings: KafkaSettings, record: dict[str, Any]) -> None:
    EventProducer(settings).send_and_wait(
        TRAINING_REQUESTS, TRAINING_REQUESTED, record["model"], record
    )


def tiny_config(base_model: Path, work_dir: Path, **overrides: Any):  # -> TrainerSettings
    """A run small enough for a shared 2-core CPU: a dozen steps of a few hundred tokens."""
    from tier3.trainers.training.settings import TrainerSettings

    fields = {
        "base_model": str(base_model),
        "work_dir": work_dir,
        "max_steps": 12,
        "per_device_train_batch_size": 2,
        "max_length": 256,
        "learning_rate": 1e-2,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "logging_steps": 2,
        "save_steps": 6,
        "eval_share": 0.2,
        "min_train_examples": 8,
        "progress": "logs",
        **overrides,
    }
    return TrainerSettings(**fields)
