"""Register an exported student in Ollama, quantized to q4_k_m, and announce it.

Design choices:

- **Ollama quantizes**: the F16 GGUF is pushed as a blob (``create_blob``) and the model is
  created from it with ``quantize="q4_K_M"``. Ollama runs llama.cpp's own k-quant code, the
  reference quantizer, so what we ship is what llama.cpp would make; no second toolchain.
  (k-quants work on rows of 256 values: a tensor whose rows are not a multiple of 256 is kept
  at a type Ollama chooses; real students have such dimensions, the tiny test student is built
  with them.)
- **The template travels with the model**: Ollama formats chat requests with a Go template, so
  the model gets the layout of the chat template it was trained with, read from the GGUF
  (``serving_template``): ChatML for SmolLM2 (with its default system line, as its Jinja
  template writes it when no system message comes), Llama-3 for the tiny test student; the
  end-of-turn token is its stop word, temperature 0 and no repeat penalty (the widget task
  wants the answer, not variety, and the served model must decode as it was evaluated).
  ``trainers.release.served_check`` proves both by comparing Ollama's chat replies with
  transformers' ``apply_chat_template`` + greedy ``generate``.
- **Digest**: ModelDeployed records the digest of the model layer Ollama serves (the quantized
  GGUF blob, ``sha256:…``), read back from ``show``; the router and operators can check that
  the model answering is the one that passed the gate.
- **Lineage**: the event names the training request, the dataset manifest and the evaluation
  report; the gate's verdict travels in its ``tier3-reason`` header.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tier3.schemas.codec import Record
from tier3.streams.backend.deployments import send_deployment
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings

log = structlog.get_logger("tier3.ollama_deploy")

DEFAULT_NAME = "cc-widget-selector-v2"
QUANTIZATION = "q4_K_M"

# The Llama-3 chat layout of ``trainers.tiny_model.CHAT_TEMPLATE`` (and Llama 3.x students), as
# an Ollama Go template. BOS is added by the runner (``tokenizer.ggml.add_bos_token``).
LLAMA3_TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{- end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# Greedy, as the evaluation decodes: temperature 0 and no repeat penalty (Ollama's default,
# 1.1, changed SmolLM2's 10th token on a short prompt: the served model was not the evaluated
# one).
GREEDY: dict[str, Any] = {"temperature": 0, "repeat_penalty": 1.0}
LLAMA3_PARAMETERS: dict[str, Any] = {"stop": ["<|eot_id|>", "<|end_of_text|>"], **GREEDY}

# ChatML (SmolLM2, Qwen, ...). BOS is not added (``add_bos_token`` is false in such files).
_CHATML_TURNS = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
CHATML_TEMPLATE = _CHATML_TURNS
# SmolLM2-Instruct's Jinja template adds a system line when the first message is not one.
SMOLLM2_TEMPLATE = (
    '{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}<|im_start|>system\n'
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{{ end }}"
    + _CHATML_TURNS
)
CHATML_PARAMETERS: dict[str, Any] = {"stop": ["<|im_end|>", "<|endoftext|>"], **GREEDY}

AUTO = "auto"  # ``register``'s template: the one that matches the GGUF's chat template

_BLOB = re.compile(r"sha256[-:]([0-9a-f]{64})")


class GateRefused(RuntimeError):
    """A deployment asked for a model whose evaluation did not pass the gate."""


@dataclass(frozen=True)
class Registered:
    ollama_name: str
    digest: str  # sha256:<hex> of the model layer Ollama serves
    quantization: str  # as Ollama reports it, e.g. Q4_K_M


def register(
    client: Any,
    gguf_path: str | Path,
    ollama_name: str = DEFAULT_NAME,
    *,
    quantize: str | None = QUANTIZATION,
    template: str | None = AUTO,
    parameters: dict[str, Any] | None = None,
) -> Registered:
    """Create ``ollama_name`` in the Ollama server behind ``client`` from an F16 GGUF file."""
    path = Path(gguf_path)
    if template == AUTO:
        template, detected = serving_template(path)
        parameters = detected if parameters is None else parameters
    blob = client.create_blob(path)
    started = time.perf_counter()
    client.create(
        model=ollama_name,
        files={path.name: blob},
        quantize=quantize,
        template=template,
        parameters=LLAMA3_PARAMETERS if parameters is None else parameters,
        stream=False,
    )
    shown = client.show(ollama_name)
    digest = served_digest(shown.modelfile or "")
    level = (shown.details.quantization_level if shown.details else None) or "unknown"
    log.info(
        "registered in ollama",
        name=ollama_name,
        digest=digest,
        quantization=level,
        seconds=round(time.perf_counter() - started, 1),
    )
    return Registered(ollama_name, digest, level)


def serving_template(gguf_path: str | Path) -> tuple[str, dict[str, Any]]:
    """Ollama's Go template and parameters for the chat template inside ``gguf_path``."""
    import gguf
    from tier3.trainers.training.student_base import SMOLLM2_CHAT_TEMPLATE

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    jinja = field.contents() if field is not None else ""
    if jinja == SMOLLM2_CHAT_TEMPLATE:
        return SMOLLM2_TEMPLATE, CHATML_PARAMETERS
    if "<|im_start|>" in jinja:
        return CHATML_TEMPLATE, CHATML_PARAMETERS
    return LLAMA3_TEMPLATE, LLAMA3_PARAMETERS


def served_digest(modelfile: str) -> str:
    """The model layer's digest from ``show``'s Modelfile (``FROM …/blobs/sha256-<hex>``)."""
    for line in modelfile.splitlines():
        if line.startswith("FROM "):
            match = _BLOB.search(line)
            if match:
                return f"sha256:{match.group(1)}"
    raise ValueError("Ollama's Modelfile names no model blob; cannot tell what it serves")


def deployment_record(
    *,
    request_id: str,
    model: str,
    registered: Registered,
    gguf_uri: str,
    manifest_uri: str,
    eval_report_uri: str,
) -> Record:
    """The ModelDeployed event of a deployment."""
    return {
        "request_id": request_id,
        "model": model,
        "ollama_name": registered.ollama_name,
        "digest": registered.digest,
        "quantization": registered.quantization.lower(),
        "gguf_uri": gguf_uri,
        "manifest_uri": manifest_uri,
        "eval_report_uri": eval_report_uri,
        "deployed_at": int(time.time() * 1000),
        "action": "deploy",
    }


def deploy(
    settings: KafkaSettings,
    client: Any,
    *,
    gguf_path: str | Path,
    decision: Any,  # gate.GateDecision
    request_id: str,
    model: str,
    ollama_name: str = DEFAULT_NAME,
    gguf_uri: str | None = None,
    manifest_uri: str = "",
    eval_report_uri: str = "",
    quantize: str | None = QUANTIZATION,
    producer: EventProducer | None = None,
) -> Record:
    """Register the GGUF in Ollama and emit ModelDeployed, if the gate passed it."""
    if not decision.passed:
        raise GateRefused(f"{model} ({request_id}) did not pass the gate: {decision.summary()}")
    registered = register(client, gguf_path, ollama_name, quantize=quantize)
    record = deployment_record(
        request_id=request_id,
        model=model,
        registered=registered,
        gguf_uri=gguf_uri or Path(gguf_path).resolve().as_uri(),
        manifest_uri=manifest_uri,
        eval_report_uri=eval_report_uri,
    )
    send_deployment(settings, model, record, decision.summary(), producer)
    return record
