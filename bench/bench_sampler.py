"""Sampler benchmark: events/s per worker, and feedback → capture job latency at 1k events/s.

Run by hand against a broker (default: the local one of ``tier3 broker start``):

    .venv/bin/python bench/bench_sampler.py --bootstrap 127.0.0.1:29092 --events 30000

Parts, each on its own fresh topic prefix, with one worker process (``tier3 run sampler``):

1. **throughput**: the backlog of ``--events`` simulated queries (experiences and their
   feedback) is published first; then the worker starts, and the rate is taken from the moment
   it reads its first event until it has read them all (start-up and recovery not counted).
2. **baselines**, in the same run, on the same backlog: a Faust worker whose agent does nothing
   (what Faust itself costs), and a librdkafka consumer that reads and decodes every event (what
   reading and Avro decoding cost without Faust).
3. **where the time goes**: the sampler's own per-event work timed in-process (decode, decide,
   job encode), to set against the rates above.
4. **latency** at ``--rate`` events/s for ``--seconds``: for every job decided by its feedback,
   the time from the feedback's Kafka timestamp (set when the backend published it) to the
   job's (set when the sampler produced it): p50, p99, max.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families
from tier3.schemas import SingleObjectCodec
from tier3.schemas.registry import CAPTURE_JOB, EXPERIENCE, FEEDBACK
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import run_simulation, simulate
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, EXPERIENCES, create_topics
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.streams.processors.sampling import Policy, decide

TIER3 = str(Path(sys.executable).with_name("tier3"))


def fresh(bootstrap: str, partitions: int) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        partitions=partitions,
    )
    create_topics(settings)
    return settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events_read(port: int) -> float | None:
    """Events the worker read so far (all outcomes), from its metrics; None if not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tier3_processor_events_total"
    )


def start(settings: KafkaSettings, command: list[str], port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update(
        TIER3_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TIER3_TOPIC_PREFIX=settings.topic_prefix,
        TIER3_PARTITIONS=str(settings.partitions),
        TIER3_METRICS_PORT=str(port),
        TIER3_LOG_JSON="1",
    )
    log = open(Path(tempfile.gettempdir()) / f"bench-sampler-{port}.log", "w")  # noqa: SIM115
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def publish_backlog(settings: KafkaSettings, queries: int, seed: int) -> int:
    publisher = Publisher(settings, enabled=True)
    counts = run_simulation(publisher, queries, seed)
    assert publisher.close(60) == 0 and counts["dropped"] == 0
    return counts[EXPERIENCE] + counts[FEEDBACK]


def timed_drain(settings: KafkaSettings, command: list[str], total: int) -> dict[str, float]:
    """Start a worker on a published backlog; time it from its first event to the last."""
    port = free_port()
    process = start(settings, command, port)
    try:
        first_at = first_count = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            count = events_read(port) or 0
            now = time.monotonic()
            if first_at is None and count > 0:
                first_at, first_count = now, count
            if count >= total:
                assert first_at is not None and first_count is not None
                seconds = max(now - first_at, 1e-9)
                rate = (total - first_count) / seconds
                return {"events": total, "seconds": seconds, "rate": rate}
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}")
            time.sleep(0.1)
        raise TimeoutError("the worker did not read the backlog in 15 minutes")
    finally:
        stop(process)


def librdkafka_decode_rate(settings: KafkaSettings, total: int) -> dict[str, float]:
    codec = SingleObjectCodec()
    c = Consumer({
        **settings.client_config(), "group.id": f"bench-{uuid.uuid4()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0,
    })
    c.subscribe([settings.topic(EXPERIENCES), settings.topic(FEEDBACK_TOPIC)])
    seen, first_at = 0, None
    try:
        while seen < total:
            batch = c.consume(10_000, 1.0)
            if batch and first_at is None:
                first_at = time.perf_counter()
            for msg in batch:
                if msg.error() is None:
                    codec.decode(msg.value())
                    seen += 1
        seconds = time.perf_counter() - (first_at or time.perf_counter())
        return {"events": seen, "seconds": seconds, "rate": seen / max(seconds, 1e-9)}
    finally:
        c.close()


def per_event_costs() -> dict[str, float]:
    """Microseconds of the sampler's own work per event, timed in this process."""
    codec = SingleObjectCodec()
    sample = list(simulate(200, seed=1))
    exp = next(e.record for e in sample if e.event == EXPERIENCE)
    fb = next(e.record for e in sample if e.event == FEEDBACK)
    exp_raw, fb_raw = codec.encode(EXPERIENCE, exp), codec.encode(FEEDBACK, fb)
    job = {"query_id": exp["query_id"], "created_at": 0, "reason": "random", "query": exp["query"],
           "context": exp["context"], "original_response": exp["response"],
           "original_model": exp["model"], "model_variant": "teacher",
           "confidence": exp["confidence"], "rating": 4}
    n = 20_000
    us = {
        "decode experience": timeit.timeit(lambda: codec.decode(exp_raw, EXPERIENCE), number=n),
        "decode feedback": timeit.timeit(lambda: codec.decode(fb_raw, FEEDBACK), number=n),
        "decide": timeit.timeit(lambda: decide(exp, fb, Policy()), number=n),
        "encode job": timeit.timeit(lambda: codec.encode(CAPTURE_JOB, job), number=n),
    }
    return {k: v / n * 1e6 for k, v in us.items()}


def latency(settings: KafkaSettings, rate: float, seconds: float, seed: int) -> dict[str, float]:
    port = free_port()
    process = start(settings, [TIER3, "run", "sampler", "--timeout", "60"], port)
    try:
        deadline = time.monotonic() + 120
        while (events_read(port) is None or time.monotonic() < deadline - 110) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        time.sleep(8)  # let it join the group and take its partitions before traffic
        publisher = Publisher(settings, enabled=True)
        counts = run_simulation(publisher, int(rate * seconds / 1.7), seed, rate=rate)
        assert publisher.close(60) == 0
        total = counts[EXPERIENCE] + counts[FEEDBACK]
        while (events_read(port) or 0) < total:
            time.sleep(0.5)
        time.sleep(3)  # the last jobs' acknowledgements
    finally:
        stop(process)
    codec = SingleObjectCodec()
    feedback_at = {
        m.key(): m.timestamp()[1] for m in read_to_end(settings, FEEDBACK_TOPIC)
    }
    delays = []
    for m in read_to_end(settings, CAPTURE_JOBS):
        job = codec.decode(m.value()).record
        if job["rating"] is not None and m.key() in feedback_at:
            delays.append(m.timestamp()[1] - feedback_at[m.key()])
    delays.sort()

    def pct(p: float) -> float:
        return float(delays[min(len(delays) - 1, int(p * len(delays)))])

    return {"events": total, "jobs_timed": len(delays), "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": float(delays[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--events", type=int, default=30_000, help="simulated queries (backlog)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the latency run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the latency run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: throughput latency")
    args = parser.parse_args()

    if "throughput" not in args.skip:
        backlog = fresh(args.bootstrap, args.partitions)
        total = publish_backlog(backlog, args.events, args.seed)
        print(f"backlog: {total} events ({args.events} queries) on {args.partitions} partitions")
        sampler = timed_drain(backlog, [TIER3, "run", "sampler", "--timeout", "3600"], total)
        noop = timed_drain(backlog, [sys.executable, __file__, "noop-worker"], total)
        raw = librdkafka_decode_rate(backlog, total)
        for name, r in (("sampler worker", sampler), ("faust no-op worker", noop),
                        ("librdkafka read + decode", raw)):
            print(f"{name:26} {r['rate']:9.0f} events/s  ({r['events']} in {r['seconds']:.1f} s)")
        print(f"sampler / faust no-op: {sampler['rate'] / noop['rate']:.2f}; "
              f"sampler / librdkafka+decode: {sampler['rate'] / raw['rate']:.3f}; "
              f"budget 20000 events/s: {sampler['rate'] / 20000:.2f}")
        for what, us in per_event_costs().items():
            print(f"  in-process {what:18} {us:6.1f} µs/event")

    if "latency" not in args.skip:
        lat = latency(fresh(args.bootstrap, args.partitions), args.rate, args.seconds, args.seed)
        print(f"latency at {args.rate:.0f} events/s ({lat['events']} events, "
              f"{lat['jobs_timed']} jobs decided by their feedback): p50 {lat['p50_ms']:.0f} ms, "
              f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms (budget p99 ≤ 500 ms)")


def noop_worker() -> None:
    """A Faust worker with the sampler's topics and settings whose agent only counts events."""
    from tier3.streams.processors import faust_app
    from tier3.streams.telemetry.metrics import serve_metrics

    settings = KafkaSettings()
    serve_metrics(int(os.environ["TIER3_METRICS_PORT"]))
    with tempfile.TemporaryDirectory() as folder:
        app = faust_app.make_app(settings, "bench-noop", Path(folder))
        source = faust_app.raw_topic(
            app, settings.topic(EXPERIENCES), settings.topic(FEEDBACK_TOPIC)
        )
        counted = faust_app.EVENTS_IN.labels("noop", "all", "read")

        async def count(stream):  # type: ignore[no-untyped-def]
            async for _ in stream.events():
                counted.inc()

        app.agent(source, name="bench-noop.count")(count)
        faust_app.run_worker(app)


if __name__ == "__main__":
    if sys.argv[1:2] == ["noop-worker"]:
        sys.argv.pop(1)
        noop_worker()
    else:
        main()
