"""``tier3 replay`` against the real broker: windows by time and by offsets, dry run first, and
two replays of one window that add no query twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tier3.schemas.registry import CAPTURE_JOB, EXPERIENCE
from tier3.streams.backend.publisher import Publisher
from tier3.streams.demo.simulate import simulate
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, EXPERIENCES
from tier3.streams.ops.replay import (
    REPLAY_REASON,
    Replayer,
    ReplayError,
    Window,
)
from tier3.streams.ops.replay_send import HEADER_REPLAY_ID
from tier3.streams.processors.sampling import Policy, decide

from tests.support.kafka_reading import read_all, read_events

# Half at random, nothing for confidence: a policy unlike the default, so the replay is a change.
NEW_POLICY = Policy(random_rate=0.5, high_confidence=None)


def _publish(settings: KafkaSettings, events: int, seed: int) -> list[dict]:
    """Publish simulated traffic; return its experiences."""
    publisher = Publisher(settings, enabled=True)
    experiences = []
    for ev in simulate(events, seed):
        assert publisher.publish(ev.event, ev.key, ev.record)
        if ev.event == EXPERIENCE:
            experiences.append(ev.record)
    assert publisher.close(10) == 0
    return experiences


def _jobs(settings: KafkaSettings) -> list[dict]:
    return [r for name, r in read_events(settings, CAPTURE_JOBS) if name == CAPTURE_JOB]


def _latest_by_key(settings: KafkaSettings) -> dict[str, dict]:
    """What a compacted topic keyed by query_id would keep: the last job of each query."""
    return {job["query_id"]: job for job in _jobs(settings)}


def test_resample_dry_run_previews_and_sends_nothing(kafka: KafkaSettings) -> None:
    experiences = _publish(kafka, 40, seed=1)
    expected = Counter(r for e in experiences if (r := decide(e, None, NEW_POLICY)))
    assert expected  # the test means something only if the policy chooses some

    report = Replayer(kafka).resample(Window(), NEW_POLICY)
    assert not report.executed
    assert report.read == report.window_size == 40
    assert report.chosen == expected
    assert _jobs(kafka) == []


def test_resample_twice_sends_each_chosen_query_once(kafka: KafkaSettings) -> None:
    experiences = _publish(kafka, 40, seed=2)
    chosen = {e["query_id"] for e in experiences if decide(e, None, NEW_POLICY)}

    first = Replayer(kafka).resample(Window(), NEW_POLICY, execute=True)
    assert first.executed and first.sent == len(chosen) and first.failed == 0
    after_one = _latest_by_key(kafka)
    assert set(after_one) == chosen
    assert {j["reason"] for j in after_one.values()} == {"random"}

    Replayer(kafka).resample(Window(), NEW_POLICY, execute=True)
    after_two = _latest_by_key(kafka)
    assert set(after_two) == chosen  # the same queries, none added: the dataset keeps its size
    strip = lambda jobs: {k: {**v, "created_at": 0} for k, v in jobs.items()}  # noqa: E731
    assert strip(after_two) == strip(after_one)


def test_resample_by_time_window_takes_only_that_window(kafka: KafkaSettings) -> None:
    old = _publish(kafka, 20, seed=3)
    time.sleep(1.2)
    boundary = datetime.now(UTC)
    time.sleep(0.2)
    new = _publish(kafka, 20, seed=4)

    report = Replayer(kafka).resample(Window(since=boundary), NEW_POLICY, execute=True)
    assert report.read == 20
    sent = set(_latest_by_key(kafka))
    assert sent == {e["query_id"] for e in new if decide(e, None, NEW_POLICY)}
    assert not sent & {e["query_id"] for e in old}

    before = Replayer(kafka).resample(Window(until=boundary), NEW_POLICY)
    assert before.read == 20
    assert sum(before.chosen.values()) == sum(1 for e in old if decide(e, None, NEW_POLICY))


def test_resample_by_offsets_on_one_partition(kafka: KafkaSettings) -> None:
    _publish(kafka, 40, seed=5)
    in_partition = sorted(
        (r for r in read_all(kafka, EXPERIENCES) if r.partition == 1), key=lambda r: r.offset
    )
    assert len(in_partition) >= 5
    window = Window(from_offset=1, to_offset=4, partitions=(1,))
    wanted = {r.key for r in in_partition if 1 <= r.offset < 4}

    report = Replayer(kafka).resample(window, Policy(random_rate=1.0), execute=True)
    assert report.read == 3
    jobs = read_all(kafka, CAPTURE_JOBS)
    assert {r.key for r in jobs} == wanted
    assert {r.partition for r in jobs} == {1}  # where the sampler puts a job: its experience's


def test_resample_uses_feedback_for_a_rating_policy(kafka: KafkaSettings) -> None:
    _publish(kafka, 60, seed=6)
    low = Policy(random_rate=0.0, high_confidence=None, low_rating=2)
    report = Replayer(kafka).resample(Window(), low, execute=True)
    jobs = _jobs(kafka)
    assert report.chosen["low_rating"] == len(jobs) > 0
    assert all(j["rating"] is not None and j["rating"] <= 2 for j in jobs)


def _send_jobs(settings: KafkaSettings, n: int) -> list[str]:
    producer = EventProducer(settings)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, query_id in enumerate(ids):
        job = {
            "query_id": query_id,
            "created_at": 1_767_225_600_000 + i,
            "reason": "random",
            "query": f"query {i}",
            "context": "{}",
            "original_response": "{}",
            "original_model": "claude",
            "model_variant": "teacher",
            "confidence": 0.5,
            "rating": None,
        }
        producer.send(CAPTURE_JOBS, CAPTURE_JOB, query_id, job)
    assert producer.flush(10) == 0
    return ids


def test_recapture_into_a_target_twice_adds_no_query_twice(kafka: KafkaSettings) -> None:
    ids = _send_jobs(kafka, 12)
    producer = EventProducer(kafka)
    producer.raw.produce(kafka.topic(CAPTURE_JOBS), b"\xc3\x01garbage", b"bad-key")
    producer.flush(10)
    target = kafka.model_copy(update={"topic_prefix": f"{kafka.topic_prefix}replayed."})

    dry = Replayer(kafka, target_prefix=target.topic_prefix).recapture(Window())
    assert (dry.read, dry.undecodable, dry.chosen[REPLAY_REASON]) == (13, 1, 12)

    for _ in range(2):
        report = Replayer(kafka, target_prefix=target.topic_prefix).recapture(
            Window(), execute=True
        )
        assert report.sent == 12
    replayed = read_all(target, CAPTURE_JOBS)
    assert len(replayed) == 24  # two replays on a delete-policy topic ...
    latest = _latest_by_key(target)
    assert set(latest) == set(ids)  # ... but one job per query: nothing doubles downstream
    assert {j["reason"] for j in latest.values()} == {REPLAY_REASON}
    assert all(HEADER_REPLAY_ID in r.headers for r in replayed)
    assert len(read_all(kafka, CAPTURE_JOBS)) == 13  # the live topic untouched


def test_recapture_into_the_live_topic_reads_only_the_window_it_started_with(
    kafka: KafkaSettings,
) -> None:
    ids = _send_jobs(kafka, 6)
    report = Replayer(kafka, rate=200).recapture(Window(), execute=True)
    assert report.sent == 6
    jobs = _jobs(kafka)
    assert len(jobs) == 12 and {j["query_id"] for j in jobs} == set(ids)


def test_a_window_naming_a_missing_partition_is_refused(kafka: KafkaSettings) -> None:
    with pytest.raises(ReplayError, match="no partition"):
        Replayer(kafka).recapture(Window(partitions=(7,)))


def test_cli_replay_is_a_dry_run_until_execute(kafka: KafkaSettings) -> None:
    ids = _send_jobs(kafka, 5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env |= {
        "TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": kafka.topic_prefix,
        "TIER3_LOG_JSON": "1",
    }
    tier3 = str(Path(sys.executable).parent / "tier3")

    def run(*args: str) -> dict:
        done = subprocess.run(
            [tier3, "replay", "recapture", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    dry = run("--from-offset", "0")
    assert (dry["executed"], dry["jobs"], dry["sent"]) == (False, 5, 0)
    assert len(_jobs(kafka)) == 5
    done = run("--execute", "--rate", "1000")
    assert (done["executed"], done["sent"]) == (True, 5)
    assert {j["query_id"] for j in _jobs(kafka)} == set(ids)


def test_replaying_twice_through_the_capture_consumer_doubles_no_trace(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """The whole idempotency claim, with the real capture consumer downstream."""
    from tier3.consumers.object_store import TraceStore
    from tier3.consumers.settings import CaptureSettings
    from tier3.trainers.training.traces_source import read_traces

    from tests.support.capture_harness import build_worker, committed, end_offsets, run_until

    ids = _send_jobs(kafka, 5)
    root = (tmp_path / "objects").as_uri()
    settings = CaptureSettings(
        teacher_provider="offline",
        student_provider="offline",
        group=f"{kafka.topic_prefix}capture",
        commit_interval_s=0.2,
    )

    def capture_everything() -> None:
        ends = {p: end for p, end in end_offsets(kafka).items() if end > 0}

        def done() -> bool:
            done_to = committed(kafka, settings.group)
            return all(done_to.get(p, -1) >= end for p, end in ends.items())

        run_until(build_worker(kafka, settings, root), done, timeout=60)
        assert done()

    capture_everything()
    assert set(read_traces(kafka).traces) == set(ids)

    for _ in range(2):
        Replayer(kafka).recapture(Window(from_offset=0), execute=True)
    capture_everything()

    traces = read_traces(kafka).traces
    assert set(traces) == set(ids)  # one trace per query ...
    assert {t["capture_reason"] for t in traces.values()} == {REPLAY_REASON}  # ... the replayed one
    assert sorted(TraceStore(root).query_ids()) == sorted(ids)  # one object per query
    assert len(read_all(kafka, "traces")) == 15  # 3 writes per query, compaction keeps the last


def test_dead_letters_go_back_once_their_cause_is_fixed(kafka: KafkaSettings) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from tier3.streams.kafka.dead_letters import send_dead_letter

    [job_id] = _send_jobs(kafka, 1)
    producer = EventProducer(kafka)
    producer.raw.produce(kafka.topic(CAPTURE_JOBS), b"not avro", b"bad", partition=0)
    producer.flush(10)
    # Dead-letter both, as the capture consumer does: one for a teacher outage, one undecodable.
    reader = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": "dl-test",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    reader.assign([TopicPartition(kafka.topic(CAPTURE_JOBS), p, 0) for p in range(3)])
    originals = []
    deadline = time.monotonic() + 20
    while len(originals) < 2 and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None and not msg.error():
            originals.append(msg)
    reader.close()
    for msg in originals:
        why = (
            ("teacher unreachable", "APIConnectionError")
            if msg.key() != b"bad"
            else ("not avro", "DecodeError")
        )
        send_dead_letter(producer, msg, *why, stage="capture")
    assert producer.flush(10) == 0

    dry = Replayer(kafka).dead_letters(CAPTURE_JOBS, Window())
    assert (dry.read, dry.undecodable, dict(dry.chosen)) == (2, 1, {"APIConnectionError": 1})
    done = Replayer(kafka).dead_letters(CAPTURE_JOBS, Window(), execute=True)
    assert done.sent == 1
    back = [r for r in read_all(kafka, CAPTURE_JOBS) if HEADER_REPLAY_ID in r.headers]
    assert [(r.key, r.value) for r in back] == [
        (job_id, next(m.value() for m in originals if m.key() == job_id.encode()))
    ]
    with pytest.raises(ReplayError, match="not a tier3 topic"):
        Replayer(kafka).dead_letters("nonsense", Window())


def test_resample_adds_what_the_old_policy_missed_without_recapturing_the_rest(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    from tier3.consumers.settings import CaptureSettings
    from tier3.trainers.training.traces_source import read_traces

    from tests.support.capture_harness import build_worker, run_until

    experiences = _publish(kafka, 30, seed=8)
    old, new = Policy(random_rate=0.2, high_confidence=None), Policy(0.6, high_confidence=None)
    old_ids = {e["query_id"] for e in experiences if decide(e, None, old)}
    new_ids = {e["query_id"] for e in experiences if decide(e, None, new)}
    assert old_ids < new_ids  # hash-based: the wider policy keeps every old choice

    settings = CaptureSettings(
        teacher_provider="offline",
        student_provider="offline",
        group=f"{kafka.topic_prefix}capture",
        commit_interval_s=0.2,
    )
    root = (tmp_path / "objects").as_uri()
    Replayer(kafka).resample(Window(), old, execute=True)
    run_until(
        build_worker(kafka, settings, root),
        lambda: set(read_traces(kafka).traces) == old_ids,
        timeout=60,
    )

    report = Replayer(kafka).resample(Window(), new, execute=True)
    assert report.skipped_traced == len(old_ids)
    assert report.sent == len(new_ids - old_ids)
    jobs = [j["query_id"] for j in _jobs(kafka)]
    assert sorted(jobs) == sorted([*old_ids, *(new_ids - old_ids)])  # no query sent twice
    forced = Replayer(kafka).resample(Window(), new, skip_traced=False)
    assert sum(forced.chosen.values()) == len(new_ids)
