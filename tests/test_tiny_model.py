"""The tiny offline student: stock transformers loads it, it generates, its template masks."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def test_tiny_student_loads_with_stock_classes_and_generates(tmp_path):
    from tier3.trainers.training.tiny_model import build_tiny_student
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_student(tmp_path / "student")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "show revenue by region"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_assistant_mask_covers_the_answer_and_end_of_turn_only(tmp_path):
    from tier3.trainers.training.tiny_model import EOT, build_tiny_student
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_student(tmp_path / "student"))
    out = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "show orders total"},
            {"role": "assistant", "content": '<think>kpi</think>\n{"x": 1}'},
        ],
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == '<think>kpi</think>\n{"x": 1}' + EOT


def test_build_is_deterministic_and_cached(tmp_path):
    from tier3.trainers.training.tiny_model import build_tiny_student, cached_tiny_student

    a = build_tiny_student(tmp_path / "a")
    b = build_tiny_student(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    cached = cached_tiny_student(tmp_path / "cache")
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    assert cached_tiny_student(tmp_path / "cache") == cached
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
