"""The GGUF export, read back: tensors, metadata, tokenizer, and the model it still is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from tier3.trainers.training.tiny_model import cached_tiny_student

    return cached_tiny_student(
        os.environ.get("TIER3_TINY_CACHE") or tmp_path_factory.mktemp("tiny")
    )


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from tier3.trainers.release.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "student.gguf"
    return export_gguf(tiny, out, name="tiny-student")


def logits(model_or_dir, ids, gguf_file: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_or_dir, gguf_file=gguf_file, dtype=torch.float32
    )
    with torch.no_grad():
        return model(ids).logits


def test_tensors_carry_llama_cpp_names_shapes_and_types(tiny, exported):
    from tier3.trainers.release.gguf_export import describe_gguf
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny)
    d = describe_gguf(exported.path)
    per_block = (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
        "attn_norm", "ffn_norm",
    )  # fmt: skip
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{t}.weight" for i in range(config.num_hidden_layers) for t in per_block
    }
    assert set(d["tensor_types"]) == expected  # tied embeddings: no separate output tensor
    assert exported.tensors == len(expected)
    assert d["tensor_shapes"]["token_embd.weight"] == [config.hidden_size, config.vocab_size]
    head_dim = config.hidden_size // config.num_attention_heads
    kv_rows = config.num_key_value_heads * head_dim
    assert d["tensor_shapes"]["blk.0.attn_k.weight"] == [config.hidden_size, kv_rows]
    assert {d["tensor_types"][n] for n in expected if "norm" in n} == {"F32"}
    assert {d["tensor_types"][n] for n in expected if "norm" not in n} == {"F16"}


def test_metadata_describes_the_model(tiny, exported):
    from tier3.trainers.release.gguf_export import describe_gguf
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny)
    d = describe_gguf(exported.path)
    assert d["architecture"] == "llama" and d["name"] == "tiny-student"
    assert d["file_type_name"] == "MOSTLY_F16"
    assert d["metadata"] == {
        "llama.context_length": config.max_position_embeddings,
        "llama.embedding_length": config.hidden_size,
        "llama.block_count": config.num_hidden_layers,
        "llama.feed_forward_length": config.intermediate_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(config.rms_norm_eps),
        "llama.rope.dimension_count": config.hidden_size // config.num_attention_heads,
        "llama.rope.freq_base": pytest.approx(10000.0),
        "llama.vocab_size": config.vocab_size,
    }


def test_tokenizer_is_inside_the_file(tiny, exported):
    import gguf
    from tier3.trainers.release.gguf_export import describe_gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    d = describe_gguf(exported.path)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    assert d["tokenizer_model"] == "gpt2"
    assert d["tokenizer_pre"] == "gpt-2"  # llama.cpp's name for the byte-level BPE regex
    assert d["tokens"] == [by_id[i] for i in range(len(by_id))]
    types = dict(zip(d["tokens"], d["token_types"], strict=True))
    assert types["<|eot_id|>"] == gguf.TokenType.CONTROL
    assert types["<think>"] == gguf.TokenType.USER_DEFINED
    assert types["Ġrevenue"] == gguf.TokenType.NORMAL
    merges = json.loads((tiny / "tokenizer.json").read_text())["model"]["merges"]
    assert len(d["merges"]) == len(merges) > 0
    assert d["bos_token_id"] == tok.bos_token_id and d["eos_token_id"] == tok.eos_token_id
    assert d["eot_token_id"] == tok.convert_tokens_to_ids("<|eot_id|>")
    assert d["chat_template"] == tok.chat_template


def test_the_file_is_still_the_same_model(tiny, exported):
    """transformers' GGUF loader undoes llama.cpp's q/k order: same logits, f16 rounding aside."""
    import gguf
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok("show revenue by region for last quarter", return_tensors="pt").input_ids
    original = logits(tiny, ids)
    reloaded = logits(exported.path.parent, ids, gguf_file=exported.path.name)
    assert torch.allclose(original, reloaded, atol=2e-3)
    gguf_tok = AutoTokenizer.from_pretrained(exported.path.parent, gguf_file=exported.path.name)
    text = "show revenue by region"
    plain = tok(text, add_special_tokens=False).input_ids
    assert gguf_tok(text, add_special_tokens=False).input_ids == plain
    # add_bos_token is set, so runners that build prompts themselves (llama.cpp, Ollama) start
    # them with BOS. Read from the file: transformers' GGUF loader honours it only from 5.24 on.
    field = gguf.GGUFReader(exported.path).fields["tokenizer.ggml.add_bos_token"]
    assert bool(field.parts[field.data[0]][0]) is True


def weights(model_dir, gguf_file: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=gguf_file, dtype=torch.float32
    )
    return model.state_dict()


def test_q_and_k_are_stored_in_llama_cpp_order(tiny, exported, tmp_path, monkeypatch):
    """Reloaded weights equal the originals; skipping the permutation would scramble q and k."""
    import torch
    from tier3.trainers.release import gguf_export

    original = weights(tiny)
    reloaded = weights(exported.path.parent, exported.path.name)
    for name, tensor in original.items():
        assert torch.allclose(tensor, reloaded[name], atol=1e-3), name

    monkeypatch.setattr(gguf_export, "permute_for_rope", lambda w, n_head: w)
    broken = gguf_export.export_gguf(tiny, tmp_path / "unpermuted.gguf")
    scrambled = weights(tmp_path, broken.path.name)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(original[q], scrambled[q], atol=1e-3)


def test_merged_adapter_gives_the_adapted_model(tiny, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from tier3.trainers.release.gguf_export import merge_adapter
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, config)
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[0, 50, 60, 70]])
    with torch.no_grad():
        expected = adapted(ids).logits
    merged = merge_adapter(tiny, tmp_path / "adapter", tmp_path / "merged")
    assert (merged / "tokenizer.json").is_file()
    assert torch.allclose(logits(merged, ids), expected, atol=1e-4)
    assert not torch.allclose(logits(tiny, ids), expected, atol=1e-3)  # the adapter mattered
