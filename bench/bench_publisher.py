"""Benchmark: the backend publisher against raw confluent-kafka, in the same run.

Measures, for N Experience events from one process:
  * call rate: events/s through publish() (Avro encoding included) vs. raw Producer.produce() of
    pre-encoded bytes — the floor librdkafka itself sets;
  * end to end: events/s until the broker acknowledged the last one (flush included);
  * the time of one call: p50 / p99 / p99.9 / max, in microseconds.

Usage (the local broker must run; `tier3 broker start`):
    python bench/bench_publisher.py --events 200000 [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import uuid

from confluent_kafka import Producer
from tier3.schemas import SingleObjectCodec
from tier3.streams.backend.publisher import Publisher, PublisherConfig
from tier3.streams.demo.simulate import simulate
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import create_topics


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # noqa: E731
    return {
        "p50_us": pick(0.5),
        "p99_us": pick(0.99),
        "p999_us": pick(0.999),
        "max_us": ordered[-1] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


def run_raw(settings: KafkaSettings, keys: list[bytes], values: list[bytes]) -> dict:
    producer = Producer(
        {
            **settings.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1024 * 1024,
        }
    )
    topic = settings.topic("experiences")
    times = []
    start = time.perf_counter()
    for i in range(len(keys)):
        t0 = time.perf_counter_ns()
        producer.produce(topic, values[i], keys[i])
        times.append(time.perf_counter_ns() - t0)
        if i % 1000 == 0:
            producer.poll(0)
    calls = time.perf_counter() - start
    producer.flush(60)
    total = time.perf_counter() - start
    return {
        "calls_per_s": len(keys) / calls,
        "end_to_end_per_s": len(keys) / total,
        **percentiles(times),
    }


def run_publisher(settings: KafkaSettings, records: list[dict]) -> dict:
    publisher = Publisher(
        settings,
        PublisherConfig(buffer_messages=1_000_000, buffer_kbytes=1024 * 1024),
        enabled=True,
    )
    times = []
    start = time.perf_counter()
    for record in records:
        t0 = time.perf_counter_ns()
        publisher.publish_experience(record)
        times.append(time.perf_counter_ns() - t0)
    calls = time.perf_counter() - start
    undelivered = publisher.close(60)
    total = time.perf_counter() - start
    assert undelivered == 0 and publisher.stats.dropped == 0 and publisher.stats.failed == 0
    return {
        "calls_per_s": len(records) / calls,
        "end_to_end_per_s": len(records) / total,
        **percentiles(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = KafkaSettings(
        bootstrap_servers=args.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}."
    )
    create_topics(settings)
    base = [e.record for e in simulate(5_000, seed=1) if e.event == "Experience"]
    records = [{**base[i % len(base)], "query_id": f"{i:012d}"} for i in range(args.events)]
    codec = SingleObjectCodec()
    keys = [r["query_id"].encode() for r in records]
    values = [codec.encode("Experience", r) for r in records]

    results = {"raw_produce_preencoded": [], "tier3_publish": []}
    for _ in range(args.rounds):  # interleaved, so both see the same machine state
        results["raw_produce_preencoded"].append(run_raw(settings, keys, values))
        results["tier3_publish"].append(run_publisher(settings, records))
    best = {k: max(v, key=lambda r: r["calls_per_s"]) for k, v in results.items()}
    raw, ours = best["raw_produce_preencoded"], best["tier3_publish"]
    summary = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "events": args.events,
        "rounds": args.rounds,
        "best_of_rounds": best,
        "ratio_calls_per_s_tier3_over_raw": ours["calls_per_s"] / raw["calls_per_s"],
        "ratio_end_to_end_tier3_over_raw": ours["end_to_end_per_s"] / raw["end_to_end_per_s"],
        "encode_us_per_event": (1 / ours["calls_per_s"] - 1 / raw["calls_per_s"]) * 1e6,
        "all_rounds": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
