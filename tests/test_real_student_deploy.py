"""The real student through export and Ollama: served greedy replies equal transformers' own.

SmolLM2-135M-Instruct (the default base, a Q4_1 GGUF) gets a LoRA adapter with small random
weights (a stand-in for a trained one: what matters here is that the merged weights are not the
base's), is merged, exported to F16 GGUF with the base's own tokenizer metadata, and registered
in a real Ollama twice: as F16 and quantized to q4_K_M. The F16 model must answer every prompt
token for token as transformers does on the same file; the q4_K_M model's agreement is only
reported (4-bit weights are a different model; see ``trainers.release.served_check``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.deploy_fixtures import ollama_binary, serve_ollama
from tests.support.real_student import DEFAULT_BASE, real_student_gguf

pytestmark = [pytest.mark.ollama, pytest.mark.train, pytest.mark.slow, pytest.mark.timeout(1800)]

# Short prompts: identity is about weights, tokenizer and template, not prompt length, and a
# widget prompt (~600 tokens) takes Ollama over a minute to read on two busy cores at F16.
CONVERSATIONS = [
    [{"role": "user", "content": "Which widget shows revenue by region?"}],
    [{"role": "user", "content": 'Answer in JSON: {"widgets": [...]} for "open incidents"'}],
    [
        {"role": "system", "content": "You pick dashboard widgets."},
        {"role": "user", "content": "compare signups this week to last week"},
    ],
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The base merged with a small random LoRA adapter, exported to F16 GGUF."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tier3.trainers.release.gguf_export import export_gguf, merge_adapter
    from tier3.trainers.training.student_base import resolve

    real_student_gguf()
    root = tmp_path_factory.mktemp("real-student")
    model = resolve(DEFAULT_BASE).load_model(dtype=torch.float32)
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    adapted.save_pretrained(root / "adapter")
    del adapted, model
    merged = merge_adapter(DEFAULT_BASE, root / "adapter", root / "merged")
    return export_gguf(merged, root / "student-f16.gguf", name="cc-widget-selector").path


@pytest.fixture(scope="module")
def ollama_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ollama")


@pytest.fixture(scope="module")
def ollama_url(ollama_home):
    yield from serve_ollama(ollama_binary(), ollama_home)


@pytest.fixture(scope="module")
def client(ollama_url):
    import ollama

    return ollama.Client(host=ollama_url)


def test_export_keeps_the_base_tokenizer(exported):
    from tier3.trainers.release.gguf_export import describe_gguf

    source, ours = describe_gguf(real_student_gguf()), describe_gguf(exported)
    assert ours["file_type_name"] == "MOSTLY_F16"
    assert ours["name"] == "cc-widget-selector"
    for key in ("tokens", "token_types", "merges", "tokenizer_model", "tokenizer_pre",
                "bos_token_id", "eos_token_id", "chat_template"):  # fmt: skip
        assert ours[key] == source[key], key
    assert ours["tokenizer_pre"] == "smollm"
    assert set(ours["tensor_types"]) == set(source["tensor_types"])  # tied: no output.weight
    assert {t for n, t in ours["tensor_types"].items() if "norm" not in n} == {"F16"}


def test_served_greedy_replies_are_token_identical(exported, client):
    from tier3.trainers.release.ollama_deploy import register
    from tier3.trainers.release.served_check import compare_greedy

    f16 = register(client, exported, "cc-widget-selector-f16", quantize=None)
    q4 = register(client, exported, "cc-widget-selector-v2")
    assert f16.quantization == "F16" and q4.quantization == "Q4_K_M"
    exact, quantized = compare_greedy(
        client, [f16.ollama_name, q4.ollama_name], exported, CONVERSATIONS, max_new_tokens=24
    )
    report = json.dumps(
        [(p.expected_text, p.served_text) for p in exact.prompts + quantized.prompts], indent=1
    )
    assert all(len(p.expected) > 0 for p in exact.prompts), report
    assert exact.identical, report
    print("q4_K_M against transformers on F16:", quantized.summary())


def test_an_ollama_base_is_the_file_ollama_serves(exported, client, ollama_url, ollama_home,
                                                   monkeypatch):  # fmt: skip
    """TIER3_STUDENT_BASE=ollama:<model> trains exactly the weights Ollama serves: found
    through its API, or through its model store when no server answers."""
    from tier3.trainers.release.ollama_deploy import register
    from tier3.trainers.training.student_base import StudentBaseError, file_sha256, resolve

    register(client, exported, "served-base", quantize=None)
    monkeypatch.setenv("OLLAMA_HOST", ollama_url)
    through_api = resolve("ollama:served-base")
    assert through_api.kind == "ollama"
    assert file_sha256(through_api.gguf_path) == file_sha256(exported)

    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # no server
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_home / "models"))
    assert resolve("ollama:served-base").gguf_path == through_api.gguf_path
    with pytest.raises(StudentBaseError, match="neither through its API"):
        resolve("ollama:never-registered")
