"""The trained student as Ollama serves it (q4_k_m): does quantization keep what training taught?

Takes the F16 GGUF that ``learning_proof.py --gguf`` exported, registers it in a running Ollama
server with ``trainers.ollama_deploy.register`` (Ollama quantizes to q4_K_M), and evaluates the
served model on the same held-out queries as the learning proof (same seed, same split), one
query at a time through the router's Ollama adapter, as the backend would call it.

    ollama serve &   # OLLAMA_HOST=127.0.0.1:11434
    python bench/served_student.py --gguf widget-student-f16.gguf --host http://127.0.0.1:11434
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_proof import _ensure_tier3_importable, synthetic_traces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--host", default="http://127.0.0.1:11434")
    parser.add_argument("--name", default="cc-widget-selector-v2")
    parser.add_argument("--queries", type=int, default=6000)
    parser.add_argument("--eval-share", type=float, default=0.05)
    parser.add_argument("--max-eval", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _ensure_tier3_importable()
    import ollama
    from tier3.streams.backend.router import ollama_chat
    from tier3.trainers.release.evaluate import evaluate, held_out_from_traces, replies_from
    from tier3.trainers.release.ollama_deploy import register
    from tier3.trainers.training.dataset import build_dataset, request_id_for

    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        client = ollama.Client(host=args.host)
        registered = register(client, args.gguf, args.name)
        traces = synthetic_traces(args.queries, args.seed)
        ids = sorted(traces)
        request = {"request_id": request_id_for("proof", ids), "model": "proof", "query_ids": ids}
        built = build_dataset(request, traces, args.eval_share, "served")
        held_out = held_out_from_traces(built.manifest, traces)[: args.max_eval]
        chat = ollama_chat(client, options={"num_predict": 200})
        started = time.perf_counter()
        replies = replies_from(lambda messages: chat(args.name, messages), held_out)
        metrics = evaluate(held_out, replies)
    summary = {
        "served": {"name": registered.ollama_name, "digest": registered.digest},
        "quantization": registered.quantization,
        **metrics.headline(),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "sample_reply": replies[0].text if replies else "",
    }
    print(json.dumps(summary, indent=2), file=real_stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
