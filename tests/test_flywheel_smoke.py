"""bench/flywheel_gpu.py --smoke: the flywheel's turn end to end on a CPU, from a
TrainingRequested to a model Ollama serves at q4_k_m, every phase timed (the GPU run's code
path, on a tiny shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy_fixtures import ollama_binary

pytestmark = [pytest.mark.ollama, pytest.mark.slow, pytest.mark.train]
REPO = Path(__file__).resolve().parents[1]
PHASES = [
    "loading",
    "training",
    "evaluation",
    "merge",
    "GGUF export",
    "quantization",
    "registration",
]


def test_the_turn_ends_with_the_model_served_at_q4_k_m(tmp_path: Path) -> None:
    binary = ollama_binary()
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "flywheel_gpu.py"),
            "--smoke",
            "--ollama",
            str(binary),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert list(summary["phases_s"]) == PHASES
    assert summary["served"]["quantization"] == "Q4_K_M"
    assert summary["served"]["digest"].startswith("sha256:")
    assert summary["biggest_phase"] in PHASES
    assert json.loads((tmp_path / "flywheel.json").read_text())["turn_s"] == summary["turn_s"]
    assert "turn |" in done.stderr.splitlines()[-1]  # the table ends the output
