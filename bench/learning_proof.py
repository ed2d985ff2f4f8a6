"""Learning proof: the pipeline's SFT teaches a small student the widget task, before vs after.

Run by hand (on the lent GPU for the real proof, on a CPU with ``--smoke``):

    PYTHONPATH=<folder where tier3 maps to the repo> python bench/learning_proof.py [--smoke]

(With no such folder on the path the script makes one: a temporary ``tier3`` link to the repo.)

What it does, with the project's own code at every step:

1. synthesizes traces of the demo's widget-selection task (``streams.simulate`` queries, the
   reference teacher's thinking and answer, ``widgets``), as the capture stage records them;
2. builds the dataset with ``trainers.dataset.build_dataset`` (hash split, held-out queries
   never trained on);
3. builds the student offline: the tiny model's BPE tokenizer and chat template
   (``trainers.tiny_model``) on a LLaMA body with random weights, sized by ``--hidden`` and
   ``--layers`` (nothing can be downloaded on the lent machine, so the student starts from
   nothing: "near zero before" is literal);
4. evaluates it on the held-out split (``trainers.evaluate``), trains it with
   ``trainers.sft.train`` (TRL SFTTrainer + PEFT LoRA; LoRA on every linear layer and the
   embeddings, since a random base has no features worth keeping frozen; TRL refuses an adapter
   on the output layer), merges, and evaluates again;
5. prints a JSON summary (also ``$OUT/learning_proof.json`` when OUT is set) and exits 0 when
   the goal is met: >= 99% JSON validity and >= 90% selection agreement after training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _ensure_tier3_importable() -> None:
    try:
        import tier3.streams  # noqa: F401
    except ImportError:
        link_root = Path(tempfile.mkdtemp(prefix="tier3-path-"))
        (link_root / "tier3").symlink_to(REPO, target_is_directory=True)
        sys.path.insert(0, str(link_root))


def synthetic_traces(n: int, seed: int) -> dict[str, dict]:
    """Traces as the capture stage writes them, with the reference teacher's answers."""
    from tier3.schemas.registry import EXPERIENCE
    from tier3.streams.demo.simulate import simulate
    from tier3.tasks import widgets

    traces = {}
    for event in simulate(n, seed):
        if event.event != EXPERIENCE:
            continue
        r = event.record
        context = json.loads(r["context"])
        traces[r["query_id"]] = {
            "query_id": r["query_id"],
            "created_at": r["timestamp"],
            "query": r["query"],
            "context": r["context"],
            "teacher_thinking": widgets.reference_thinking(r["query"], context),
            "teacher_answer": json.dumps(widgets.reference_answer(r["query"], context)),
            "teacher_latency_ms": r["latency_ms"],
            "teacher_answer_valid": True,
            "object_uri": "",
        }
    return traces


def build_student(path: Path, hidden: int, layers: int, seed: int) -> Path:
    """The tiny model's tokenizer on a LLaMA body of the given size, random weights."""
    import torch
    from tier3.trainers.training.tiny_model import cached_tiny_student
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_student(path.parent / "tiny-cache"))
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    heads = max(2, hidden // 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, eot],
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [eot, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def measure(model_dir: Path, examples: list, args: argparse.Namespace) -> dict:
    from tier3.trainers.release.evaluate import evaluate, generate_with_transformers

    started = time.perf_counter()
    replies = generate_with_transformers(
        model_dir, examples, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch
    )
    metrics = evaluate(examples, replies)
    out = metrics.headline()
    out["eval_seconds"] = round(time.perf_counter() - started, 1)
    out["sample_reply"] = replies[0].text[:400] if replies else ""
    return out


def main() -> int:
    # Libraries print progress on stdout; the summary must be the only thing there.
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        summary = run(parse_args())
    text = json.dumps(summary, indent=2, default=str)
    print(text, file=real_stdout)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "learning_proof.json").write_text(text)
    return 0 if summary["goal"]["met"] or summary["mode"] == "smoke" else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny CPU run (about 2 minutes).")
    parser.add_argument("--queries", type=int, default=6000, help="Synthetic traces.")
    parser.add_argument("--eval-share", type=float, default=0.05)
    parser.add_argument("--max-eval", type=int, default=300, help="Held-out queries evaluated.")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Keep artefacts here.")
    parser.add_argument(
        "--gguf", type=Path, default=None, help="Also export the trained student here (F16 GGUF)."
    )
    args = parser.parse_args()
    if args.smoke:
        args.queries, args.max_eval, args.hidden, args.layers = 240, 12, 256, 2
        args.max_steps, args.batch, args.eval_batch, args.max_new_tokens = 30, 8, 12, 48
    return args


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _ensure_tier3_importable()
    from tier3.streams.processors.training_requests import request_id
    from tier3.trainers.release.evaluate import held_out_from_traces
    from tier3.trainers.training.dataset import build_dataset
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import device_type, train

    work = args.work or Path(tempfile.mkdtemp(prefix="tier3-learning-proof-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    traces = synthetic_traces(args.queries, args.seed)
    ids = sorted(traces)
    request = {"request_id": request_id("proof", ids), "model": "proof", "query_ids": ids}
    student = build_student(work / "base", args.hidden, args.layers, args.seed)
    built = build_dataset(request, traces, args.eval_share, str(student))
    held_out = held_out_from_traces(built.manifest, traces)[: args.max_eval]

    before = measure(student, held_out, args)
    modules = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,embed_tokens"
    config = TrainerSettings(
        base_model=str(student),
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch,
        lora_r=args.lora_r,
        lora_alpha=args.lora_r,
        lora_dropout=0.0,
        target_modules=modules,
        max_length=512,
        logging_steps=10,
        save_steps=100_000,
        progress="logs",
        seed=args.seed,
    )
    outcome = train(built, config, work / "run", merge=True)
    assert outcome.merged_dir is not None
    after = measure(outcome.merged_dir, held_out, args)

    exported = None
    if args.gguf:
        from tier3.trainers.release.gguf_export import export_gguf

        result = export_gguf(outcome.merged_dir, args.gguf, name="widget-student")
        exported = {"path": str(result.path), "sha256": result.sha256}
    goal = after["json_validity_rate"] >= 0.99 and after["selection_agreement"] >= 0.90
    summary = {
        "mode": "smoke" if args.smoke else "full",
        "device": device_type(),
        "gpu": _gpu_name(),
        "traces": len(traces),
        "train_examples": len(built.train),
        "held_out_evaluated": len(held_out),
        "student": {"hidden": args.hidden, "layers": args.layers, "lora_r": args.lora_r},
        "before": before,
        "after": after,
        "training": outcome.metrics,
        "goal": {"json_validity": 0.99, "selection_agreement": 0.90, "met": goal},
        "gguf": exported,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "work_dir": str(work),
    }
    return summary


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
