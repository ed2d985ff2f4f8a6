"""Sampler benchmark: events/s per worker, scale-out, and feedback → capture job latency.

Run by hand against a private broker (``tier3 broker start --home /tmp/smp/broker --port 29092``):

    .venv/bin/python bench/bench_sampler.py --bootstrap 127.0.0.1:29092 --events 20000

Parts, each on its own fresh topic prefix, with one worker process (``tier3 run sampler``):

1. **throughput**: the backlog of ``--events`` simulated queries (experiences and their
   feedback) is published first; then the worker starts, and the rate is taken from the moment
   it reads its first event until it has read them all (start-up and recovery not counted).
2. **baselines**, in the same run, on the same backlog: a Faust worker whose agent does nothing
   (what Faust itself costs), and a librdkafka consumer that reads and decodes every event (what
   reading and Avro decoding cost without Faust).
   Also on the same backlog: **a hot path outside Faust**, the sampler's logic (decode, key
   check, decide at the experience, the join for chosen queries) on a librdkafka consumer that
   produces the same changelog records and jobs with a librdkafka producer: what the design
   would give without Faust's per-record machinery. The table writes (changelog records) per
   event are counted for both.
   ``--pairs N`` repeats the sampler and no-op drains N times, alternated, each pair on a
   fresh copy of the backlog: one drain of each varies by up to 25% between runs.
2b. **scale-out**: ``--workers`` (default 1 and 2) sampler processes in one group on fresh,
   empty topics; once every worker owns its share of the partitions, the backlog is published
   (so no worker drains alone while another joins), and the rate is taken from the moment
   every worker has read an event, per worker and in total.
3. **where the time goes**: the sampler's own per-event work timed in-process (decode, decide,
   job encode), to set against the rates above; ``--profile FILE`` also records the
   one-worker drain with py-spy (``--py-spy PATH``), collapsed stacks in FILE.
4. **latency** at ``--rate`` events/s for ``--seconds``: for every job decided by its feedback,
   the time from the feedback's Kafka timestamp (set when the backend published it) to the
   job's (set when the sampler produced it): p50, p99, max.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tier3.schemas import SingleObjectCodec
from tier3.schemas.registry import CAPTURE_JOB, EXPERIENCE, FEEDBACK
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import run_simulation, simulate
from tier3.streams.kafka import offsets
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, EXPERIENCES, admin_client, create_topics
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.streams.processors.sampling import Policy, capture_job, decide

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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open while choosing, so none is chosen twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def metric_samples(port: int, name: str) -> list[Sample] | None:
    """The samples of metric ``name`` the worker on ``port`` exposes; None if it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return [
        s for family in text_string_to_metric_families(text) for s in family.samples
        if s.name == name
    ]


def events_read(port: int) -> float | None:
    """Events the worker read so far (all outcomes), from its metrics; None if not up."""
    samples = metric_samples(port, "tier3_processor_events_total")
    return None if samples is None else sum(s.value for s in samples)


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


def partitions_owned(port: int, topic: str) -> set[int]:
    """The partitions of ``topic`` the worker reports lag for: those assigned to it (its
    partition check runs every 2 s)."""
    samples = metric_samples(port, "tier3_processor_consumer_lag") or []
    return {int(s.labels["partition"]) for s in samples if s.labels.get("topic") == topic}


def wait_for_assignment(
    ports: list[int], processes: list[subprocess.Popen], topic: str, partitions: int
) -> None:
    """Until the workers own all of ``topic``'s partitions between them, each some and none
    twice, in two checks in a row (a rebalance still under way shows as overlap or a gap)."""
    settled = 0
    deadline = time.monotonic() + 180
    while settled < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not share the partitions in 3 minutes")
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a worker exited")
        owned = [partitions_owned(port, topic) for port in ports]
        shared = all(owned) and sum(map(len, owned)) == partitions == len(set().union(*owned))
        settled = settled + 1 if shared else 0
        time.sleep(2.1)


def timed_drain(
    settings: KafkaSettings, command: list[str], total: int, workers: int = 1,
    profile: tuple[str, str] | None = None, publish: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Start ``workers`` workers and time them from the moment each has read an event until
    all ``total`` events are read. Without ``publish`` the backlog is on the topics already;
    with it, ``publish`` (in a thread) writes the backlog once every worker owns its share of
    the partitions, so no worker drains alone while the others join. ``profile`` = (py-spy,
    output file) records the first worker meanwhile."""
    ports = free_ports(workers)
    processes = [start(settings, command, port) for port in ports]
    spy = None
    publishing = ThreadPoolExecutor(1, thread_name_prefix="publish-backlog")
    published = None
    try:
        if publish is not None:
            wait_for_assignment(
                ports, processes, settings.topic(EXPERIENCES), settings.partitions
            )
            published = publishing.submit(publish)
        first_at = None
        first: list[float] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            counts = [events_read(port) or 0 for port in ports]
            now = time.monotonic()
            if first_at is None and all(counts):
                first_at, first = now, counts
                if profile:
                    spy = subprocess.Popen(
                        [profile[0], "record", "--idle", "--threads", "--format", "raw", "-r",
                         "200", "-d", "12", "-o", profile[1], "-p", str(processes[0].pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if sum(counts) >= total and first_at is not None:
                seconds = max(now - first_at, 1e-9)
                per_worker = [(c - f) / seconds for c, f in zip(counts, first, strict=True)]
                return {"events": total, "seconds": seconds, "rate": sum(per_worker),
                        "per_worker": per_worker}
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a worker exited")
            if published is not None and published.done():
                published.result()  # raises what made publishing fail
            time.sleep(0.1)
        raise TimeoutError("the workers did not read the backlog in 15 minutes")
    finally:
        publishing.shutdown(wait=True)
        if spy is not None:
            spy.wait(60)
        for process in processes:
            stop(process)


def fresh_copy(backlog: KafkaSettings, args: argparse.Namespace) -> KafkaSettings:
    """The same simulated backlog on a new prefix: a worker of an app that has already read
    the first one would find its group's offsets at the end."""
    settings = fresh(args.bootstrap, args.partitions)
    publish_backlog(settings, args.events, args.seed)
    return settings


def backlog_size(args: argparse.Namespace) -> int:
    """How many events ``--events`` queries make (the simulation is seeded)."""
    return sum(1 for _ in simulate(args.events, args.seed))


def table_writes(settings: KafkaSettings) -> int:
    """Records the sampler wrote to its tables' changelogs (waiting and captured)."""
    admin = admin_client(settings)
    total = 0
    for table in ("waiting", "captured"):
        topic = f"{settings.topic('sampler')}-{table}-changelog"
        marks = offsets.watermarks(admin, offsets.partitions_of(admin, topic))
        total += sum(high - low for low, high in marks.values())
    return total


def hot_path_rate(settings: KafkaSettings, total: int, policy: Policy) -> dict[str, float]:
    """The sampler's logic on a librdkafka consumer and producer, no Faust: a batched read,
    decode and key check, decide at the experience, the join for chosen queries, and the same
    changelog records and jobs produced (to a scratch topic) and flushed once per batch, as a
    worker would before committing its offsets."""
    codec = SingleObjectCodec()
    experiences, feedback_topic = settings.topic(EXPERIENCES), settings.topic(FEEDBACK_TOPIC)
    out = settings.topic(CAPTURE_JOBS)  # a throwaway prefix: any 6-partition topic will do
    c = Consumer({
        **settings.client_config(), "group.id": f"bench-{uuid.uuid4()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0,
    })
    p = Producer({**settings.client_config(), "linger.ms": 5, "acks": "all"})
    c.subscribe([experiences, feedback_topic])
    waiting: dict[bytes, bytes] = {}
    let_go: set[bytes] = set()
    seen, first_at, writes = 0, None, 0
    try:
        while seen < total:
            batch = c.consume(2000, 1.0)
            if batch and first_at is None:
                first_at = time.perf_counter()
            batch.sort(key=lambda m: m.topic() != experiences)
            for msg in batch:
                if msg.error() is not None:
                    continue
                seen += 1
                is_exp = msg.topic() == experiences
                record = codec.decode(msg.value(), EXPERIENCE if is_exp else FEEDBACK).record
                key = record["query_id"].encode()
                if key != msg.key() or key in let_go:
                    continue
                held = waiting.pop(key, None)
                if is_exp and decide(record, None, policy) is None:
                    let_go.add(key)
                    if held is not None:
                        p.produce(out, None, key, partition=msg.partition())
                        writes += 1
                    continue
                if held is None:
                    waiting[key] = msg.value()
                    p.produce(out, b"E" + msg.value(), key, partition=msg.partition())
                    writes += 1
                    continue
                other = codec.decode(held).record
                exp, fb = (record, other) if is_exp else (other, record)
                job = capture_job(exp, fb, decide(exp, fb, policy) or "", 0)
                p.produce(out, codec.encode(CAPTURE_JOB, job), key, partition=msg.partition())
                p.produce(out, None, key, partition=msg.partition())  # waiting tombstone
                p.produce(out, b"M" * 28, key, partition=msg.partition())  # captured marker
                writes += 2
            p.poll(0)
            p.flush(30)  # before the batch's offsets could be committed
        seconds = time.perf_counter() - (first_at or time.perf_counter())
        return {"events": seen, "seconds": seconds, "rate": seen / max(seconds, 1e-9),
                "writes": writes}
    finally:
        c.close()


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


def load() -> str:
    """The box's load averages (1, 5, 15 min): the benches run on a shared 2-core machine."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:29092")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                        help="worker counts for the scale-out part")
    parser.add_argument("--profile", help="py-spy the one-worker drain into this file")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--events", type=int, default=30_000, help="simulated queries (backlog)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the latency run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the latency run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=1,
                        help="throughput: sampler and no-op drains alternated this many times "
                             "(each pair on a fresh copy of the backlog); the median ratio is "
                             "the figure")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="parts to skip: throughput scale latency")
    args = parser.parse_args()

    sampler_command = [TIER3, "run", "sampler", "--timeout", "3600"]
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs), {when}, load {load()}")
    if "throughput" not in args.skip:
        backlog = fresh(args.bootstrap, args.partitions)
        total = publish_backlog(backlog, args.events, args.seed)
        print(f"backlog: {total} events ({args.events} queries) on {args.partitions} partitions")
        profile = (args.py_spy, args.profile) if args.profile else None
        sampler = timed_drain(backlog, sampler_command, total, profile=profile)
        writes = table_writes(backlog)
        noop = timed_drain(backlog, [sys.executable, __file__, "noop-worker"], total)
        noop_batches = timed_drain(
            fresh_copy(backlog, args), [sys.executable, __file__, "noop-worker", "--batches"], total
        )
        raw = librdkafka_decode_rate(backlog, total)
        hot = hot_path_rate(backlog, total, Policy())
        for name, r in (("sampler worker", sampler), ("faust no-op worker", noop),
                        ("faust no-op, in batches", noop_batches),
                        ("librdkafka read + decode", raw), ("hot path outside Faust", hot)):
            print(f"{name:26} {r['rate']:9.0f} events/s  ({r['events']} in {r['seconds']:.1f} s)")
        print(f"sampler / faust no-op: {sampler['rate'] / noop['rate']:.2f} (budget 0.8), "
              f"/ no-op in batches: {sampler['rate'] / noop_batches['rate']:.2f}; "
              f"hot path / faust no-op: {hot['rate'] / noop['rate']:.2f}; "
              f"sampler / librdkafka+decode: {sampler['rate'] / raw['rate']:.3f}")
        print(f"table writes: sampler {writes} ({writes / total:.2f} per event), "
              f"hot path {hot['writes']} ({hot['writes'] / total:.2f} per event); load {load()}")
        for what, us in per_event_costs().items():
            print(f"  in-process {what:18} {us:6.1f} µs/event")
        ratios = [sampler["rate"] / noop["rate"]]
        for pair in range(2, args.pairs + 1):
            copy = fresh_copy(backlog, args)
            s = timed_drain(copy, sampler_command, total)
            n = timed_drain(copy, [sys.executable, __file__, "noop-worker"], total)
            ratios.append(s["rate"] / n["rate"])
            print(f"pair {pair}: sampler {s['rate']:.0f}, faust no-op {n['rate']:.0f} events/s: "
                  f"{ratios[-1]:.2f}; load {load()}")
        if args.pairs > 1:
            shown = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"sampler / faust no-op over {len(ratios)} pairs: {shown}; "
                  f"median {statistics.median(ratios):.2f} (budget 0.8)")

    if "scale" not in args.skip:
        # --workers 1 2 1 2 alternates: one-worker drains vary by up to 25% within a run, so
        # each multi-worker drain is set against the one-worker drain before it and the mean.
        drains: list[tuple[int, dict]] = []
        total = backlog_size(args)
        for n in args.workers:
            backlog = fresh(args.bootstrap, args.partitions)
            r = timed_drain(
                backlog, sampler_command, total, workers=n,
                publish=partial(publish_backlog, backlog, args.events, args.seed),
            )
            drains.append((n, r))
            per = ", ".join(f"{x:.0f}" for x in r["per_worker"])
            print(f"{n} worker(s) on {args.partitions} partitions: {r['rate']:.0f} events/s "
                  f"in total, per worker {per} ({total} events in {r['seconds']:.1f} s); "
                  f"load {load()}")
        singles = [r["rate"] for n, r in drains if n == 1]
        last_single = None
        for n, r in drains:
            if n == 1:
                last_single = r["rate"]
            elif last_single:
                print(f"{n} workers / 1: {r['rate'] / last_single:.2f} against the drain before, "
                      f"{r['rate'] / (sum(singles) / len(singles)):.2f} against the mean of "
                      f"{len(singles)} (budget 1.7 for 2)")

    if "latency" not in args.skip:
        lat = latency(fresh(args.bootstrap, args.partitions), args.rate, args.seconds, args.seed)
        print(f"latency at {args.rate:.0f} events/s ({lat['events']} events, "
              f"{lat['jobs_timed']} jobs decided by their feedback): p50 {lat['p50_ms']:.0f} ms, "
              f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms (budget p99 ≤ 500 ms); "
              f"load {load()}")


def noop_worker(batches: bool) -> None:
    """A Faust worker with the sampler's topics and settings whose agent only counts events,
    one at a time or (``batches``) in the sampler's batches."""
    from tier3.streams.processors import faust_app
    from tier3.streams.processors.sampler import BATCH_SIZE, BATCH_WITHIN_S
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

        async def count_batches(stream):  # type: ignore[no-untyped-def]
            async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
                counted.inc(len(events))

        app.agent(source, name="bench-noop.count")(count_batches if batches else count)
        faust_app.run_worker(app)


if __name__ == "__main__":
    if sys.argv[1:2] == ["noop-worker"]:
        sys.argv.pop(1)
        noop_worker("--batches" in sys.argv)
    else:
        main()
