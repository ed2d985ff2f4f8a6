"""`tier3 demo`, end to end, as the README's first command runs it (on its own broker).

It runs the real path at a small size: the real base (SmolLM2-135M-Instruct, the GGUF from the
cache), the real Ollama (the cached build; the test skips when none can be had), capture asking
the served base, a LoRA run of a few steps, the release stage's served evaluation of the base
and the candidate at q4_k_m, the deployment and the router's live queries. A few steps cannot
teach the task, so the test checks that every figure is there and consistent, not the goal
(the full demo's numbers are in docs/training.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tier3.streams.local.kafka_broker import LocalBroker

from tests.support.deploy_fixtures import ollama_binary
from tests.support.ports import free_port_pair
from tests.support.real_student import real_student_gguf

pytestmark = [pytest.mark.ollama, pytest.mark.slow, pytest.mark.train, pytest.mark.timeout(1800)]

SMALL = ["--events", "140", "--min-traces", "25", "--train-steps", "2", "--eval-queries", "5",
         "--live", "2"]  # fmt: skip


def test_the_demo_runs_the_whole_loop_with_the_real_student(tmp_path: Path) -> None:
    gguf = real_student_gguf()
    binary = ollama_binary()
    port = free_port_pair()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIER3_") and k not in ("ANTHROPIC_API_KEY", "OLLAMA_HOST")
    }
    env.update(TIER3_HOME=str(tmp_path / ".tier3"), TIER3_OLLAMA_BIN=str(binary))
    # Two steps teach nothing: an open gate lets the deployment and the router's switch run.
    env.update(TIER3_GATE_JSON_VALIDITY="0", TIER3_GATE_SELECTION_AGREEMENT="0")
    tier3 = str(Path(sys.executable).with_name("tier3"))
    try:
        done = subprocess.run(
            [tier3, "demo", "--port", str(port), *SMALL],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1700,
        )
    finally:
        LocalBroker(home=tmp_path / ".tier3", port=port).stop()
    said = re.sub(r"\s+", " ", done.stderr)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "OFFLINE teacher" in said and "the real base cc-widget-selector-base in Ollama" in said
    assert "the answer WITHOUT the teacher's thinking" in said  # the CPU's choice, said
    assert "counter: 25 distinct new traces reached: TrainingRequested" in said
    assert re.search(r"trainer: done: \d+ examples trained", said)
    assert "before and after" in said and "champion vs challenger" in said

    summary_path = Path(done.stdout.strip().splitlines()[-1])
    summary = json.loads(summary_path.read_text())
    assert summary["base_model"]["file"] == str(gguf)
    assert re.fullmatch(r"[0-9a-f]{64}", summary["base_model"]["sha256"])
    assert summary["training"]["thinking"] is False and summary["training"]["thinking_note"]
    assert summary["machine"]["load_at_start"]["cpus"] >= 1
    assert summary["wall_seconds"] > 0 and "published" in summary["timings_s"]

    variants = {v["role"]: v for v in summary["evaluation"]["variants"]}
    assert set(variants) == {"base", "champion", "candidate", "teacher"}
    assert variants["base"]["model"] == "cc-widget-selector-base"
    assert variants["candidate"]["model"] == "cc-widget-selector-v2-candidate"
    assert variants["teacher"]["selection_agreement"] == 1.0
    # At most --eval-queries: the hash split of 25 traces holds about 5, sometimes fewer.
    held_out = summary["evaluation"]["held_out_queries"]
    assert 1 <= held_out <= 5
    for v in variants.values():
        assert v["examples"] == held_out
        assert 0 <= v["json_validity_rate"] <= 1 and v["student_latency_p95_ms"] >= 0
    comparison = summary["evaluation"]["champion_comparison"]
    assert comparison["champion"] == "cc-widget-selector-base"
    assert comparison["test"].startswith("McNemar exact")
    gain = variants["candidate"]["selection_agreement"] - variants["base"]["selection_agreement"]
    assert summary["goal"]["agreement_gain_points"] == pytest.approx(gain * 100, abs=0.1)
    assert summary["goal"]["met"] in (True, False)

    # The open gate passed (the champion check included), so the candidate was promoted.
    assert summary["evaluation"]["gate_passed"], summary["evaluation"]["gate_reasons"]
    assert summary["deployment"]["ollama_name"] == "cc-widget-selector-v2"
    assert summary["deployment"]["quantization"] == "q4_k_m"
    answers = summary["router"]["answers"]
    assert summary["router"]["use_finetuned_model"] and len(answers) == 2
    # The deployed student answered, or failed and the teacher stood in: either way, said.
    assert all(a["model"] for a in answers)
    assert {a["variant"] for a in answers} <= {"student", "student-fallback"}
