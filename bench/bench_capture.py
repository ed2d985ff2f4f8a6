"""Benchmark: one ``tier3 run capture`` process against a teacher that answers after 1 s.

Budget (design): with a 1 s teacher, one process keeps >= 200 jobs in flight and makes >= 150
traces/s. The teacher is the fake Anthropic Messages API
(``python -m tests.support.servers anthropic``) and the student the fake Ollama API, each in its
own process, talked to by the real SDKs; the broker is real. Jobs are published first, then the
capture process is started; its Prometheus endpoint is sampled every 0.25 s for jobs done and
jobs in flight, and its RSS with psutil.

Two runs in the same session, same machine:
  * baseline: ``--concurrency 1`` (one job at a time, what a plain poll-process-commit loop does);
  * capture: ``--concurrency C`` (default 256).
traces/s is measured over the steady part of a run (from the 10th to the 90th percentile of
completions), so start-up and the tail do not blur it.

Usage (from the repository root; a broker must run, e.g. the test broker on 19092):
    python bench/bench_capture.py --jobs 3000 --concurrency 256 [--bootstrap 127.0.0.1:19092]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

import psutil
from prometheus_client.parser import text_string_to_metric_families
from tier3.schemas.registry import CAPTURE_JOB
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, admin_client, create_topics, expected_topics
from tier3.tasks.widgets import random_query

ROOT = Path(__file__).resolve().parent.parent
TIER3 = str(Path(sys.executable).with_name("tier3"))
SINK = "tier3_capture_sink_latency_seconds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(api: str, delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.servers", api, "--delay", str(delay)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    return proc, proc.stdout.readline().strip()


def publish(settings: KafkaSettings, n: int) -> None:
    import random

    producer = EventProducer(settings)
    rng = random.Random(7)
    for _ in range(n):
        q = random_query(rng)
        job = {
            "query_id": uuid.uuid4().hex, "created_at": int(time.time() * 1000),
            "reason": "random", "query": q.text, "context": json.dumps(q.context),
            "original_response": "{}", "original_model": "claude", "model_variant": "teacher",
            "confidence": 0.5, "rating": None,
        }
        producer.send(CAPTURE_JOBS, CAPTURE_JOB, job["query_id"], job)
    assert producer.flush(60) == 0


def delete_topics(settings: KafkaSettings) -> None:
    """Leave the (often shared) broker as it was: every topic of the run goes."""
    admin = admin_client(settings)
    names = [settings.topic(spec.name) for spec in expected_topics(settings)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result()
        except Exception as exc:  # a leftover topic is untidy, not a wrong result
            print(f"could not delete a benchmark topic: {exc}", file=sys.stderr)


def scrape(port: int) -> dict[str, float]:
    """Jobs finished, jobs in flight and latency sums from the capture process's metrics."""
    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value  # over all labels
            for label, value in sample.labels.items():
                key = f"{sample.name}[{label}={value}]"
                found[key] = found.get(key, 0.0) + sample.value
    return found


def mean_seconds(metrics: dict[str, float], name: str, label: str = "") -> float:
    """Mean of a histogram from its _sum and _count (of one ``label=value``, or all)."""
    suffix = f"[{label}]" if label else ""
    count = metrics.get(f"{name}_count{suffix}", 0.0)
    return metrics.get(f"{name}_sum{suffix}", 0.0) / count if count else float("nan")


def run(bootstrap: str, jobs: int, concurrency: int, teacher: str, student: str) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
    create_topics(settings)
    publish(settings, jobs)
    port = free_port()
    store = tempfile.mkdtemp(prefix="tier3-bench-store-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update({
        "TIER3_BOOTSTRAP_SERVERS": bootstrap, "TIER3_TOPIC_PREFIX": settings.topic_prefix,
        "TIER3_OBJECT_STORE_URL": Path(store).as_uri(), "TIER3_TEACHER_PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": "sk-bench", "TIER3_ANTHROPIC_BASE_URL": teacher,
        "TIER3_STUDENT_PROVIDER": "ollama", "TIER3_OLLAMA_HOST": student,
        "TIER3_CONCURRENCY": str(concurrency), "TIER3_METRICS_PORT": str(port),
        "TIER3_LOG_LEVEL": "WARNING", "TIER3_GROUP": f"bench-{uuid.uuid4().hex[:6]}",
    })
    proc = subprocess.Popen([TIER3, "run", "capture"], env=env)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float, float]] = []  # (t, done, in_flight)
    rss_peak = 0
    cpu_start = None
    try:
        while True:
            time.sleep(0.25)
            try:
                last = scrape(port)
            except OSError:
                continue  # not serving yet
            done = last.get("tier3_capture_jobs_total", 0.0)
            in_flight = last.get("tier3_capture_in_flight", 0.0)
            now = time.monotonic()
            if cpu_start is None:
                cpu_start = (now, sum(ps.cpu_times()[:2]))
            samples.append((now, done, in_flight))
            rss_peak = max(rss_peak, ps.memory_info().rss)
            if done >= jobs:
                break
        cpu_seconds = sum(ps.cpu_times()[:2]) - cpu_start[1]
        wall = samples[-1][0] - cpu_start[0]
    finally:
        proc.terminate()
        proc.wait(60)
        delete_topics(settings)
        shutil.rmtree(store, ignore_errors=True)
    lo = next(s for s in samples if s[1] >= jobs * 0.1)
    hi = next(s for s in samples if s[1] >= jobs * 0.9)
    steady = [s[2] for s in samples if lo[0] <= s[0] <= hi[0]]
    rate = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")
    in_flight_median = statistics.median(steady) if steady else 0.0
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "traces_per_s": rate,
        "in_flight_median": in_flight_median,
        "in_flight_max": max(s[2] for s in samples),
        "teacher_latency_mean_s": mean_seconds(last, "tier3_capture_teacher_latency_seconds"),
        "student_latency_mean_s": mean_seconds(last, "tier3_capture_student_latency_seconds"),
        "object_write_mean_s": mean_seconds(last, SINK, "sink=object"),
        "topic_ack_mean_s": mean_seconds(last, SINK, "sink=topic"),
        # Little's law: the time a job spends in the process, waiting included.
        "job_time_s": in_flight_median / rate,
        "rss_peak_mib": rss_peak / 2**20,
        "cpu_percent_of_one_core": 100 * cpu_seconds / wall if wall else 0,
        # What a trace costs the process in CPU: its capacity when it is not starved of CPU.
        "cpu_ms_per_trace": 1000 * cpu_seconds / samples[-1][1] if samples[-1][1] else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--baseline-jobs", type=int, default=12)
    parser.add_argument("--teacher-delay", type=float, default=1.0)
    parser.add_argument("--student-delay", type=float, default=0.2)
    args = parser.parse_args()
    teacher_proc, teacher = start_server("anthropic", args.teacher_delay)
    student_proc, student = start_server("ollama", args.student_delay)
    try:
        baseline = run(args.bootstrap, args.baseline_jobs, 1, teacher, student)
        capture = run(args.bootstrap, args.jobs, args.concurrency, teacher, student)
    finally:
        for p in (teacher_proc, student_proc):
            p.terminate()
            p.wait(10)
    print(json.dumps({
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "load_average_1m_at_end": os.getloadavg()[0],
        "teacher_delay_s": args.teacher_delay, "student_delay_s": args.student_delay,
        "baseline": baseline, "capture": capture,
        "speedup_vs_baseline": capture["traces_per_s"] / baseline["traces_per_s"],
        "traces_per_s_vs_budget_150": capture["traces_per_s"] / 150,
        "in_flight_vs_budget_200": capture["in_flight_median"] / 200,
    }, indent=2))


if __name__ == "__main__":
    main()
