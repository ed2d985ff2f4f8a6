"""The sampler as users run it: real ``tier3 run sampler`` workers against the real broker.

Each test publishes ``tier3 simulate`` traffic with a fixed seed and compares the capture jobs
that come out with what the policy says about the same events, computed here independently.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
from pathlib import Path

import pytest
from tier3.schemas import SingleObjectCodec
from tier3.schemas.registry import EXPERIENCE, FEEDBACK
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import SimulatedEvent, simulate
from tier3.streams.kafka.dead_letters import HEADER_REASON, HEADER_STAGE, HEADER_TOPIC
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, EXPERIENCES
from tier3.streams.processors.sampling import Policy, decide

from tests.support.kafka_reading import read_all, read_events
from tests.support.stream_workers import TIER3, Worker, wait_for

pytestmark = pytest.mark.slow

TIMEOUT = "3"  # seconds an experience waits for feedback in these tests


def expected_jobs(events: list[SimulatedEvent], policy: Policy | None = None) -> dict[str, str]:
    """query_id → reason, for every query the policy (by default the seed's) captures."""
    policy = policy or Policy()
    feedback = {e.key: e.record for e in events if e.event == FEEDBACK}
    decisions = {
        e.key: decide(e.record, feedback.get(e.key), policy)
        for e in events
        if e.event == EXPERIENCE
    }
    return {q: reason for q, reason in decisions.items() if reason}


def publish(
    settings: KafkaSettings, events: list[SimulatedEvent], rate: float | None = None
) -> None:
    publisher = Publisher(settings, enabled=True)
    start = time.perf_counter()
    for i, e in enumerate(events):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        assert publisher.publish(e.event, e.key, e.record)
    assert publisher.close() == 0


def simulate_command(settings: KafkaSettings, *args: str) -> None:
    """Publish traffic the way a user does: ``tier3 simulate``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env.update(TIER3_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
               TIER3_TOPIC_PREFIX=settings.topic_prefix)
    done = subprocess.run([TIER3, "simulate", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def jobs(settings: KafkaSettings) -> list[dict]:
    return [record for _, record in read_events(settings, CAPTURE_JOBS)]


def assert_exactly(settings: KafkaSettings, expected: dict[str, str]) -> list[dict]:
    """Every expected job is there once, with its reason, and there is no other."""
    found = jobs(settings)
    repeats = {q: n for q, n in collections.Counter(j["query_id"] for j in found).items() if n > 1}
    assert not repeats, f"capture jobs emitted more than once: {repeats}"
    assert {j["query_id"]: j["reason"] for j in found} == expected
    return found


def table_size(worker: Worker, table: str) -> float:
    return worker.metrics().get(f"tier3_processor_table_entries{{role=sampler,table={table}}}", -1)


def all_jobs_out(settings: KafkaSettings, expected: dict[str, str], timeout: float = 90) -> None:
    wait_for(
        lambda: len({j["query_id"] for j in jobs(settings)}) >= len(expected),
        timeout,
        f"{len(expected)} capture jobs",
        every=1.0,
    )


def test_capture_jobs_are_exactly_what_the_policy_says(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    events = list(simulate(300, seed=11))  # what `tier3 simulate -n 300 --seed 11` publishes
    expected = expected_jobs(events)
    worker = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT)
    try:
        simulate_command(kafka, "-n", "300", "--seed", "11")
        wait_for(lambda: worker.metric("tier3_sampler_decisions_total") == 300, 90,
                 "a decision for each of the 300 queries")
        all_jobs_out(kafka, expected)
        found = assert_exactly(kafka, expected)
        assert {"random", "high_confidence"} == set(expected.values())

        experiences = {e.key: e.record for e in events if e.event == EXPERIENCE}
        ratings = {e.key: e.record["rating"] for e in events if e.event == FEEDBACK}
        for job in found:
            source = experiences[job["query_id"]]
            assert job["query"] == source["query"]
            assert job["context"] == source["context"]
            assert job["original_response"] == source["response"]
            assert job["confidence"] == source["confidence"]
            # Feedback came within the timeout for every rated query: its rating travels along.
            assert job["rating"] == ratings.get(job["query_id"])

        assert worker.metric("tier3_sampler_jobs_total") == len(expected)
        # The rate is published with the table sizes, every 2 s.
        wait_for(lambda: worker.metric("tier3_sampler_sampling_rate")
                 == pytest.approx(len(expected) / 300), 10, "the sampling rate of all 300")
        assert worker.metric("tier3_processor_events_total{outcome=") == len(events)
        # Every query was decided, so nothing waits; only the captured ones are remembered.
        # (Table sizes and lag are sampled every 2 s.)
        wait_for(lambda: table_size(worker, "waiting") == 0, 10, "an empty waiting table")
        assert table_size(worker, "captured") == len(expected)
        assert worker.metric("tier3_processor_consumer_lag{") == 0
        # The default policy never reads the feedback, so the queries it does not choose are
        # let go at their experience: none of them is ever written to the waiting table.
        written = waiting_changelog(kafka)
        experiences_written = {key for key, kind in written if kind == b"E"}
        assert experiences_written and experiences_written <= set(expected)
        # Its experience let go, a feedback of an unchosen query is dropped unwritten too; only
        # one read before its experience waits in the table (Kafka orders no two topics).
        assert worker.metric("tier3_processor_events_total{outcome=let_go") >= 300 - len(expected)
    finally:
        worker.stop()


def waiting_changelog(settings: KafkaSettings) -> list[tuple[str, bytes]]:
    """(query_id, kind) of every value written to the sampler's waiting table (E or F)."""
    return [
        (r.key, r.value[:1])
        for r in read_all(settings, "sampler-waiting-changelog")
        if r.value is not None
    ]


def test_low_rating_rule_reads_the_feedback_when_switched_on(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    events = list(simulate(300, seed=12))
    policy = Policy(low_rating=2)
    expected = expected_jobs(events, policy)
    low_rated = {q for q, reason in expected.items() if reason == "low_rating"}
    assert len(low_rated) >= 5, "the seed gives low-rated queries that only feedback can choose"
    worker = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT, TIER3_LOW_RATING="2")
    try:
        publish(kafka, events)
        wait_for(lambda: worker.metric("tier3_sampler_decisions_total") == 300, 90,
                 "a decision for each of the 300 queries")
        all_jobs_out(kafka, expected)
        found = assert_exactly(kafka, expected)
        ratings = {e.key: e.record["rating"] for e in events if e.event == FEEDBACK}
        assert all(j["rating"] == ratings[j["query_id"]] for j in found
                   if j["query_id"] in low_rated)
        # With a rule that needs feedback, every query waits for it: none is let go at sight.
        assert worker.metric("tier3_processor_events_total{outcome=let_go") == 0
    finally:
        worker.stop()


def test_capture_switch_off_emits_no_jobs(kafka: KafkaSettings, tmp_path: Path) -> None:
    events = list(simulate(80, seed=3))
    worker = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT, ENABLE_TIER3_CAPTURE="false")
    try:
        publish(kafka, events)
        wait_for(lambda: worker.metric("tier3_sampler_decisions_total{outcome=skipped}") == 80, 90,
                 "80 queries decided")
        assert jobs(kafka) == []
    finally:
        worker.stop()


def test_killed_worker_restarts_without_losing_or_repeating_jobs(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    events = list(simulate(400, seed=21))
    expected = expected_jobs(events)
    first = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT)
    second = None
    try:
        publish(kafka, events[:250])
        # Kill it as soon as it has emitted some jobs: most input offsets are not committed yet
        # and experiences of the first part wait for feedback that is in the second.
        wait_for(lambda: len(jobs(kafka)) >= 5, 90, "the first capture jobs", every=0.2)
        first.kill()
        publish(kafka, events[250:])
        second = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT)
        all_jobs_out(kafka, expected)
        # Let any repeat show: wait until nothing is left waiting or in flight.
        wait_for(lambda: table_size(second, "waiting") == 0 == table_size(second, "in_flight"),
                 60, "no query left waiting")
        assert_exactly(kafka, expected)
        assert second.metric("tier3_processor_events_total{outcome=") > 0
    finally:
        first.stop()
        if second:
            second.stop()


def test_two_workers_share_the_partitions_and_a_rebalance_loses_nothing(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    events = list(simulate(600, seed=31))
    expected = expected_jobs(events)
    one = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT)
    two = None
    try:
        wait_for(lambda: owned(one) == 6, 90, "the first worker to own the six source partitions")
        publish(kafka, events[:150], rate=300)
        # The second joins while the first holds state and traffic flows.
        two = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT)
        publish(kafka, events[150:300], rate=300)
        wait_for(lambda: owned(two) and owned(one) + owned(two) == 6, 90,
                 "the two workers to share the six source partitions")
        publish(kafka, events[300:400], rate=300)
        wait_for(lambda: all(w.metric("tier3_processor_events_total{outcome=") > 0
                             for w in (one, two)), 60, "both workers to process events")
        # The first worker leaves mid-stream; the second takes over its partitions and state.
        assert one.stop() == 0
        publish(kafka, events[400:], rate=300)
        wait_for(lambda: owned(two) == 6, 60, "the second worker to own every partition")
        all_jobs_out(kafka, expected)
        wait_for(lambda: table_size(two, "waiting") == 0 == table_size(two, "in_flight"),
                 60, "no query left waiting")
        assert_exactly(kafka, expected)
    finally:
        one.stop()
        if two:
            two.stop()


def owned(worker: Worker) -> int:
    """How many source partitions (experiences and feedback) the worker reports lag for."""
    return sum(1 for k in worker.metrics() if k.startswith("tier3_processor_consumer_lag{"))


def test_poison_messages_go_to_the_dead_letter_topic_and_work_goes_on(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    events = list(simulate(60, seed=8))
    expected = expected_jobs(events)
    codec = SingleObjectCodec()
    valid = next(e for e in events if e.event == EXPERIENCE)
    feedback = next(e for e in events if e.event == FEEDBACK)
    poison = [
        (b"garbage", b"this is not avro at all"),
        (feedback.key.encode(), codec.encode(FEEDBACK, feedback.record)),  # wrong event type
        (b"someone-else", codec.encode(EXPERIENCE, valid.record)),  # keyed by another query
    ]
    worker = Worker(kafka, "sampler", tmp_path, "--timeout", TIMEOUT)
    try:
        producer = EventProducer(kafka)
        for key, value in poison:
            producer.raw.produce(kafka.topic(EXPERIENCES), value, key)
        assert producer.flush(10) == 0
        publish(kafka, events)
        all_jobs_out(kafka, expected)
        assert_exactly(kafka, expected)
        letters = wait_for(lambda: read_all(kafka, EXPERIENCES + ".dlq") if len(
            read_all(kafka, EXPERIENCES + ".dlq")) == 3 else None, 30, "three dead letters")
        by_key = {letter.key: letter for letter in letters}
        for key, value in poison:
            letter = by_key[key.decode()]
            assert letter.value == value
            assert letter.headers[HEADER_TOPIC] == kafka.topic(EXPERIENCES).encode()
            assert letter.headers[HEADER_STAGE] == b"sampler"
        assert b"magic bytes" in by_key["garbage"].headers[HEADER_REASON]
        assert b"expected Experience, got a Feedback" in by_key[feedback.key].headers[HEADER_REASON]
        assert b"is not the event's query_id" in by_key["someone-else"].headers[HEADER_REASON]
        assert worker.alive()
        assert worker.metric("tier3_processor_events_total{outcome=dead_letter") == 3
    finally:
        worker.stop()
