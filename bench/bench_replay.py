"""Benchmark: how fast ``tier3 replay`` goes through a window of history.

There is no budget for replay in the design; this measures what an operator can expect and
where the time goes. Experiences are published once (simulated traffic), then, in the same run
against the same broker:

  * baseline: read the window and nothing else (``offsets.read_ranges``, an assigned consumer);
  * resample, dry run: read + decode + join feedback + ``sampling.decide``;
  * resample, --execute: the same, and produce the chosen capture jobs (acks=all) to a target
    prefix, as ``tier3 replay resample --execute --target-prefix`` does;
  * recapture, --execute: read the capture jobs just made and send them again.

Rates are experiences (or jobs) read per second of wall time; ratios are against the baseline.

The budget (design brief): a dry run ≥ 50k experiences/s. The resample dry run is shown for
the default policy (nothing reads feedback: none is read) and for one with ``low_rating`` on
(every undecided query's feedback is read and decoded).

Usage (from the repository root; a broker must run, e.g. a private one on 29092):
    python bench/bench_replay.py --events 20000 [--bootstrap 127.0.0.1:29092]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid

from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import run_simulation
from tier3.streams.kafka import offsets
from tier3.streams.kafka.offsets import Range, read_ranges
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES, admin_client, create_topics
from tier3.streams.ops.replay import Replayer, Window
from tier3.streams.processors.sampling import Policy


def timed(label: str, action, count_of) -> tuple[str, float, int, float]:
    """Wall seconds, and this process' CPU seconds (all its threads, librdkafka's included):
    on a crowded box the wall rate shows the crowd; the CPU rate shows what a free core gives."""
    start, cpu = time.perf_counter(), time.process_time()
    result = action()
    seconds = time.perf_counter() - start
    return label, seconds, count_of(result), time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:29092")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    prefix = f"bench-replay-{uuid.uuid4().hex[:8]}."
    settings = KafkaSettings(
        bootstrap_servers=args.bootstrap, topic_prefix=prefix, partitions=args.partitions
    )
    create_topics(settings)
    publisher = Publisher(settings, enabled=True)
    run_simulation(publisher, args.events, seed=1)
    assert publisher.close(60) == 0

    admin = admin_client(settings)
    full = settings.topic(EXPERIENCES)
    marks = offsets.watermarks(admin, offsets.partitions_of(admin, full))
    window = [Range(t, p, low, high) for (t, p), (low, high) in marks.items()]
    policy = Policy(random_rate=0.3, high_confidence=0.9)
    rating_policy = Policy(random_rate=0.3, high_confidence=0.9, low_rating=2)
    target = f"{prefix}target."

    rows = [
        timed(
            "baseline: read the window",
            lambda: sum(1 for _ in read_ranges(settings, window)),
            lambda n: n,
        ),
        timed(
            "resample, dry run",
            lambda: Replayer(settings).resample(Window(), policy),
            lambda r: r.read,
        ),
        timed(
            "resample, dry run, low_rating on (reads feedback)",
            lambda: Replayer(settings).resample(Window(), rating_policy),
            lambda r: r.read,
        ),
        timed(
            "resample, --execute (to a target prefix)",
            lambda: Replayer(settings, target_prefix=target).resample(
                Window(), policy, execute=True
            ),
            lambda r: r.read,
        ),
    ]
    target_settings = settings.model_copy(update={"topic_prefix": target})
    rows.append(
        timed(
            "recapture, --execute (the jobs just made)",
            lambda: Replayer(target_settings).recapture(Window(), execute=True),
            lambda r: r.read,
        )
    )

    # Leave the broker as it was: its topics are its memory.
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result()

    base_rate = rows[0][2] / rows[0][1]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.node()} ({os.cpu_count()} CPUs), "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load {load}; {args.events} experiences, "
        f"{args.partitions} partitions"
    )
    print("| run | messages read | seconds | messages/s | vs baseline | CPU s | messages/CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, seconds, count, cpu in rows:
        rate = count / seconds
        print(f"| {label} | {count} | {seconds:.2f} | {rate:,.0f} | {rate / base_rate:.2f} "
              f"| {cpu:.2f} | {count / max(cpu, 1e-9):,.0f} |")


if __name__ == "__main__":
    main()
