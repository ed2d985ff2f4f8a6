#!/usr/bin/env python3
"""GPU benchmark of the trainer: tier3's SFT configuration against stock TRL defaults.

Both runs train the same LoRA adapter shape (tier3's ``lora_config``: r=16 on every linear layer) on
the same synthetic traces, for the same number of steps, at sequence length 2048, on a
Llama-3.2-1B-shaped model with random weights (hidden 2048, 16 layers, 32 heads, 8 kv heads,
intermediate 8192, vocab 128256, tied embeddings), each in its own process:

- ``stock``: ``SFTTrainer(model=<path>, args=SFTConfig(max_length=2048), peft_config=...)``,
  everything else TRL's defaults (fp32 weights loaded by TRL, bf16 autocast, gradient
  checkpointing on, batch 8 padded to its longest example, no packing);
- ``tier3``: tier3's own ``load_base`` + ``sft_config`` + ``lora_config`` and its trainer class
  (``device_metrics.DeviceMetricsSFTTrainer``: per-step metrics read only at log steps), as
  ``tier3 train`` runs them (bf16 weights, no LoRA dropout, padding-free BFD packing with the
  default attention, Liger's kernels when installed, no gradient checkpointing, 4 sequences
  of 2048 tokens per step). Both use the fused AdamW (``adamw_torch_fused``): it is the HF
  Trainer's default with transformers 5, so it is not a difference between the two.

Every run logs every 10 steps (TRL's default ``logging_steps``; a log step reads the loss on the
host), and the clock reads at those steps, so the timed window is steps 10 to ``--steps``.

``--variant NAME:FIELD=VALUE,...`` adds a tier3 run with any TrainerSettings field changed
(the bench's own choices too, e.g. ``logging_steps``), or any other SFTConfig field (passed
through the ``sft`` setting, e.g. ``pad_to_multiple_of=8192``), or ``metrics=trl``: stock TRL's
SFTTrainer class with tier3's configuration (its per-step ``.item()`` reads). The default
before issue 14 is ``before:use_liger_kernel=false,metrics=trl,logging_nan_inf_filter=true``.
Each child's log lines are echoed as they come, prefixed with its configuration, so a stall
shows where it is.

Also reported per run on a GPU: the host-device synchronizations per step, counted by torch
(``torch.cuda.set_sync_debug_mode``) over two warm-up steps, and the source lines that made
them (``syncs_where``).

Reported per run: real (non-padding) tokens per second over the steps after a warm-up, MFU
and peak GPU memory. MFU counts N = the parameters that take part in matrix products: every
linear layer of the decoder plus the (tied) output projection, not the input embedding lookup.

- ``mfu_6n`` uses the customary 6·N FLOPs per token (what full fine-tuning costs).
- ``mfu_4n`` uses 4·N, what LoRA needs: the forward pass (2N) and the gradient with respect to
  the activations through the frozen base (2N); the frozen weights get no gradient, so the
  third 2N is not spent, and the adapter's own FLOPs are under 1% at r=16.

Attention's s² term and the recomputation of gradient checkpointing are not counted (the
latter is work the stock run does but that produces nothing).

Runs on a machine with torch, transformers, peft and accelerate installed; trl, datasets and
tier3's small dependencies may come as wheels on PYTHONPATH. tier3 need not be installed: the
script maps ``tier3.<layer>`` onto this repository's folders. ``--smoke`` runs a tiny shape on
CPU for a quick check. ``--nproc 2`` adds a run of tier3's configuration on 2 GPUs (torchrun).
The JSON summary goes to stdout and, when ``OUT`` is set, to ``$OUT/trainer_bench.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989e12

LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "rope_theta": 500000.0,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def import_tier3() -> None:
    """Make ``tier3.trainers`` etc. importable from this checkout when tier3 is not installed."""
    try:
        import tier3.trainers.training.sft  # noqa: F401

        return
    except ImportError:
        pass
    # A folder holding a ``tier3`` link to this checkout, so each layer imports as a real
    # package (its __init__ runs: ``from tier3.schemas import DecodeError`` needs it).
    link_root = Path(tempfile.mkdtemp(prefix="tier3-path-"))
    (link_root / "tier3").symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(link_root))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(link_root), os.environ.get("PYTHONPATH")])
    )  # the children (bench runs, torchrun) import it too


# -- data -----------------------------------------------------------------------------------------


def synthetic_traces(count: int, max_tokens: int, tokens_per_step: int, seed: int = 0) -> list:
    """Widget-task conversations whose lengths spread like real traces with extended thinking:
    log-normal, median about a quarter of ``max_tokens``, the longest cut at ``max_tokens``."""
    from tier3.tasks import widgets
    from tier3.trainers.training.dataset import assistant_turn

    rng = random.Random(seed)
    traces = []
    for _ in range(count):
        q = widgets.random_query(rng)
        target = min(max_tokens, int(rng.lognormvariate(math.log(max_tokens / 4), 0.7)))
        thought = widgets.reference_thinking(q.text, q.context)
        reps = max(1, target // tokens_per_step)
        thinking = " ".join(thought for _ in range(reps))
        answer = json.dumps(widgets.reference_answer(q.text, q.context))
        traces.append(
            {
                "messages": [
                    {"role": "user", "content": widgets.render_prompt(q.text, q.context)},
                    {"role": "assistant", "content": assistant_turn(thinking, answer)},
                ]
            }
        )
    return traces


def build_model(shape: dict, folder: Path) -> Path:
    """Random weights of ``shape`` and a tokenizer trained here, saved as a bf16 checkpoint."""
    import torch
    from tier3.tasks import widgets
    from tier3.trainers.training.tiny_model import EOT, train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(1)
    corpus = []
    for _ in range(400):
        q = widgets.random_query(rng)
        corpus.append(widgets.render_prompt(q.text, q.context))
        corpus.append(widgets.reference_thinking(q.text, q.context))
    tokenizer = train_tokenizer(corpus, 1024, 1 << 20)
    config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOT)],
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def matmul_params(shape: dict) -> int:
    """N: parameters in matrix products per token (decoder linears + output projection)."""
    d, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = d // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = d * d * 2 + d * kv * 2 + d * i * 3
    return layers * per_layer + d * shape["vocab_size"]


# -- one run --------------------------------------------------------------------------------------


def run_one(which: str, args: argparse.Namespace, overrides: dict) -> dict:
    import torch
    from datasets import Dataset
    from tier3.trainers.training.device_metrics import DeviceMetricsSFTTrainer
    from tier3.trainers.training.sft import load_base, lora_config, sft_config
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        """(step, time, tokens so far) at each logged step, after the GPU has caught up."""

        def __init__(self) -> None:
            self.marks: list[tuple[int, float, float]] = []

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.marks.append((state.global_step, time.perf_counter(), logs["num_tokens"]))

    class SyncCounter(TrainerCallback):
        """Host-device synchronizations per step, counted by torch over two warm-up steps."""

        first, steps = 2, 2

        def __init__(self) -> None:
            self.catcher: Any = None
            self.seen: list = []
            self.result: dict = {}

        def on_step_begin(self, a, state, control, **kw):
            if torch.cuda.is_available() and state.global_step == self.first and not self.catcher:
                self.catcher = warnings.catch_warnings(record=True)
                self.seen = self.catcher.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")

        def on_step_end(self, a, state, control, **kw):
            if self.catcher is not None and state.global_step == self.first + self.steps:
                torch.cuda.set_sync_debug_mode(0)
                self.catcher.__exit__(None, None, None)
                self.catcher = None
                syncs = [w for w in self.seen if "synchroniz" in str(w.message)]
                where = collections.Counter(
                    f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
                    for w in syncs
                )
                self.result = {
                    "syncs_per_step": len(syncs) / self.steps,
                    "syncs_where": dict(where.most_common(8)),
                }

    class Profile(TrainerCallback):
        """torch.profiler over three steps after the warm-up; tables to stderr and $OUT."""

        def __init__(self) -> None:
            self.prof = None

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup and self.prof is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()

        def on_step_end(self, a, state, control, **kw):
            if self.prof is not None and state.global_step == args.warmup + 3:
                self.prof.__exit__(None, None, None)
                averages = self.prof.key_averages()
                sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
                text = "\n".join(
                    averages.table(sort_by=key, row_limit=30) for key in (sort, "cpu_time_total")
                )
                sys.stderr.write(text)
                if os.environ.get("OUT"):
                    Path(os.environ["OUT"], f"trainer_profile_{which}.txt").write_text(text)

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    shape = TINY if args.smoke else LLAMA_1B
    model_dir = Path(args.model_dir)
    traces = synthetic_traces(args.examples, args.seq_len, args.tokens_per_thought)
    dataset = Dataset.from_list(traces)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{which}-"))
    clock, syncs = Clock(), SyncCounter()
    callbacks = [clock, syncs, Profile()] if args.profile else [clock, syncs]
    fields = {k: v for k, v in overrides.items() if k != "metrics"}
    metrics = overrides.get("metrics", "tier3")  # the bench's own key: which trainer class
    tier3_cfg = bench_settings(model_dir, args, fields)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    if which == "stock":
        stock = SFTConfig(
            output_dir=str(out),
            max_length=args.seq_len,
            max_steps=args.steps,
            logging_steps=args.logging_steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not on_gpu,
            **({} if on_gpu else {"bf16": False}),
        )
        trainer = SFTTrainer(
            model=str(model_dir),
            args=stock,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=lora_config(tier3_cfg),
            callbacks=callbacks,
        )
        described = {
            "dtype_weights": "float32 (TRL default)",
            "bf16_autocast": stock.bf16,
            "gradient_checkpointing": stock.gradient_checkpointing,
            "packing": stock.packing,
            "per_device_train_batch_size": stock.per_device_train_batch_size,
            "optim": str(stock.optim),
        }
    else:
        model, tokenizer = load_base(tier3_cfg, device)
        config = sft_config(tier3_cfg, out, device)
        trainer_class = SFTTrainer if metrics == "trl" else DeviceMetricsSFTTrainer
        trainer = trainer_class(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(tier3_cfg),
            callbacks=callbacks,
        )
        resolved = tier3_cfg.resolved(device)
        described = {
            "dtype_weights": "bfloat16" if resolved.bf16 else "float32",
            "bf16_autocast": bool(resolved.bf16),
            "gradient_checkpointing": resolved.gradient_checkpointing,
            "packing": f"{resolved.packing} (bfd, padding-free, {resolved.attn_implementation})",
            "per_device_train_batch_size": resolved.per_device_train_batch_size,
            "optim": resolved.optim,
            "use_liger_kernel": config.use_liger_kernel,
            "pad_to_multiple_of": config.pad_to_multiple_of,
            "logging_nan_inf_filter": config.logging_nan_inf_filter,
            "trainer_class": trainer_class.__name__,
        }
    trainer.train()
    warm = [m for m in clock.marks if m[0] > args.warmup]
    first, last = warm[0], warm[-1]
    tokens_per_s = (last[2] - first[2]) / (last[1] - first[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = matmul_params(shape)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
    return {
        "config": which,
        "overrides": overrides,
        "gpus": world,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "steps_timed": last[0] - first[0],
        "tokens_timed": last[2] - first[2],
        "tokens_per_s": tokens_per_s,
        "mfu_6n": 6 * n * tokens_per_s / (H100_BF16_DENSE * world),
        "mfu_4n": 4 * n * tokens_per_s / (H100_BF16_DENSE * world),
        "peak_mem_gib_rank0": peak,
        "matmul_params_N": n,
        **syncs.result,
        "settings": described,
    }


def bench_settings(model_dir: Path, args: argparse.Namespace, overrides: dict) -> Any:
    """The bench's TrainerSettings with ``overrides`` on top, whichever field they name.

    A key that is a TrainerSettings field overrides it (the bench's own choices too:
    ``logging_steps``, ``max_length``, ``max_steps``, ...); any other key is passed to TRL's
    SFTConfig through the ``sft`` setting (e.g. ``pad_to_multiple_of=8192``), which refuses a key
    SFTConfig does not have.
    """
    from tier3.trainers.training.settings import TrainerSettings

    fields = {
        "base_model": str(model_dir),
        "max_length": args.seq_len,
        "max_steps": args.steps,
        "logging_steps": args.logging_steps,
        "save_steps": 10**9,
        "progress": "logs",
    }
    own = {k: v for k, v in overrides.items() if k in TrainerSettings.model_fields}
    sft = {k: v for k, v in overrides.items() if k not in own}
    return TrainerSettings(**{**fields, **own, "sft": {**own.get("sft", {}), **sft}})


def parse_variant(text: str) -> dict:
    """``name:field=value,field=value`` → overrides of any TrainerSettings field, or of any other
    SFTConfig field (values parsed as JSON if they can be)."""
    _, _, pairs = text.partition(":")
    overrides = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


# -- driver ---------------------------------------------------------------------------------------


def child(
    which: str, args: argparse.Namespace, nproc: int = 1, overrides: dict | None = None
) -> dict:
    """Run one configuration in a fresh process (clean GPU memory), or under torchrun."""
    flags = [
        "--child", which, "--model-dir", args.model_dir, "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--seq-len", str(args.seq_len),
        "--logging-steps", str(args.logging_steps),
        "--examples", str(args.examples), "--tokens-per-thought", str(args.tokens_per_thought),
        "--overrides", json.dumps(overrides or {}),
    ] + (["--smoke"] if args.smoke else []) + (["--profile"] if args.profile else [])  # fmt: skip
    script = [str(Path(__file__).resolve()), *flags]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    else:
        command = [sys.executable]
    env = dict(os.environ)
    if nproc == 1:
        # One visible GPU: with several, the HF Trainer would fall back to nn.DataParallel.
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    returncode, stdout, stderr_tail = stream([*command, *script], env, label=f"{which}/{nproc}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        return {"config": which, "gpus": nproc, "overrides": overrides, "error": stderr_tail}
    result = json.loads(lines[-1])
    # Each run's numbers as soon as it ends: a call cut off at its limit still has them.
    brief = {k: result.get(k) for k in ("tokens_per_s", "mfu_6n", "peak_mem_gib_rank0")}
    sys.stderr.write(
        f"[{which}/{nproc}] result {json.dumps(overrides or {})} {json.dumps(brief)}\n"
    )
    return result


def stream(command: list[str], env: dict, label: str) -> tuple[int, str, str]:
    """Run ``command``, echoing its stderr line by line as it comes (prefixed with ``label``),
    so a slow or stalled child shows where it is; return its status, stdout and stderr's tail."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with tempfile.TemporaryFile(mode="w+") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(f"[{label}] {line}")
            sys.stderr.flush()
            tail.append(line)
        returncode = child.wait()
        out.seek(0)
        return returncode, out.read(), "".join(tail)[-1500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU, a few steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--logging-steps", type=int, default=None, help="log (and clock) every N steps (10)"
    )
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--tokens-per-thought", type=int, default=80)
    parser.add_argument("--nproc", type=int, default=1, help="also run tier3 on this many GPUs")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE,...",
        help="also run tier3 with these overrides of any TrainerSettings or SFTConfig field, "
        "e.g. sdpa:attn_implementation=sdpa or liger:use_liger_kernel=true",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile 3 steps of each run (torch.profiler)"
    )
    parser.add_argument("--only", choices=("stock", "tier3"), help="run one configuration")
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("stock", "tier3"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 8)
    args.logging_steps = args.logging_steps or (1 if args.smoke else 10)
    args.seq_len = args.seq_len or (256 if args.smoke else 2048)
    args.examples = args.examples or (64 if args.smoke else 1200)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import_tier3()
    if args.child:
        result = run_one(args.child, args, json.loads(args.overrides))
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(result))
        return 0

    import torch

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-model-") as folder:
        args.model_dir = str(build_model(TINY if args.smoke else LLAMA_1B, Path(folder)))
        runs = [child(which, args) for which in ("stock", "tier3") if args.only in (None, which)]
        for variant in args.variant:
            runs.append(child("tier3", args, 1, parse_variant(variant)))
        if args.nproc > 1:
            runs.append(child("tier3", args, args.nproc))
    if args.only:
        print(json.dumps(runs, indent=2))
        print_table(runs)
        return 0 if all("error" not in r for r in runs) else 1
    stock, ours = runs[0], runs[1]
    summary = {
        "benchmark": "trainer LoRA SFT, Llama-3.2-1B shape"
        + (" (smoke: tiny, CPU)" if args.smoke else ""),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "torch": torch.__version__,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "runs": runs,
        "wall_s": round(time.time() - started, 1),
    }
    if "tokens_per_s" in stock and "tokens_per_s" in ours:
        summary["speedup_tier3_vs_stock"] = ours["tokens_per_s"] / stock["tokens_per_s"]
        summary["budget_1_5x_met"] = summary["speedup_tier3_vs_stock"] >= 1.5
    for run in runs[2:]:
        if "tokens_per_s" in run and "tokens_per_s" in stock:
            run["speedup_vs_stock"] = run["tokens_per_s"] / stock["tokens_per_s"]
        if "tokens_per_s" in run and "tokens_per_s" in ours:
            run["speedup_vs_tier3"] = run["tokens_per_s"] / ours["tokens_per_s"]
    if args.nproc > 1 and "tokens_per_s" in runs[-1] and "tokens_per_s" in ours:
        summary[f"scaling_{args.nproc}gpu_vs_1gpu"] = (
            runs[-1]["tokens_per_s"] / ours["tokens_per_s"]
        )
    text = json.dumps(summary, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "trainer_bench.json").write_text(text)
    print_table(runs)
    return 0 if all("error" not in r for r in runs) else 1


def print_table(runs: list[dict]) -> None:
    """One line per run on stderr, last, so the end of a remote call's output holds it."""
    sys.stdout.flush()
    sys.stderr.write("\nrun | GPUs | tokens/s | MFU 6N | peak GiB | syncs/step\n")
    for run in runs:
        name = run["config"] + (f" {run['overrides']}" if run.get("overrides") else "")
        if "error" in run:
            sys.stderr.write(f"{name} | {run['gpus']} | error | | |\n")
            continue
        sys.stderr.write(
            f"{name} | {run['gpus']} | {run['tokens_per_s']:,.0f} | {run['mfu_6n']:.1%} | "
            f"{run['peak_mem_gib_rank0']:.1f} | {run.get('syncs_per_step', '-')}\n"
        )


if __name__ == "__main__":
    sys.exit(main())
