"""`tier3 demo`, end to end, as the README's first command runs it (on its own broker)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tier3.streams.local.kafka_broker import LocalBroker

from tests.support.ports import free_port_pair

pytestmark = pytest.mark.slow


def test_the_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    port = free_port_pair()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIER3_") and k not in ("ANTHROPIC_API_KEY", "OLLAMA_HOST")
    }
    env["TIER3_HOME"] = str(tmp_path / ".tier3")
    tier3 = str(Path(sys.executable).with_name("tier3"))
    try:
        done = subprocess.run(
            [tier3, "demo", "--port", str(port), "--events", "300", "--min-traces", "30"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        LocalBroker(home=tmp_path / ".tier3", port=port).stop()
    said = re.sub(r"\s+", " ", done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFFLINE teacher" in said and "OFFLINE student" in said  # says who stands in
    assert re.search(r"sampler: \d+ capture jobs", said)
    assert re.search(r"capture: \d+ traces", said)
    assert "counter: 30 distinct new traces reached: TrainingRequested" in said
    assert re.search(r"trainer: done: \d+ examples trained", said)
    assert re.search(r"evaluation on \d+ held-out queries: JSON validity", said)
    gguf = next((tmp_path / ".tier3" / "demo").rglob("student.gguf"))
    assert gguf.read_bytes()[:4] == b"GGUF"
