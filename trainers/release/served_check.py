"""Does Ollama serve the model we trained? Greedy replies, token by token, against transformers.

A deployment is only worth its gate if the served model is the evaluated one. The chain that
can break it is long: the LoRA merge, the GGUF tensors (names, the q/k permutation), the
tokenizer inside the file (pre-tokenizer, special tokens), Ollama's Go chat template and its
stop words. ``compare_greedy`` checks all of it at once from the outside: for each prompt it
asks Ollama's chat API (what the router calls) for a greedy reply and compares it with
transformers' ``apply_chat_template`` + greedy ``generate`` on the same weights.

What is compared, honestly:

- **The same weights.** transformers loads the exported F16 GGUF itself (dequantized), so both
  sides multiply the same F16 values; what differs is only the arithmetic (ggml's kernels
  against PyTorch's float32). Registered *without* quantization, the served model must then be
  token-identical: that is the check (``identical``).
- **Quantized serving is a different model.** q4_K_M rounds every weight to 4.5 bits, so its
  greedy path may leave transformers' after some tokens, and that is not a bug. Its agreement
  (prompts identical, tokens matching before the first difference) is reported beside the F16
  check, never in its place.
- **Decoding.** Only ``num_predict`` is passed: the registered model's own parameters (greedy,
  no repeat penalty, its stop words) are part of what is checked, since the router gets them.
- **Tokens.** Ollama's chat API returns text, not token ids; each reply is re-tokenized with
  the model's own tokenizer and compared with the ids transformers generated. The prompt side
  is checked by count: Ollama's ``prompt_eval_count`` must equal the length of transformers'
  templated prompt, which catches a template or BOS mismatch before any reply is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PromptComparison:
    """One prompt's greedy reply, from transformers and from Ollama."""

    prompt_tokens: int  # transformers' templated prompt
    served_prompt_tokens: int  # Ollama's prompt_eval_count
    expected: list[int]  # transformers' generated ids, end-of-turn excluded
    served: list[int]  # Ollama's reply, re-tokenized
    expected_text: str
    served_text: str

    @property
    def identical(self) -> bool:
        return self.expected == self.served and self.prompt_tokens == self.served_prompt_tokens

    @property
    def matching_prefix(self) -> int:
        """Tokens that agree before the first difference."""
        n = 0
        for a, b in zip(self.expected, self.served, strict=False):
            if a != b:
                break
            n += 1
        return n


@dataclass(frozen=True)
class GreedyComparison:
    """All prompts' comparisons for one served model."""

    ollama_name: str
    prompts: list[PromptComparison]

    @property
    def identical(self) -> bool:
        return all(p.identical for p in self.prompts)

    def summary(self) -> dict[str, Any]:
        expected = sum(len(p.expected) for p in self.prompts) or 1
        return {
            "ollama_name": self.ollama_name,
            "prompts": len(self.prompts),
            "identical_prompts": sum(p.identical for p in self.prompts),
            "token_agreement": round(sum(p.matching_prefix for p in self.prompts) / expected, 4),
            "identical": self.identical,
        }


def reference_replies(
    gguf_path: str | Path, conversations: Sequence[Sequence[dict]], max_new_tokens: int
) -> tuple[Any, list[tuple[list[int], list[int]]]]:
    """transformers' greedy replies on the weights of ``gguf_path``: (prompt ids, reply ids)."""
    import torch
    from tier3.trainers.training.student_base import resolve

    base = resolve(str(gguf_path))
    tokenizer = base.load_tokenizer()
    model = base.load_model(dtype=torch.float32).eval()
    stop = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
    out: list[tuple[list[int], list[int]]] = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            generated = model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        reply = [t for t in generated[0, ids.shape[1] :].tolist() if t not in stop]
        out.append((ids[0].tolist(), reply))
    return tokenizer, out


def compare_greedy(
    client: Any,
    ollama_names: Sequence[str],
    gguf_path: str | Path,
    conversations: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int = 32,
) -> list[GreedyComparison]:
    """Compare each served model in ``ollama_names`` with transformers on ``gguf_path``.

    Pass the F16 registration first and the quantized one after: the reference is computed
    once. ``max_new_tokens`` bounds both sides (Ollama's ``num_predict``).
    """
    tokenizer, expected = reference_replies(gguf_path, conversations, max_new_tokens)
    results = []
    for name in ollama_names:
        prompts = []
        for messages, (prompt_ids, reply_ids) in zip(conversations, expected, strict=True):
            # Only the length is set: the model's own parameters (greedy, no repeat penalty)
            # are part of what is checked, as the router gets them.
            served = client.chat(
                model=name, messages=list(messages), options={"num_predict": max_new_tokens}
            )
            text = served.message.content or ""
            prompts.append(
                PromptComparison(
                    prompt_tokens=len(prompt_ids),
                    served_prompt_tokens=int(served.prompt_eval_count or 0),
                    expected=reply_ids,
                    served=tokenizer(text, add_special_tokens=False).input_ids,
                    expected_text=tokenizer.decode(reply_ids),
                    served_text=text,
                )
            )
        result = GreedyComparison(name, prompts)
        log.info("served model compared with transformers", **result.summary())
        results.append(result)
    return results


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [int(value)]
