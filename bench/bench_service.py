"""Benchmark: what tier3 adds to a web service's requests, driven by vegeta at a constant rate.

The service is ``examples/widget_service`` under uvicorn (``--workers``, default one; with more,
``PROMETHEUS_MULTIPROC_DIR`` is set to a fresh folder per service, so that ``/metrics`` sums the
workers' counts, as the example's README says to run it), the teacher and student the
fake Anthropic and Ollama servers (``python -m tests.support.servers``, each its own process, with
fixed latencies), over real HTTP through the real SDKs. The load generator is vegeta (Go module
proxy, pinned; installed by this script into ``~/.cache/tier3/``): constant-rate, open-loop, so a
slow response cannot hold back the next request and hide latency (coordinated omission).

Scenarios, in one run, each on a fresh service process and topic prefix:

0. **tier3's own time per request**, in-process: ``AsyncRouter.answer`` with instant models,
   publishing on and off, alternated; the part of a request tier3 adds, free of HTTP and noise.
1. **publishing on vs off** at each rate: the same service with ``ENABLE_TIER3_CAPTURE=true``
   (routing + publishing) and ``false`` (routing only), run alternately; p50, p99, max.
   Budget: tier3 adds <= 1 ms to the p99 and no request fails.
2. **broker paused**: publishing on; the broker's JVM gets SIGSTOP for ``--pause`` s mid-attack,
   then SIGCONT. Requests before, during and after are compared; the service's RSS is sampled;
   the publisher's buffer is set small (``--pause-buffer``) so that it fills and drops. After
   SIGCONT every accepted event must reach the topic (counted on the broker) and the drops are
   reported from the service's ``/metrics``. Each worker has its own publisher and buffer.
3. **Ollama down**: the student's URL points at a closed port; the teacher answers every student
   request (``student-fallback``), counted per variant.

vegeta runs at most 2,000 requests at once (``-max-workers``) and gives up on one after 10 s
(status 0 in the tables): a saturated service shows as a lower achieved rate and timeouts.

The broker is a private one (``tier3 broker start --home /tmp/svcbench --port 29192``), stopped at
the end: pausing the shared test broker would stall everyone's tests.

Usage (from the repository root):
    python bench/bench_service.py [--rates 500,2000] [--duration 20] [--pause 30] [--workers 8]
        [--pairs 2] [--lingers 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import datetime
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

import psutil
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from tier3.streams.backend.async_router import AsyncRouter
from tier3.streams.backend.publisher import Publisher
from tier3.streams.backend.router import RoutingSettings
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES, create_topics
from tier3.streams.local.kafka_broker import LocalBroker
from tier3.tasks.widgets import random_query, reference_answer

ROOT = Path(__file__).resolve().parent.parent
TIER3 = str(Path(sys.executable).with_name("tier3"))
VEGETA_VERSION = "v12.13.0"
VEGETA = Path.home() / ".cache" / "tier3" / f"vegeta-{VEGETA_VERSION}" / "bin" / "vegeta"
WORK = Path("/tmp/svcbench")
BROKER_PORT = 29192


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_vegeta() -> str:
    """vegeta from the Go module proxy, built once into the cache."""
    if not VEGETA.exists():
        say(f"installing vegeta {VEGETA_VERSION} (go install, once)")
        subprocess.run(
            ["go", "install", f"github.com/tsenart/vegeta/v12@{VEGETA_VERSION}"],
            env={**os.environ, "GOBIN": str(VEGETA.parent)},
            check=True,
        )
    return str(VEGETA)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(api: str, delay: float) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "tests.support.servers", api, "--delay", str(delay)]
    proc = subprocess.Popen(
        [*command, "--forget-requests"],  # a million requests: keeping them slows the server
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def write_targets(url: str, n: int = 2000) -> Path:
    """vegeta's JSON targets: n distinct users (so the split splits), widget queries."""
    rng = random.Random(1)
    path = WORK / "targets.jsonl"
    with path.open("w") as out:
        for i in range(n):
            q = random_query(rng)
            body = {
                "query": q.text,
                "context": q.context,
                "user_id": f"user-{i}",
                "session_id": f"session-{i}",
            }
            out.write(
                json.dumps(
                    {
                        "method": "POST",
                        "url": f"{url}/select",
                        "header": {"Content-Type": ["application/json"]},
                        "body": base64.b64encode(json.dumps(body).encode()).decode(),
                    }
                )
                + "\n"
            )
    return path


# -- the service under test ---------------------------------------------------------------------


class Service:
    """The example under uvicorn, ``workers`` processes; their RSS and CPU (summed over the
    uvicorn process and its workers) sampled every 0.25 s."""

    def __init__(
        self, env: dict[str, str], broker_pid: int | None = None, workers: int = 1
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = WORK / f"service-{self.port}.log"
        self.workers = workers
        if workers > 1:  # prometheus_client's multiprocess mode: an empty folder per service
            metrics_dir = WORK / f"metrics-{self.port}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "app:app",
                    "--app-dir",
                    str(ROOT / "examples" / "widget_service"),
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                    "--no-access-log",
                    "--log-level",
                    "info",
                    "--backlog",
                    "4096",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.ps = psutil.Process(self.proc.pid)
        self.broker = psutil.Process(broker_pid) if broker_pid else None
        self.rss: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float, float]] = []  # (t, service CPU s, broker CPU s)
        self._stop = threading.Event()
        deadline = time.monotonic() + 120
        while not (self._started() and self._answers()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _started(self) -> bool:
        """Every worker has run the app's start-up (uvicorn logs it once per worker)."""
        return self.log.read_text().count("Application startup complete") >= self.workers

    def _answers(self) -> bool:
        try:
            return urlopen(f"{self.url}/healthz", timeout=1).status == 200
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(psutil.Error):
                now = time.time()
                self.rss.append((now, self.rss_bytes()))
                broker = sum(self.broker.cpu_times()[:2]) if self.broker else 0.0
                self.cpu.append((now, self.cpu_seconds(), broker))

    def processes(self) -> list[psutil.Process]:
        """The uvicorn process and its workers."""
        return [self.ps, *self.ps.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def metrics(self) -> dict[str, float]:
        """The service's /metrics; an overloaded service answers once its backlog is done."""
        deadline = time.monotonic() + 180
        while True:
            try:
                text = urlopen(f"{self.url}/metrics", timeout=30).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                label = ",".join(f"{v}" for v in s.labels.values())
                out[f"{s.name}[{label}]" if label else s.name] = s.value
        return out

    def stop(self) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def service_env(settings: KafkaSettings, teacher: str, student: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update(
        {
            "TIER3_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TIER3_TOPIC_PREFIX": settings.topic_prefix,
            "ANTHROPIC_API_KEY": "sk-bench",
            "TIER3_ANTHROPIC_BASE_URL": teacher,
            "TIER3_OLLAMA_HOST": student,
            "USE_FINETUNED_MODEL": "true",
            "TIER3_STUDENT_PERCENT": "50",
            "TIER3_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
    )
    return env


# -- vegeta ---------------------------------------------------------------------------------------


def attack(vegeta: str, targets: Path, rate: int, seconds: float, name: str) -> Path:
    """A constant-rate attack; its results file. Prints a line every 5 s while it runs."""
    out = WORK / f"{name}.bin"
    cmd = [
        vegeta,
        "attack",
        "-format=json",
        f"-targets={targets}",
        f"-rate={rate}/s",
        f"-duration={seconds}s",
        "-timeout=10s",
        "-max-workers=2000",
        f"-name={name}",
        f"-output={out}",
    ]
    proc = subprocess.Popen(cmd)
    started = next_line = time.monotonic()
    while proc.poll() is None:
        time.sleep(0.25)
        if time.monotonic() >= next_line + 5:
            next_line += 5
            elapsed = time.monotonic() - started
            say(f"  {name}: {elapsed:.0f}/{seconds:.0f} s, load {os.getloadavg()[0]:.1f}")
    if proc.returncode:
        raise RuntimeError(f"vegeta attack failed ({proc.returncode})")
    return out


def report(vegeta: str, results: Path) -> dict:
    done = subprocess.run(
        [vegeta, "report", "-type=json", str(results)], capture_output=True, text=True, check=True
    )
    r = json.loads(done.stdout)
    lat = r["latencies"]
    return {
        "requests": r["requests"],
        "rate": round(r["rate"], 1),
        "throughput": round(r["throughput"], 1),
        "success": r["success"],
        "status_codes": r["status_codes"],
        "errors": r["errors"][:5],
        "p50_ms": lat["50th"] / 1e6,
        "p90_ms": lat["90th"] / 1e6,
        "p99_ms": lat["99th"] / 1e6,
        "max_ms": lat["max"] / 1e6,
        "mean_ms": lat["mean"] / 1e6,
    }


def per_request(vegeta: str, results: Path) -> list[tuple[float, float, int]]:
    """(sent at, unix s; latency, ms; status code) of every request."""
    done = subprocess.run(
        [vegeta, "encode", "-to=csv", str(results)], capture_output=True, text=True, check=True
    )
    return [
        (int(row[0]) / 1e9, int(row[2]) / 1e6, int(row[1]))
        for row in csv.reader(io.StringIO(done.stdout))
    ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the scenarios --------------------------------------------------------------------------------


def fresh_topics(bootstrap: str) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, topic_prefix=f"b{uuid.uuid4().hex[:8]}.", partitions=6
    )
    create_topics(settings)
    return settings


def on_topic(settings: KafkaSettings, topic: str) -> int:
    """How many records the topic holds, by its watermarks (a fresh prefix: all the run's)."""
    full = settings.topic(topic)
    c = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-count", "log_level": 0}
    )
    try:
        parts = c.list_topics(full, timeout=30).topics[full].partitions
        return sum(
            h - lo
            for lo, h in (
                c.get_watermark_offsets(TopicPartition(full, p), timeout=30) for p in parts
            )
        )
    finally:
        c.close()


def one_run(
    ctx: dict,
    name: str,
    rate: int,
    seconds: float,
    student: str | None = None,
    during=None,
    **env: str,
) -> dict:
    """Start a service, warm it up, attack it, scrape it, stop it."""
    settings = fresh_topics(ctx["bootstrap"])
    svc = Service(
        service_env(settings, ctx["teacher"], student or ctx["student"], **env),
        ctx["broker"].pid(),
        ctx["workers"],
    )
    try:
        targets = write_targets(svc.url)
        say(f"{name}: warm-up, 3 s at {rate}/s")
        report(ctx["vegeta"], attack(ctx["vegeta"], targets, rate, 3, f"{name}-warmup"))
        load_before = os.getloadavg()[0]
        cpu0, t0 = svc.cpu_seconds(), time.monotonic()
        broker0 = sum(svc.broker.cpu_times()[:2]) if svc.broker else 0.0
        hook = threading.Thread(target=during, args=(svc,), daemon=True) if during else None
        if hook:
            hook.start()
        results = attack(ctx["vegeta"], targets, rate, seconds, name)
        elapsed = time.monotonic() - t0
        cpu = (svc.cpu_seconds() - cpu0) / elapsed
        broker_cpu = (sum(svc.broker.cpu_times()[:2]) - broker0) / elapsed if svc.broker else 0.0
        if hook:
            hook.join()
        out = {
            "name": name,
            "rate_target": rate,
            **report(ctx["vegeta"], results),
            "service_cpu_cores": round(cpu, 2),
            "broker_cpu_cores": round(broker_cpu, 2),
            "load1": round(load_before, 2),
            "load1_after": round(os.getloadavg()[0], 2),
            "results": results,
            "settings": settings,
            "service": svc,
        }
        out["metrics"] = wait_delivered(svc)
        return out
    finally:
        svc.stop()


def wait_delivered(svc: Service, timeout: float = 120) -> dict[str, float]:
    """The service's metrics once nothing is pending and the publisher's counts have settled:
    two scrapes, further apart than the 1 s in which each worker copies its counts to the page
    (with several workers), must agree."""
    deadline = time.monotonic() + timeout
    before = None
    while True:
        m = svc.metrics()
        counts = {k: v for k, v in m.items() if k.startswith("tier3_publisher_events_total")}
        if m.get("tier3_publisher_pending", 0) == 0 and counts == before:
            return m
        if time.monotonic() > deadline:
            return m
        before = counts
        time.sleep(1.5)


def summary_row(r: dict) -> str:
    m = r["metrics"]
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["status_codes"].items()))
    variants = {
        v: int(m.get(f"tier3_router_answers_total[{v}]", 0))
        for v in ("teacher", "student", "student-fallback")
    }
    return (
        f"| {r['name']} | {r['rate_target']} | {r['rate']:.0f} | {r['p50_ms']:.2f} | "
        f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {codes} | "
        f"{variants['teacher']}/{variants['student']}/{variants['student-fallback']} | "
        f"{r['service_cpu_cores']:.2f} | {r['broker_cpu_cores']:.2f} | {r['load1']:.1f} |"
    )


def paused_broker(
    ctx: dict, rate: int, seconds: float, pause: float, buffer: int, publishing: bool = True
) -> dict:
    """The broker's JVM stopped for ``pause`` s mid-attack. With publishing off it is the
    control: what the pause (and the broker's catching up after it) does to the machine."""
    broker = ctx["broker"]
    marks: dict[str, float] = {}

    def pause_broker(svc: Service) -> None:
        time.sleep(min(8.0, seconds / 5))
        marks["stop"] = time.time()
        say(f"  SIGSTOP broker pid {broker.pid()} for {pause:.0f} s")
        broker.signal(signal.SIGSTOP)
        time.sleep(pause)
        broker.signal(signal.SIGCONT)
        marks["cont"] = time.time()
        say("  SIGCONT broker")

    name = f"broker-paused-{'on' if publishing else 'off'}@{rate}"
    r = one_run(
        ctx,
        name,
        rate,
        seconds,
        during=pause_broker,
        TIER3_PUBLISHER_BUFFER_MESSAGES=str(buffer),
        ENABLE_TIER3_CAPTURE=str(publishing).lower(),
    )
    rows = per_request(ctx["vegeta"], r["results"])
    windows = {
        "before": lambda t: t < marks["stop"],
        "paused": lambda t: marks["stop"] <= t < marks["cont"],
        "after": lambda t: t >= marks["cont"],
    }
    r["windows"] = {}
    for w, inside in windows.items():
        lat = [ms for t, ms, _ in rows if inside(t)]
        bad = sum(1 for t, _, code in rows if inside(t) and code != 200)
        rss = [b for t, b in r["service"].rss if inside(t)]
        r["windows"][w] = {
            "requests": len(lat),
            "p50_ms": percentile(lat, 0.5),
            "p99_ms": percentile(lat, 0.99),
            "max_ms": max(lat, default=0),
            "non_200": bad,
            "rss_max_mib": max(rss, default=0) / 2**20,
        }
    start = min(t for t, _, _ in rows)
    r["timeline"] = []  # 5 s slices: how latency moved around the pause
    for k in range(int((max(t for t, _, _ in rows) - start) // 5) + 1):
        lo, hi = start + 5 * k, start + 5 * (k + 1)
        lat = [ms for t, ms, _ in rows if lo <= t < hi]
        r["timeline"].append(
            {
                "from_s": 5 * k,
                "requests": len(lat),
                "p50_ms": percentile(lat, 0.5),
                "p99_ms": percentile(lat, 0.99),
                "non_200": sum(1 for t, _, code in rows if lo <= t < hi and code != 200),
                "paused": lo < marks["cont"] and hi > marks["stop"],
                "rss_mib": max((b for t, b in r["service"].rss if lo <= t < hi), default=0) / 2**20,
                **cpu_in(r["service"].cpu, lo, hi),
            }
        )
    m = r["metrics"]
    r["accepted"] = int(m.get("tier3_publisher_events_total[accepted]", 0))
    r["dropped"] = int(m.get("tier3_publisher_events_total[dropped]", 0))
    r["failed"] = int(m.get("tier3_publisher_events_total[failed]", 0))
    r["pending"] = int(m.get("tier3_publisher_pending", 0))
    r["on_topic"] = on_topic(r["settings"], EXPERIENCES)
    return r


def cpu_in(samples: list[tuple[float, float, float]], lo: float, hi: float) -> dict:
    """CPU cores the service and the broker used between lo and hi."""
    inside = [s for s in samples if lo <= s[0] < hi]
    if len(inside) < 2:
        return {"service_cores": float("nan"), "broker_cores": float("nan")}
    (t0, s0, b0), (t1, s1, b1) = inside[0], inside[-1]
    return {"service_cores": (s1 - s0) / (t1 - t0), "broker_cores": (b1 - b0) / (t1 - t0)}


def in_process_overhead(bootstrap: str, calls: int = 20_000, rounds: int = 3) -> list[dict]:
    """tier3's own time per request, without HTTP: ``AsyncRouter.answer`` with models that answer
    at once, publishing on (to the private broker) and off, alternated round by round. This is
    what tier3 adds to a request's path, measured where the machine's noise cannot hide it."""

    async def teacher(query: str, context: dict) -> str:
        return json.dumps(reference_answer(query, context))

    async def student(model: str, query: str, context: dict) -> str:
        return json.dumps({**reference_answer(query, context), "widgets": ["table"]})

    rng = random.Random(3)
    queries = [random_query(rng) for _ in range(1000)]
    settings = fresh_topics(bootstrap)
    out = []
    for rnd in range(rounds):
        for publishing in (False, True):
            publisher = Publisher(settings, enabled=publishing)
            router = AsyncRouter(
                teacher,
                student,
                RoutingSettings(use_finetuned_model=True, student_percent=50),
                publisher=publisher,
            )

            async def run(router: AsyncRouter = router) -> list[float]:
                took = []
                for i in range(calls):
                    q = queries[i % len(queries)]
                    t0 = time.perf_counter()
                    await router.answer(
                        q.text, q.context, user_id_hash=f"u{i}", session_id_hash="s"
                    )
                    took.append((time.perf_counter() - t0) * 1e6)
                return took

            took = asyncio.run(run())
            publisher.close(30)
            out.append(
                {
                    "round": rnd + 1,
                    "publishing": publishing,
                    "p50_us": percentile(took, 0.5),
                    "p99_us": percentile(took, 0.99),
                    "p999_us": percentile(took, 0.999),
                    "max_us": max(took),
                }
            )
            say(
                f"in-process, round {rnd + 1}, publishing {'on' if publishing else 'off'}: "
                f"p50 {out[-1]['p50_us']:.0f} µs, p99 {out[-1]['p99_us']:.0f} µs"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,2000")
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--pause", type=float, default=30)
    parser.add_argument("--pause-rate", type=int, default=500)
    parser.add_argument(
        "--pause-buffer",
        type=int,
        default=5000,
        help="the publisher's buffer (events) in the pause runs, per worker",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes of the service (uvicorn --workers)",
    )
    parser.add_argument(
        "--pairs", type=int, default=1, help="how many times each rate's arms run, alternated"
    )
    parser.add_argument(
        "--lingers",
        default="",
        help="comma list of publisher linger.ms values, each an extra publishing-on arm "
        "(the plain 'on' arm has the publisher's default)",
    )
    parser.add_argument("--teacher-delay", type=float, default=0.1)
    parser.add_argument("--student-delay", type=float, default=0.05)
    parser.add_argument("--skip", default="", help="comma list of: overhead,compare,paused,down")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    WORK.mkdir(parents=True, exist_ok=True)
    ctx: dict = {"vegeta": ensure_vegeta(), "workers": args.workers}
    say(f"private broker: tier3 broker start --home {WORK} --port {BROKER_PORT}")
    subprocess.run(
        [TIER3, "broker", "start", "--home", str(WORK), "--port", str(BROKER_PORT)], check=True
    )
    ctx["broker"] = LocalBroker(home=WORK, port=BROKER_PORT)
    ctx["bootstrap"] = ctx["broker"].bootstrap
    teacher_proc, ctx["teacher"] = start_server("anthropic", args.teacher_delay)
    student_proc, ctx["student"] = start_server("ollama", args.student_delay)
    runs: list[dict] = []
    paused: list[dict] = []
    overhead: list[dict] = []
    try:
        if "overhead" not in skip:
            overhead = in_process_overhead(ctx["bootstrap"])
        if "compare" not in skip:
            for rate in (int(x) for x in args.rates.split(",")):
                for pair in range(1, args.pairs + 1):
                    for arm, env in compared_arms(args.lingers):
                        runs.append(
                            one_run(ctx, f"publishing-{arm}@{rate}", rate, args.duration, **env)
                        )
                        runs[-1]["pair"] = pair
                        say(summary_row(runs[-1]))
        if "down" not in skip:
            closed = f"http://127.0.0.1:{free_port()}"
            runs.append(
                one_run(
                    ctx,
                    f"ollama-down@{args.pause_rate}",
                    args.pause_rate,
                    args.duration,
                    student=closed,
                )
            )
            say(summary_row(runs[-1]))
        if "paused" not in skip:
            for publishing in (False, True):
                paused.append(
                    paused_broker(
                        ctx,
                        args.pause_rate,
                        args.pause + 20,
                        args.pause,
                        args.pause_buffer,
                        publishing,
                    )
                )
                say(summary_row(paused[-1]))
    finally:
        for p in (teacher_proc, student_proc):
            p.terminate()
            p.wait(10)
        say("stopping the private broker")
        subprocess.run(
            [TIER3, "broker", "stop", "--home", str(WORK), "--port", str(BROKER_PORT)], check=False
        )
    print_results(args, runs, paused, overhead)


def compared_arms(lingers: str) -> list[tuple[str, dict[str, str]]]:
    """The arms of the on/off comparison: off, on (the publisher's defaults), and one more
    publishing arm per ``--lingers`` value."""
    arms = [("off", {"ENABLE_TIER3_CAPTURE": "false"}), ("on", {"ENABLE_TIER3_CAPTURE": "true"})]
    for linger in filter(None, lingers.split(",")):
        env = {"ENABLE_TIER3_CAPTURE": "true", "TIER3_PUBLISHER_LINGER_MS": linger}
        arms.append((f"on-linger{linger}", env))
    return arms


def print_results(
    args: argparse.Namespace, runs: list[dict], paused: list[dict], overhead: list[dict]
) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}: "
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, vegeta "
        f"{VEGETA_VERSION}; uvicorn workers {args.workers}; teacher "
        f"{args.teacher_delay * 1000:.0f} ms, student "
        f"{args.student_delay * 1000:.0f} ms, student share 50%; {args.duration:.0f} s/run\n"
    )
    if overhead:
        print("tier3's own time per request (AsyncRouter.answer, instant models, no HTTP):\n")
        print("| round | publishing | p50 µs | p99 µs | p99.9 µs | max µs |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for o in overhead:
            print(
                f"| {o['round']} | {'on' if o['publishing'] else 'off'} | {o['p50_us']:.1f} | "
                f"{o['p99_us']:.1f} | {o['p999_us']:.1f} | {o['max_us']:.0f} |"
            )
        print()
    print(
        "| run | target/s | achieved/s | p50 ms | p99 ms | max ms | status codes | "
        "teacher/student/fallback | service CPU (cores) | broker CPU (cores) | load1 before |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for r in [*runs, *paused]:
        print(summary_row(r))
    by_name = {(r["name"], r.get("pair")): r for r in runs}
    for rate in args.rates.split(","):
        for pair in range(1, args.pairs + 1):
            off = by_name.get((f"publishing-off@{rate}", pair))
            for arm, _ in compared_arms(args.lingers)[1:]:
                on = by_name.get((f"publishing-{arm}@{rate}", pair))
                if on and off:
                    print(
                        f"\n{rate}/s, pair {pair}, {arm}: tier3 publishing adds "
                        f"{on['p50_ms'] - off['p50_ms']:+.2f} ms to p50, "
                        f"{on['p99_ms'] - off['p99_ms']:+.2f} ms to p99 (budget +1 ms); on/off: "
                        f"p50 {on['p50_ms'] / off['p50_ms']:.3f}, "
                        f"p99 {on['p99_ms'] / off['p99_ms']:.3f}, "
                        f"max {on['max_ms'] / off['max_ms']:.3f}; CPU "
                        f"{on['service_cpu_cores'] - off['service_cpu_cores']:+.2f} cores "
                        f"(service), {on['broker_cpu_cores'] - off['broker_cpu_cores']:+.2f} "
                        "(broker)"
                    )
    for p in paused:
        print_paused(p, args.pause_buffer)


def print_paused(paused: dict, buffer: int) -> None:
    print(
        f"\n{paused['name']}: | window | requests | p50 ms | p99 ms | max ms | non-200 | "
        "service RSS max MiB |"
    )
    for w, s in paused["windows"].items():
        print(
            f"| {w} | {s['requests']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['max_ms']:.1f} | {s['non_200']} | {s['rss_max_mib']:.0f} |"
        )
    print(
        "\ntimeline: | from s | requests | p50 ms | p99 ms | non-200 | RSS MiB | "
        "service cores | broker cores | paused |"
    )
    for s in paused["timeline"]:
        print(
            f"| {s['from_s']} | {s['requests']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
            f"{s['non_200']} | {s['rss_mib']:.0f} | {s['service_cores']:.2f} | "
            f"{s['broker_cores']:.2f} | {'yes' if s['paused'] else ''} |"
        )
    print(
        f"publisher: accepted {paused['accepted']}, dropped {paused['dropped']} "
        f"(buffer {buffer} per worker), failed {paused['failed']}, pending {paused['pending']}; "
        f"experiences on the topic after SIGCONT: {paused['on_topic']} (every accepted event "
        f"arrived: {paused['on_topic'] == paused['accepted'] - paused['failed']})"
    )


if __name__ == "__main__":
    main()
