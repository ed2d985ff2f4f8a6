#!/usr/bin/env python3
"""The flywheel's turn on one GPU: from a TrainingRequested for 1,000 traces to a model that
Ollama serves at q4_k_m, each phase timed.

What runs is tier3's own code, phase by phase, in the order the trainer and the release stage
run it; only Kafka is left out, because the lent GPU machine has no broker (and reaches
nothing): the TrainingRequested record and the 1,000 traces are made here, in memory, and each
goes through tier3's Avro codec (encoded and decoded, as the training-requests and traces
topics would carry them) before the trainer's functions get them. The base is the
Llama-3.2-1B shape with random weights (``bench_trainer_gpu.LLAMA_1B``) and a tokenizer trained
here, since nothing can be downloaded there. The phases:

1. **loading**: the dataset rebuilt from the request's query_ids (``build_dataset``), the base
   on the GPU and TRL's trainer ready (tokenized, packed), up to the first training step;
2. **training**: ``sft.train`` with the trainer's settings (TIER3_TRAIN_* and ``--train``);
3. **evaluation**: the held-out loss, then the release's judgment of the checkpoint: greedy
   replies to the held-out queries with transformers on the GPU (``generate_with_transformers``),
   scored against the teacher (``evaluate``) and gated (``decide``). The release stage with an
   Ollama client evaluates the model *as served* instead; the Ollama carried to the GPU machine
   is a CPU build, so that would time a CPU, not the turn. Random weights fail the gate; the
   turn goes on regardless, since its time is what is measured;
4. **merge**: the adapter saved, folded into the base on the GPU, the merged weights saved
   (``merge_weights``);
5. **GGUF export**: ``export_gguf`` (F16);
6. **quantization**: Ollama's ``create`` with ``quantize="q4_K_M"`` (``ollama_deploy.register``);
7. **registration**: the F16 file sent to Ollama as a blob, the model shown (its quantization
   read back) and its first chat reply (``num_predict`` 8): the model is served.

Before the turn, not counted in it: Python's imports, the random base written to disk and an
``ollama serve`` started (``--ollama``: the binary, or the ``.gz`` that docs/gpu.md carries).
Progress lines go to stderr as phases end; the JSON summary to stdout (and ``$OUT/flywheel.json``),
a table of the phases last. Budget: the turn in at most 5 minutes.

    python3 bench/flywheel_gpu.py --ollama .ollama/ollama.gz          # on the GPU (docs/gpu.md)
    .venv/bin/python bench/flywheel_gpu.py --smoke                    # a CPU check, ~3 minutes
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_trainer_gpu as bench  # the model shapes and the tier3 mapping

BUDGET_S = 300.0
OLLAMA_DEFAULT = Path.home() / ".cache/tier3/ollama-v0.17.4-x86-64-v3/bin/ollama"
# A shape k-quants work on (rows of 256) with a vocabulary larger than the tokenizer's, as the
# 1B shape has: the smoke run goes through the same export and quantization paths.
SMOKE = {**bench.TINY, "hidden_size": 256, "intermediate_size": 512, "vocab_size": 2048}
STARTED = time.perf_counter()


def say(message: str) -> None:
    print(
        f"[flywheel +{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True
    )


class Phases:
    """Wall time per phase, said as each one ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.mark = time.perf_counter()

    def end(self, phase: str, note: str = "") -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self.mark
        self.mark = now
        say(f"{phase}: {self.seconds[phase]:.1f} s {note}".rstrip())

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds


# -- the request and its traces -------------------------------------------------------------------


def traces_and_request(count: int, max_tokens: int, model: str) -> tuple[dict, dict]:
    """``count`` traces as the capture stage writes them (thinking lengths log-normal, median a
    quarter of ``max_tokens``, as in bench_trainer_gpu), and the counter's TrainingRequested for
    them; both through tier3's Avro codec, as Kafka would carry them."""
    from tier3.schemas.codec import SingleObjectCodec
    from tier3.schemas.registry import TRACE, TRAINING_REQUESTED
    from tier3.streams.processors.training_requests import training_request
    from tier3.tasks import widgets

    codec, rng, traces = SingleObjectCodec(), random.Random(0), {}
    for i in range(count):
        q = widgets.random_query(rng)
        target = min(max_tokens, int(rng.lognormvariate(math.log(max_tokens / 4), 0.7)))
        thought = widgets.reference_thinking(q.text, q.context)
        query_id = f"q-{i:05d}"
        record = {
            "query_id": query_id,
            "created_at": 1_700_000_000_000 + i,
            "query": q.text,
            "context": json.dumps(q.context),
            "capture_reason": "random",
            "teacher_provider": "offline",
            "teacher_model": "reference-rules",
            "teacher_thinking": " ".join(thought for _ in range(max(1, target // 80))),
            "teacher_answer": json.dumps(widgets.reference_answer(q.text, q.context)),
            "teacher_latency_ms": 900.0,
            "teacher_input_tokens": 300,
            "teacher_output_tokens": target,
            "student_provider": "ollama",
            "student_model": "base",
            "student_answer": "{}",
            "student_latency_ms": 100.0,
            "object_uri": f"file:///traces/{query_id}.json",
        }
        traces[query_id] = codec.decode(codec.encode(TRACE, record), expect=TRACE).record
    request = training_request(model, sorted(traces), "threshold")
    request = codec.decode(
        codec.encode(TRAINING_REQUESTED, request), expect=TRAINING_REQUESTED
    ).record
    return request, traces


# -- Ollama ---------------------------------------------------------------------------------------


def ollama_binary(given: Path, into: Path) -> Path:
    """The binary at ``given``: as it is, gunzipped (``.gz``), or joined from ``given.part*``."""
    parts = sorted(given.parent.glob(given.name + ".part*"))
    if not given.exists() and parts:
        joined = into / given.name
        with joined.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        given = joined
    if given.suffix == ".gz":
        binary = into / "ollama"
        with gzip.open(given, "rb") as src, binary.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        given = binary
    given.chmod(0o755)
    return given


@contextlib.contextmanager
def ollama_serve(binary: Path, home: Path):
    """``ollama serve`` on a free port with its own model store; yields its URL."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "HOME": str(home),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(home / "models"),
        "OLLAMA_NOPRUNE": "1",
        "OLLAMA_MAX_LOADED_MODELS": "1",
    }
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/api/version", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        else:
            raise RuntimeError("ollama serve did not answer in 60 s")
        if proc.poll() is not None:
            raise RuntimeError(f"ollama serve exited: {(home / 'serve.log').read_text()[-1500:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class TimedClient:
    """An ``ollama.Client`` whose calls are timed by method name, so that ``register``'s one
    call splits into sending the blob, quantizing (``create``) and reading back (``show``)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


# -- the turn -------------------------------------------------------------------------------------


def turn(args: argparse.Namespace, work: Path, base_dir: Path, url: str) -> dict:
    import ollama
    from tier3.trainers.release.evaluate import (
        default_batch_size,
        evaluate,
        generate_with_transformers,
        held_out_from_traces,
    )
    from tier3.trainers.release.gate import decide
    from tier3.trainers.release.gguf_export import GGUF_NAME, export_gguf
    from tier3.trainers.release.ollama_deploy import QUANTIZATION, register
    from tier3.trainers.release.settings import ReleaseSettings
    from tier3.trainers.training.dataset import build_dataset
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import train
    from transformers import TrainerCallback

    settings = TrainerSettings(
        **{"base_model": str(base_dir), "progress": "logs", "save_steps": 10**6, **args.train}
    )
    release = ReleaseSettings(**args.release)
    phases = Phases()

    class Marks(TrainerCallback):
        """Ends the loading phase at the first step, training at the last, the loss at eval."""

        def on_train_begin(self, a, state, control, **kw):
            phases.end("loading", f"(to step 0 of {state.max_steps})")

        def on_train_end(self, a, state, control, **kw):
            phases.end("training", f"({state.global_step} steps)")

        def on_evaluate(self, a, state, control, metrics=None, **kw):
            phases.end("evaluation", f"(held-out loss {(metrics or {}).get('eval_loss', 0):.3f})")

    request, traces = traces_and_request(args.traces, settings.max_length, settings.student_model)
    say(f"TrainingRequested {request['request_id'][:12]}: {request['trace_count']} traces")
    phases.mark = time.perf_counter()  # the turn starts with the request in hand
    built = build_dataset(request, traces, settings.eval_share, settings.base_model)
    say(f"dataset: {len(built.train)} to train on, {len(built.eval)} held out")
    outcome = train(built, settings, work / "run", merge=True, callbacks=[Marks()])
    phases.end("merge", "(adapter saved, merged on the GPU, saved)")

    examples = held_out_from_traces(built.manifest, traces)[: release.max_examples]
    batch_size = release.batch_size or default_batch_size("cuda")
    replies = generate_with_transformers(
        outcome.merged_dir,
        examples,
        max_new_tokens=release.max_new_tokens,
        batch_size=batch_size,
    )
    metrics = evaluate(examples, replies, tolerance=release.tolerance)
    decision = decide(metrics, release.thresholds)
    phases.end(
        "evaluation",
        f"({len(examples)} replies, batches of {batch_size}, "
        f"JSON validity {metrics.json_validity_rate:.0%}; gate passed: {decision.passed})",
    )

    gguf = export_gguf(outcome.merged_dir, work / "gguf" / GGUF_NAME, name=request["model"])
    size_gib = gguf.path.stat().st_size / 2**30
    phases.end("GGUF export", f"({size_gib:.2f} GiB F16)")

    client = TimedClient(ollama.Client(host=url, timeout=600))
    registered = register(client, gguf.path, release.ollama_name, quantize=QUANTIZATION)
    phases.mark = time.perf_counter()
    phases.add("quantization", client.seconds["create"])
    phases.add("registration", client.seconds["create_blob"] + client.seconds["show"])
    say(
        f"quantization: {client.seconds['create']:.1f} s (create, quantize={QUANTIZATION}); "
        f"blob sent in {client.seconds['create_blob']:.1f} s; served as {registered.quantization}"
    )
    reply = client.chat(
        model=release.ollama_name,
        messages=examples[0].prompt(_task()) if examples else [{"role": "user", "content": "hi"}],
        options={"num_predict": 8},
    )
    phases.end("registration", f"(first reply: {reply.message.content[:40]!r})")

    total = sum(phases.seconds.values())
    biggest = max(phases.seconds, key=phases.seconds.get)
    return {
        "phases_s": {k: round(v, 1) for k, v in phases.seconds.items()},
        "turn_s": round(total, 1),
        "budget_s": BUDGET_S,
        "within_budget": total <= BUDGET_S,
        "biggest_phase": biggest,
        "train_examples": len(built.train),
        "eval_examples": len(built.eval),
        "training": outcome.metrics,
        "evaluation": metrics.headline(),
        "gate": {"passed": decision.passed, "reasons": decision.reasons},
        "gguf_f16_gib": round(size_gib, 2),
        "served": {
            "name": registered.ollama_name,
            "quantization": registered.quantization,
            "digest": registered.digest,
        },
        "ollama_calls_s": {k: round(v, 1) for k, v in client.seconds.items()},
        "settings": {
            "train": settings.resolved(_device()).model_dump(mode="json", exclude={"sft"})
            | {"sft": settings.sft},
            "release": release.model_dump(mode="json", exclude={"thresholds"}),
        },
    }


def _task() -> Any:
    from tier3.tasks.registry import configured_task

    return configured_task()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs (values read as JSON when they parse) into settings overrides."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ollama", type=Path, default=OLLAMA_DEFAULT, help="binary or .gz")
    parser.add_argument("--traces", type=int, default=None, help="traces requested (1000)")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on CPU, a few steps")
    parser.add_argument(
        "--train", action="append", default=[], metavar="FIELD=VALUE",
        help="a TrainerSettings override, e.g. attn_implementation=flex_attention",
    )  # fmt: skip
    parser.add_argument(
        "--release", action="append", default=[], metavar="FIELD=VALUE",
        help="a ReleaseSettings override, e.g. batch_size=128",
    )  # fmt: skip
    args = parser.parse_args()
    args.traces = args.traces or (60 if args.smoke else 1000)
    smoke_train = {"max_steps": 2, "max_length": 256, "per_device_train_batch_size": 2}
    args.train = {**(smoke_train if args.smoke else {}), **parse_pairs(args.train)}
    smoke_release = {"max_examples": 2, "max_new_tokens": 8}
    args.release = {**(smoke_release if args.smoke else {}), **parse_pairs(args.release)}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # libraries print; stdout is for the summary
        say("importing torch, transformers, trl")
        bench.import_tier3()
        import torch

        work = Path(tempfile.mkdtemp(prefix="tier3-flywheel-"))
        binary = ollama_binary(args.ollama, work)
        shape = SMOKE if args.smoke else bench.LLAMA_1B
        with ollama_serve(binary, work / "ollama-home") as url:
            say(f"ollama serving at {url}; writing the random base ({shape['hidden_size']} hidden)")
            base_dir = bench.build_model(shape, work / "base")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            say("the turn starts")
            summary = turn(args, work, base_dir, url)
        summary |= {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "shape": "smoke" if args.smoke else "Llama-3.2-1B (random weights)",
            "traces": args.traces,
            "wall_s_with_setup": round(time.perf_counter() - STARTED, 1),
        }
    text = json.dumps(summary, indent=2, default=str)
    print(text, file=real_stdout, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "flywheel.json").write_text(text)
    sys.stderr.write("\nphase | seconds | share\n")
    for phase, seconds in summary["phases_s"].items():
        share = seconds / summary["turn_s"] if summary["turn_s"] else 0
        sys.stderr.write(f"{phase} | {seconds} | {share:.0%}\n")
    verdict = "within" if summary["within_budget"] else "OVER"
    sys.stderr.write(
        f"turn | {summary['turn_s']} | {verdict} the {BUDGET_S:.0f} s budget; biggest phase: "
        f"{summary['biggest_phase']}\n"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
