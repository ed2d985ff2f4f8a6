"""``tier3 demo``: the whole loop on the embedded defaults, on a laptop with no Docker and no keys.

It starts the local broker, creates a fresh set of topics (a per-run prefix, so a second demo
starts clean), runs every stage as its own process exactly as an operator would (`tier3 run
sampler|counter|capture|trainer|release`), publishes simulated backend traffic, and narrates
what each stage did as it happens, from the topics themselves. The teacher and student are the
offline providers unless `ANTHROPIC_API_KEY` / `OLLAMA_HOST` say otherwise; the student trained is
the tiny offline model, on the CPU. The demo ends with the evaluation report and a GGUF export
(and an Ollama deployment when an Ollama server answers).

The stages are processes, not imports: `streams` sits below `consumers` and `trainers`, and the
demo drives them the way production does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from tier3.schemas import SingleObjectCodec
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import run_simulation
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.kafka.topics import (
    CAPTURE_JOBS,
    TRACES,
    TRAINING_REQUESTS,
    TRAINING_RESULTS,
    create_topics,
)
from tier3.streams.local.kafka_broker import BrokerError, LocalBroker

console = Console(stderr=True, highlight=False)
TIER3 = str(Path(sys.executable).with_name("tier3"))


@dataclass
class Stage:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class Demo:
    settings: KafkaSettings
    home: Path
    run_dir: Path
    env: dict[str, str]
    stages: list[Stage] = field(default_factory=list)

    def start(self, name: str, *args: str) -> None:
        log = self.run_dir / f"{name}.log"
        process = subprocess.Popen(
            [TIER3, "run", *args],
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.stages.append(Stage(name, process, log))
        console.print(f"  [dim]started[/] {name} (pid {process.pid}, log {log})")

    def check_alive(self) -> None:
        for stage in self.stages:
            code = stage.process.poll()
            if code not in (None, 0):
                tail = stage.log.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{stage.name} exited with {code}:\n" + "\n".join(tail))

    def stop_all(self) -> None:
        for stage in self.stages:
            if stage.process.poll() is None:
                stage.process.send_signal(signal.SIGTERM)
        for stage in self.stages:
            try:
                stage.process.wait(30)
            except subprocess.TimeoutExpired:
                stage.process.kill()


def _events(settings: KafkaSettings, topic: str) -> list[tuple[str | None, str, dict]]:
    """(key, event type, record) of every event on ``topic``; tombstones and junk left out."""
    codec = SingleObjectCodec()
    found = []
    for msg in read_to_end(settings, topic):
        if msg.value() is None:
            continue
        try:
            decoded = codec.decode(msg.value())
        except ValueError:
            continue
        key = msg.key().decode() if msg.key() else None
        found.append((key, decoded.name, decoded.record))
    return found


def _ollama_answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/api/version", timeout=2):
            return True
    except OSError:
        return False


def _stage_env(settings: KafkaSettings, home: Path, base_model: Path, min_traces: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update(
        TIER3_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TIER3_TOPIC_PREFIX=settings.topic_prefix,
        TIER3_PARTITIONS=str(settings.partitions),
        TIER3_HOME=str(home),
        TIER3_LOG_JSON="1",
        TIER3_MIN_TRACES=str(min_traces),
        TIER3_SAMPLING_TIMEOUT_S="3",
        TIER3_TRAIN_BASE_MODEL=str(base_model),
        TIER3_TRAIN_MAX_STEPS="40",
        TIER3_TRAIN_PER_DEVICE_TRAIN_BATCH_SIZE="4",
        TIER3_TRAIN_MAX_SEQ_LENGTH="512",
        TIER3_TRAIN_LEARNING_RATE="2e-3",
        TIER3_TRAIN_SAVE_STEPS="20",
        TIER3_TRAIN_LOGGING_STEPS="5",
        TIER3_TRAIN_PROGRESS="logs",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if not env.get("ANTHROPIC_API_KEY"):
        env["TIER3_TEACHER_PROVIDER"] = "offline"
    if not env.get("OLLAMA_HOST"):
        env["TIER3_STUDENT_PROVIDER"] = "offline"
    return env


def demo(
    events: Annotated[int, typer.Option("--events", "-n", help="Experiences to simulate.")] = 400,
    min_traces: Annotated[int, typer.Option(help="New traces that trigger training.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the simulated traffic.")] = 7,
    port: Annotated[
        int, typer.Option(help="Local broker port.", envvar="TIER3_BROKER_PORT")
    ] = 9092,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1200,
) -> None:
    """Run the whole loop on the embedded defaults and say what happens at each stage."""
    local = LocalSettings()
    home = local.home.resolve()
    run_id = time.strftime("%Y%m%d%H%M%S")
    run_dir = home / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]tier3 demo")
    console.print(f"1. broker: starting a local Kafka (KRaft) under {home / 'broker'}")
    broker = LocalBroker(home=home, port=port)
    try:
        bootstrap = broker.start()
    except BrokerError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, topic_prefix=f"demo{run_id}.", partitions=3
    )
    create_topics(settings)
    console.print(f"   broker at {bootstrap}; topics created with prefix {settings.topic_prefix}")

    console.print(
        "2. student base model: building the tiny offline LLaMA (random weights, "
        "a tokenizer trained here)"
    )
    base_model = home / "models" / "tiny-student"
    built = subprocess.run(
        [TIER3, "student", "build-tiny", str(base_model)], capture_output=True, text=True
    )
    if built.returncode != 0:
        raise typer.Exit(_fail(f"could not build the tiny student:\n{built.stderr[-2000:]}"))

    env = _stage_env(settings, home, base_model, min_traces)
    teacher = (
        "Claude (anthropic)"
        if env.get("ANTHROPIC_API_KEY")
        else (
            "OFFLINE teacher: rule-based answers and reasoning, no Claude call "
            "(no ANTHROPIC_API_KEY)"
        )
    )
    student = (
        f"Ollama at {env['OLLAMA_HOST']}"
        if env.get("OLLAMA_HOST")
        else ("OFFLINE student: a deliberately weak heuristic (no OLLAMA_HOST)")
    )
    console.print(f"   teacher: {teacher}\n   student: {student}")

    ollama_host = env.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    deploy = _ollama_answers(ollama_host)
    d = Demo(settings, home, run_dir, env)
    console.print("3. stages: one process each, as an operator runs them")
    try:
        d.start("sampler", "sampler", "--workdir", str(run_dir / "sampler"))
        d.start("counter", "counter", "--workdir", str(run_dir / "counter"))
        d.start("capture", "capture")
        d.start("trainer", "trainer", "--max-requests", "1")
        d.start(
            "release",
            "release",
            "--max-runs",
            "1",
            *(["--ollama-host", ollama_host] if deploy else ["--no-deploy"]),
        )
        _narrate(d, events, seed, min_traces, timeout, deploy)
    finally:
        d.stop_all()
    console.rule("[bold green]demo done")
    console.print(f"The broker keeps running: `tier3 broker stop --port {port}` stops it.")
    console.print(
        f"Logs of every stage: {run_dir}\n"
        f"See it all again: TIER3_TOPIC_PREFIX={settings.topic_prefix} "
        f"TIER3_BOOTSTRAP_SERVERS={bootstrap} tier3 status"
    )


def _fail(message: str) -> int:
    console.print(f"[bold red]error:[/] {message}")
    return 1


def _narrate(
    d: Demo, events: int, seed: int, min_traces: int, timeout: float, deploy: bool
) -> None:
    settings = d.settings
    time.sleep(8)  # let the Faust workers join their groups before traffic comes
    console.print(
        f"4. backend: publishing {events} simulated widget-selection queries "
        "(answers, then delayed feedback)"
    )
    publisher = Publisher(settings, enabled=True)
    counts = run_simulation(publisher, events, seed, rate=400)
    publisher.close()
    console.print(
        f"   published {counts['Experience']} experiences and {counts['Feedback']} feedback events"
    )

    deadline = time.monotonic() + timeout
    said: set[str] = set()
    request_id = None
    while time.monotonic() < deadline:
        d.check_alive()
        jobs = _events(settings, CAPTURE_JOBS)
        traces = {k for k, _, _ in _events(settings, TRACES)}
        requests = _events(settings, TRAINING_REQUESTS)
        results = _events(settings, TRAINING_RESULTS)
        if jobs and len(jobs) != getattr(d, "_jobs_said", 0):
            d._jobs_said = len(jobs)  # type: ignore[attr-defined]
            reasons: dict[str, int] = {}
            for _, _, job in jobs:
                reasons[job["reason"]] = reasons.get(job["reason"], 0) + 1
            console.print(
                f"5. sampler: {len(jobs)} capture jobs so far "
                f"({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})"
            )
        if traces and len(traces) != getattr(d, "_traces_said", 0):
            d._traces_said = len(traces)  # type: ignore[attr-defined]
            console.print(
                f"6. capture: {len(traces)} traces (teacher thinking + answer beside "
                "the student's) in object storage and on the compacted topic"
            )
        if requests and "request" not in said:
            said.add("request")
            _, _, req = requests[0]
            request_id = req["request_id"]
            console.print(
                f"7. counter: {min_traces} distinct new traces reached: "
                f"TrainingRequested {request_id} ({req['trace_count']} traces)"
            )
            console.print(
                "8. trainer: fine-tuning the tiny student with TRL SFT + LoRA on the "
                "CPU (see trainer.log for progress)"
            )
        for _, name, record in results:
            if name in said or record.get("request_id") != request_id:
                continue
            said.add(name)
            _say_result(name, record)
            if name == "TrainingFailed":
                raise typer.Exit(1)
        if "EvalReport" in said and (not deploy or "ModelDeployed" in said):
            break
        time.sleep(2)
    else:
        raise typer.Exit(_fail(f"the loop did not finish within {timeout:.0f}s; see {d.run_dir}"))
    if request_id and not deploy:
        out = d.run_dir / "student.gguf"
        console.print(f"11. export: merging the adapter and writing GGUF to {out}")
        exported = subprocess.run(
            [TIER3, "export", "--request-id", request_id, "--out", str(out)],
            env=d.env,
            capture_output=True,
            text=True,
        )
        if exported.returncode != 0:
            raise typer.Exit(_fail(f"export failed:\n{exported.stderr[-2000:]}"))
        console.print(
            f"    wrote {out} ({out.stat().st_size / 1e6:.1f} MB). No Ollama server "
            "answered, so no deployment: start `ollama serve` and run "
            f"`tier3 deploy --request-id {request_id}` (quantizes to q4_k_m)."
        )
        if shutil.which("ollama") is None:
            console.print("    (no `ollama` on PATH: scripts/build-ollama.sh builds one)")


def _say_result(name: str, r: dict) -> None:
    if name == "TrainingCompleted":
        m = r["metrics"]
        console.print(
            f"9. trainer: done: {r['train_examples']} examples trained, "
            f"{r['eval_examples']} held out; train loss {m.get('train_loss', 0):.3f}; "
            f"adapter at {r['adapter_uri']}"
        )
    elif name == "TrainingFailed":
        console.print(f"[red]9. trainer: failed at {r['stage']}: {r['reason']}[/]")
    elif name == "EvalReport":
        verdict = "[green]passed[/]" if r["passed"] else "[yellow]did not pass[/]"
        console.print(
            f"10. evaluation on {r['examples']} held-out queries: JSON validity "
            f"{r['json_validity_rate']:.0%}, selection agreement {r['selection_agreement']:.0%}, "
            f"score match {r['score_match_rate']:.0%}; gate {verdict} "
            f"(a tiny CPU model trained for seconds is not expected to pass; the GPU run in "
            f"bench/RESULTS.md does). Report: {r['report_uri']}"
        )
    elif name == "ModelDeployed":
        console.print(
            f"11. deploy: {r['ollama_name']} ({r['quantization']}, {r['digest'][:19]}) "
            "registered in Ollama"
        )


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    app.command("demo")(demo)
