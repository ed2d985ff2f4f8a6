"""``tier3 traces delete``: a trace leaves object storage, the compacted topic gets a tombstone,
and the next dataset leaves the query out. The traces are made by the real capture consumer
(offline teacher and student) against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tier3.consumers.object_store import TraceStore
from tier3.consumers.settings import CaptureSettings
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES
from tier3.streams.ops.trace_deletion import delete_traces
from tier3.trainers.training.dataset import build_dataset
from tier3.trainers.training.traces_source import read_traces

from tests.support.capture_harness import (
    build_worker,
    latest_traces,
    make_job,
    publish_jobs,
    run_until,
)
from tests.support.kafka_reading import read_all


@pytest.fixture
def captured(kafka: KafkaSettings, tmp_path: Path) -> tuple[KafkaSettings, TraceStore, list[str]]:
    """Six traces captured by the real capture consumer into a local object store."""
    jobs = [make_job(seed) for seed in range(6)]
    publish_jobs(kafka, jobs)
    root = (tmp_path / "objects").as_uri()
    settings = CaptureSettings(
        teacher_provider="offline",
        student_provider="offline",
        group=f"{kafka.topic_prefix}capture",
        commit_interval_s=0.2,
    )
    worker = build_worker(kafka, settings, root)
    run_until(worker, lambda: len(latest_traces(kafka)) == len(jobs), timeout=60)
    store = TraceStore(root)
    ids = [j["query_id"] for j in jobs]
    assert sorted(store.query_ids()) == sorted(ids)
    return kafka, store, ids


def _dataset_ids(kafka: KafkaSettings, ids: list[str]) -> set[str]:
    """The query_ids the trainer's next dataset for these queries would hold."""
    snapshot = read_traces(kafka)
    request = {"request_id": "r", "model": "m", "query_ids": ids}
    built = build_dataset(request, snapshot.traces, eval_share=0.0, base_model="tiny")
    return {e["query_id"] for e in built.train + built.eval}


def test_delete_removes_object_tombstones_topic_and_leaves_the_dataset(captured) -> None:
    kafka, store, ids = captured
    gone, kept = ids[0], ids[1:]
    assert _dataset_ids(kafka, ids) == set(ids)

    [deletion] = delete_traces(kafka, [gone])
    assert deletion.found_on_topic and deletion.object_deleted and deletion.tombstoned
    assert deletion.object_uri == store.uri(gone)

    assert sorted(store.query_ids()) == sorted(kept)  # the object is gone, the others stay
    reads = [r for r in read_all(kafka, TRACES) if r.key == gone]
    assert [r.value is None for r in reads] == [False, True]  # the trace, then its tombstone
    assert len({r.partition for r in reads}) == 1  # in the trace's partition: compaction drops it
    snapshot = read_traces(kafka)
    assert gone in snapshot.deleted and gone not in snapshot.traces
    assert _dataset_ids(kafka, ids) == set(kept)


def test_delete_is_idempotent_and_safe_for_unknown_queries(captured) -> None:
    kafka, store, ids = captured
    delete_traces(kafka, [ids[1]])
    again, unknown = delete_traces(kafka, [ids[1], "never-captured"])
    assert not again.found_on_topic and not again.object_deleted and again.tombstoned
    assert not unknown.found_on_topic and unknown.object_uri is None
    assert len(list(store.query_ids())) == len(ids) - 1


def test_cli_traces_delete(captured) -> None:
    kafka, store, ids = captured
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env |= {
        "TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": kafka.topic_prefix,
        "TIER3_LOG_JSON": "1",
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "tier3"),
            "traces",
            "delete",
            "--query-id",
            ids[2],
            "-q",
            ids[3],
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = {d["query_id"]: d for d in json.loads(done.stdout)}
    assert result[ids[2]]["object_deleted"] and result[ids[3]]["object_deleted"]
    assert set(store.query_ids()) == set(ids) - {ids[2], ids[3]}
    assert _dataset_ids(kafka, ids) == set(ids) - {ids[2], ids[3]}

    nothing = subprocess.run(
        [str(Path(sys.executable).parent / "tier3"), "traces", "delete"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nothing.returncode == 1 and "--query-id" in nothing.stderr


def test_a_replay_does_not_bring_a_deleted_trace_back(captured) -> None:
    from tier3.streams.ops.replay import Replayer, Window

    kafka, _, ids = captured
    delete_traces(kafka, [ids[0]])
    report = Replayer(kafka).recapture(Window(), execute=True)
    assert report.skipped_deleted == 1 and report.sent == len(ids) - 1
    resent = [r.key for r in read_all(kafka, "capture-jobs")]
    assert resent.count(ids[0]) == 1  # only the original job, never a replayed one
    assert all(resent.count(q) == 2 for q in ids[1:])
    forced = Replayer(kafka, respect_deletions=False).recapture(Window())
    assert forced.skipped_deleted == 0 and forced.chosen["replay"] == len(ids)
