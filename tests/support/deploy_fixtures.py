"""Fixtures of the deploy tests: a student whose shapes suit q4_K, and a real ``ollama serve``.

The tiny student of ``trainers.tiny_model`` has hidden size 64, but k-quants work on rows of 256
values, so a q4_k_m check on it would only show Ollama's fallback types. The deploy tests use
the same tokenizer and chat template with a LLaMA body of hidden 256 and FFN 512 (random
weights, seeded; a few MB).

The Ollama server is the real one, built from the Go module proxy by
``scripts/build-ollama.sh`` (cached under ~/.cache/tier3/ollama-<version>/). If it cannot be
built here, the tests that need it skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-ollama.sh"


def quantizable_student(path: Path, seed: int = 0) -> Path:
    """A LLaMA student with the tiny tokenizer and q4_K-friendly shapes, saved in ``path``."""
    import torch
    from tier3.trainers.training.tiny_model import cached_tiny_student
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (path / "config.json").is_file():
        return path
    tiny = cached_tiny_student(os.environ.get("TIER3_TINY_CACHE") or path.parent / "tiny-cache")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, eot],
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ollama_binary() -> Path:
    """The cached Ollama binary, built on first use; skips the test if it cannot be built."""
    given = os.environ.get("TIER3_OLLAMA_BIN")
    if given:
        return Path(given)
    if not shutil.which("go"):
        pytest.skip("no Go toolchain: cannot build ollama (scripts/build-ollama.sh)")
    timeout = float(os.environ.get("TIER3_OLLAMA_BUILD_TIMEOUT", "2400"))
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHON": os.environ.get("PYTHON", str(REPO / ".venv/bin/python"))},
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"building ollama took more than {timeout:.0f}s (scripts/build-ollama.sh)")
    if done.returncode != 0:
        pytest.skip(f"ollama could not be built here: {done.stderr.strip()[-800:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def serve_ollama(binary: Path, home: Path) -> Iterator[str]:
    """Run ``ollama serve`` on a free loopback port with its own model store; yield its URL."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),  # its keys and state, not the developer's
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(home / "models"),
        "OLLAMA_NOPRUNE": "1",
        "OLLAMA_NUM_PARALLEL": "1",
        "OLLAMA_MAX_LOADED_MODELS": "1",
    }
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/api/version", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ollama serve did not start: {(home / 'serve.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
