"""Deployment against a real Ollama server (built from source by scripts/build-ollama.sh).

The student is exported to F16 GGUF, pushed as a blob, created with quantize=q4_K_M by Ollama
itself, read back from Ollama's blob store with the gguf reader, served, and announced with a
ModelDeployed event on the real broker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tier3.schemas.registry import MODEL_DEPLOYED
from tier3.streams.backend.deployments import REASON_HEADER, DeploymentWatcher
from tier3.streams.backend.router import (
    FALLBACK,
    Router,
    RoutingSettings,
    ollama_student,
)
from tier3.streams.kafka.topics import TRAINING_RESULTS
from tier3.tasks import widgets
from tier3.trainers.release.gate import GateDecision
from tier3.trainers.release.gguf_export import describe_gguf, export_gguf
from tier3.trainers.release.ollama_deploy import GateRefused, deploy

from tests.support.deploy_fixtures import ollama_binary, quantizable_student, serve_ollama
from tests.support.kafka_reading import read_all, read_events

# The first run builds Ollama (minutes on two cores); later runs reuse the cached binary.
pytestmark = [pytest.mark.ollama, pytest.mark.train, pytest.mark.slow, pytest.mark.timeout(3000)]

PASSED = GateDecision(True, ["PASS: JSON validity 100.0% >= 99.0%"])


@pytest.fixture(scope="module")
def ollama_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ollama")


@pytest.fixture(scope="module")
def ollama_url(ollama_home) -> str:
    yield from serve_ollama(ollama_binary(), ollama_home)


@pytest.fixture(scope="module")
def client(ollama_url):
    import ollama

    return ollama.Client(host=ollama_url)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    root = tmp_path_factory.mktemp("student")
    return export_gguf(quantizable_student(root / "student"), root / "student-f16.gguf").path


def blob_path(ollama_home: Path, digest: str) -> Path:
    return ollama_home / "models" / "blobs" / digest.replace(":", "-")


def test_deploy_quantizes_to_q4_k_m_and_announces_the_lineage(kafka, client, gguf, ollama_home):
    record = deploy(
        kafka,
        client,
        gguf_path=gguf,
        decision=PASSED,
        request_id="tier3-student-req1",
        model="tier3-student",
        ollama_name="cc-widget-selector-v2",
        manifest_uri="file:///runs/req1/manifest.json",
        eval_report_uri="file:///runs/req1/eval/report.md",
    )
    assert record["quantization"] == "q4_k_m"
    served = describe_gguf(blob_path(ollama_home, record["digest"]))
    assert served["file_type"] == 15 and served["file_type_name"] == "MOSTLY_Q4_K_M"
    assert served["tensor_types"]["blk.0.attn_q.weight"] == "Q4_K"
    assert served["tensor_types"]["blk.1.ffn_up.weight"] == "Q4_K"
    assert served["tensor_types"]["output_norm.weight"] == "F32"
    # The tokenizer and template came through Ollama's re-write of the file.
    assert served["tokenizer_model"] == "gpt2"
    assert served["tokens"] == describe_gguf(gguf)["tokens"]

    listed = {m.model: m for m in client.list().models}
    assert "cc-widget-selector-v2:latest" in listed
    assert listed["cc-widget-selector-v2:latest"].details.quantization_level == "Q4_K_M"

    events = [r for n, r in read_events(kafka, TRAINING_RESULTS) if n == MODEL_DEPLOYED]
    assert events == [record]
    assert record["request_id"] == "tier3-student-req1"
    assert record["manifest_uri"].endswith("manifest.json")
    assert record["eval_report_uri"].endswith("report.md")
    assert record["gguf_uri"] == gguf.resolve().as_uri()
    (raw,) = read_all(kafka, TRAINING_RESULTS)
    assert raw.headers[REASON_HEADER] == b"passed the gate"


def test_ollama_tokenizes_prompts_as_the_trainer_did(kafka, client, gguf):
    """The served model must see the tokens the student was trained on (pre-tokenizer, BOS)."""
    from tier3.trainers.training.tiny_model import cached_tiny_student
    from transformers import AutoTokenizer

    registered = deploy(
        kafka, client, gguf_path=gguf, decision=PASSED, request_id="r", model="m", quantize=None
    )
    tok = AutoTokenizer.from_pretrained(cached_tiny_student(os.environ.get("TIER3_TINY_CACHE")))
    prompt = widgets.render_prompt(
        "show revenue by region for last quarter",
        {"page": "sales", "alerts_open": False, "screen": "desktop"},
    )
    for text in (prompt, 'Context: {"alerts_open": false, "page": "sales"}'):
        served = client.generate(
            model=registered["ollama_name"], prompt=text, raw=True, options={"num_predict": 1}
        )
        trained = tok(text, add_special_tokens=False).input_ids
        assert served.prompt_eval_count == len(trained) + 1  # + BOS

    chat = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    served = client.chat(
        model=registered["ollama_name"],
        messages=[{"role": "user", "content": prompt}],
        options={"num_predict": 1},
    )
    assert served.prompt_eval_count == len(tok(chat, add_special_tokens=False).input_ids)


def test_a_model_that_failed_the_gate_is_not_deployed(kafka, client, gguf):
    failed = GateDecision(False, ["FAIL: JSON validity 12.0% >= 99.0%"])
    with pytest.raises(GateRefused, match=r"JSON validity 12\.0%"):
        deploy(
            kafka,
            client,
            gguf_path=gguf,
            decision=failed,
            request_id="req-bad",
            model="tier3-student",
            ollama_name="never-deployed",
        )
    assert "never-deployed:latest" not in {m.model for m in client.list().models}
    assert read_all(kafka, TRAINING_RESULTS) == []


def test_the_router_serves_the_deployed_student_and_falls_back(kafka, client, gguf):
    record = deploy(
        kafka,
        client,
        gguf_path=gguf,
        decision=PASSED,
        request_id="req-2",
        model="tier3-student",
        ollama_name="widget-student-test",
    )
    watcher = DeploymentWatcher(kafka, "tier3-student")
    try:
        assert watcher.wait_caught_up(20)
        student = ollama_student(client, options={"num_predict": 24})
        # The student Ollama serves answers the router's call (an untrained one, with babble).
        reply = student(record["ollama_name"], "show revenue total", {"page": "sales"})
        assert isinstance(reply, str) and reply

        def teacher(query, context):
            return json.dumps(widgets.reference_answer(query, context))

        router = Router(
            teacher, student, RoutingSettings(use_finetuned_model=True), deployments=watcher
        )
        routed = router.answer(
            "show revenue total", {"page": "sales"}, user_id_hash="u1", session_id_hash="s1"
        )
        # Random weights do not answer the task: the teacher steps in, and it is recorded.
        assert routed.variant == FALLBACK
        assert routed.reply == teacher("show revenue total", {"page": "sales"})
        assert "not a valid answer" in routed.fallback_reason

        client.delete(record["ollama_name"])  # the student disappears: an error, same fallback
        routed = router.answer(
            "show revenue total", {"page": "sales"}, user_id_hash="u1", session_id_hash="s1"
        )
        assert routed.variant == FALLBACK and "student error" in routed.fallback_reason
    finally:
        watcher.close()
