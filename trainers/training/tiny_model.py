"""A tiny student model built offline, for tests that need speed: nothing is downloaded, ever.

It learns nothing useful: the real student, and the default base everywhere else, is
SmolLM2-135M-Instruct (``trainers.training.student_base``). Tests that use this model do so
for speed (it loads in a second and trains a step in tens of milliseconds, where the real one
takes about 25 s to load and 12-16 s a step on two cores), and test plumbing, not learning.

Tests of the trainer, the evaluator and the exporter need a real causal LM that stock
``AutoModelForCausalLM`` / ``AutoTokenizer`` load, that TRL trains and that ``generate()`` runs,
but it must build in seconds on a CPU and never touch a hub. So, as the Hugging Face libraries'
own tests do, we build one:

- a byte-level BPE tokenizer trained here with ``tokenizers`` on the configured task's own text
  (simulated queries, the task's messages, the reference thinking and answers), so a small
  vocabulary (~1k) still encodes the task compactly;
- Llama-3-like special tokens and chat template; the template wraps the assistant's content
  *and* its ``<|eot_id|>`` in ``{% generation %}`` markers, so TRL's ``assistant_only_loss``
  masks the user turn and the model learns when to stop;
- a LLaMA-architecture model with random weights (hidden 64, 2 layers), seeded.

Building is deterministic for a seed, and ``cached_tiny_student`` keeps one build per recipe
hash: a test session builds it once, later sessions reuse it. A build goes to a temporary folder
renamed into place at the end, so concurrent builders never see a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tier3.tasks.registry import TaskSettings, configured_task
from tier3.trainers.training.dataset import assistant_turn

# Bump when the build below changes in a way the recipe dict does not capture.
BUILD_VERSION = 1
MARKER = "tier3-tiny-student.json"

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, START_HEADER, END_HEADER, EOT)
# Thinking delimiters are whole tokens (not special: decode keeps them) so the student
# learns them as one symbol each.
THINK_TOKENS = ("<think>", "</think>")

# Llama 3's layout. The {% generation %} span covers the content and the end-of-turn token, the
# token the model must learn to emit to stop.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- generation %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def recipe(seed: int = 0) -> dict:
    """Everything that determines the built model; its hash names the cache entry."""
    return {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "task": TaskSettings().task,
        "vocab_size": 1024,
        "corpus_queries": 600,
        "model": {
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": True,
        },
        "chat_template": CHAT_TEMPLATE,
    }


def recipe_hash(seed: int = 0) -> str:
    text = json.dumps(recipe(seed), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _corpus(seed: int, queries: int) -> Iterator[str]:
    """The task's text as the student will see it: its messages, thinking, answers."""
    from tier3.schemas.registry import EXPERIENCE
    from tier3.streams.demo.simulate import simulate

    task = configured_task()
    for event in simulate(queries, seed, task=task):
        if event.event != EXPERIENCE:
            continue
        query, context = event.record["query"], json.loads(event.record["context"])
        for message in task.render(query, context):
            yield message["content"]
        yield assistant_turn(
            task.reference_thinking(query, context),
            json.dumps(task.reference_answer(query, context)),
        )


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE tokenizer trained on ``texts``, with Llama-3-like special tokens and
    the chat template; returned as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[START_HEADER, END_HEADER, EOT],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(list(THINK_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_student(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny student into ``path`` (model, tokenizer, chat template); return ``path``.

    A folder already holding this recipe's build is left as it is. Otherwise the model is built
    in a sibling temporary folder and renamed into place, so a reader never sees half a model.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    target = Path(path)
    digest = recipe_hash(seed)
    if _built(target, digest):
        return target
    spec = recipe(seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = train_tokenizer(
            _corpus(seed, spec["corpus_queries"]),
            spec["vocab_size"],
            spec["model"]["max_position_embeddings"],
        )
        eot_id = tokenizer.convert_tokens_to_ids(EOT)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[tokenizer.eos_token_id, eot_id],
            pad_token_id=tokenizer.pad_token_id,
            **spec["model"],
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[eot_id, tokenizer.eos_token_id],
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"recipe_hash": digest, **spec}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same build first; theirs is as good as ours.
            if not _built(target, digest):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cached_tiny_student(cache_root: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """The tiny student under ``cache_root`` (default ``$TIER3_TINY_CACHE`` or ~/.cache/tier3),
    built on first use and reused while the recipe stays the same."""
    root = Path(
        cache_root
        or os.environ.get("TIER3_TINY_CACHE")
        or Path.home() / ".cache" / "tier3" / "tiny-students"
    )
    return build_tiny_student(root / f"tiny-student-{recipe_hash(seed)}", seed)


def _built(target: Path, digest: str) -> bool:
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("recipe_hash") == digest
    except json.JSONDecodeError:
        return False
