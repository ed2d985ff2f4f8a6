"""Object storage against a real S3 server (SeaweedFS, started by the project) through s3fs.

What a team running tier3 on its company's S3 relies on: capture writes one object per trace
under an ``s3://`` URL; the trainer's artefacts (checkpoints, the completion marker) round-trip,
which is what a resumed or redelivered run reads back; trace deletion removes the object. The
client is configured the standard way, by the AWS variables (endpoint, key, secret), never by
tier3-specific settings. The tests skip, saying why, where SeaweedFS cannot be built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tier3.consumers.object_store import TraceStore
from tier3.consumers.settings import CaptureSettings
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.local.s3_server import LocalS3Server
from tier3.streams.ops.trace_deletion import delete_traces
from tier3.trainers.artifacts import RunArtifacts

from tests.support.capture_harness import (
    behind,
    build_worker,
    latest_traces,
    make_job,
    publish_jobs,
    run_until,
)
from tests.support.s3 import make_bucket, weed_binary

pytestmark = pytest.mark.s3


def _s3fs(server: LocalS3Server) -> Any:  # an s3fs.S3FileSystem (s3fs is an optional extra)
    import s3fs

    return s3fs.S3FileSystem(
        key=server.access_key,
        secret=server.secret_key.get_secret_value(),
        endpoint_url=server.endpoint_url,
        skip_instance_cache=True,
        config_kwargs={"connect_timeout": 2, "retries": {"max_attempts": 1}},
    )


def test_server_starts_stops_and_keeps_its_objects(tmp_path: Path) -> None:
    pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
    server = LocalS3Server(home=tmp_path / "home", binary=weed_binary())
    with server:
        bucket = make_bucket(server)
        _s3fs(server).pipe_file(f"{bucket}/kept.json", b'{"kept": true}')
    assert not server.is_running()
    from botocore.exceptions import EndpointConnectionError

    with pytest.raises(EndpointConnectionError):
        _s3fs(server).cat_file(f"{bucket}/kept.json")  # nothing answers any more
    with server:  # the same home and port: the object is still there
        assert _s3fs(server).cat_file(f"{bucket}/kept.json") == b'{"kept": true}'
    identities = server.root / "s3-identities.json"
    assert identities.stat().st_mode & 0o077 == 0  # the secret's file is the owner's alone


def test_wrong_secret_is_refused(s3_server: LocalS3Server, s3_bucket: str) -> None:
    import s3fs

    intruder = s3fs.S3FileSystem(
        key=s3_server.access_key, secret="not-the-secret", endpoint_url=s3_server.endpoint_url,
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError):
        intruder.pipe_file(f"{s3_bucket}/x.json", b"{}")


def _capture(kafka: KafkaSettings, root: str, count: int) -> list[str]:
    jobs = [make_job(seed) for seed in range(count)]
    publish_jobs(kafka, jobs)
    settings = CaptureSettings(
        teacher_provider="offline",
        student_provider="offline",
        group=f"{kafka.topic_prefix}capture",
        commit_interval_s=0.2,
    )
    worker = build_worker(kafka, settings, root)
    run_until(worker, lambda: len(latest_traces(kafka)) == len(jobs) and not behind(
        kafka, settings.group
    ), timeout=90)
    return [j["query_id"] for j in jobs]


def test_capture_writes_one_object_per_trace_to_s3(kafka: KafkaSettings, s3_bucket: str) -> None:
    root = f"{s3_bucket}/tier3"
    ids = _capture(kafka, root, 8)
    store = TraceStore(root)
    assert sorted(store.query_ids()) == sorted(ids)
    latest = latest_traces(kafka)
    for query_id in ids:
        assert latest[query_id]["object_uri"] == f"{root}/traces/{query_id[:2]}/{query_id}.json"
        assert store.read(query_id)["query_id"] == query_id
    assert not behind(kafka, f"{kafka.topic_prefix}capture")  # every job committed


def test_trace_deletion_removes_the_s3_object(kafka: KafkaSettings, s3_bucket: str) -> None:
    root = f"{s3_bucket}/tier3"
    ids = _capture(kafka, root, 4)
    [deletion] = delete_traces(kafka, [ids[0]])
    assert deletion.object_deleted and deletion.tombstoned
    assert deletion.object_uri.startswith("s3://")
    assert sorted(TraceStore(root).query_ids()) == sorted(ids[1:])
    [again] = delete_traces(kafka, [ids[0]])  # idempotent: the object is already gone
    assert not again.object_deleted and again.tombstoned


def _checkpoint(folder: Path, step: int, whole: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_model.safetensors").write_bytes(bytes([step]) * 1024)
    (path / "optimizer.pt").write_bytes(b"o" * 2048)
    if whole:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_trainer_artefacts_round_trip_through_s3(s3_bucket: str, tmp_path: Path) -> None:
    run = RunArtifacts(f"{s3_bucket}/tier3", "widgets", "req-1")
    assert run.completed() is None and run.latest_checkpoint() is None
    for step in (2, 4, 6):
        run.upload_dir(_checkpoint(tmp_path / "out", step), f"checkpoints/checkpoint-{step}")
    # A checkpoint cut short (no trainer_state.json) is never the one to resume from.
    run.upload_dir(_checkpoint(tmp_path / "out", 8, whole=False), "checkpoints/checkpoint-8")
    step, remote = run.latest_checkpoint()
    assert step == 6 and remote.endswith("checkpoints/checkpoint-6")

    local = run.download_checkpoint(remote, tmp_path / "resume")
    assert json.loads((local / "trainer_state.json").read_text()) == {"global_step": 6}
    weights = local / "adapter" / "adapter_model.safetensors"
    assert weights.read_bytes() == bytes([6]) * 1024

    run.prune_checkpoints(keep=2)
    assert run.latest_checkpoint()[0] == 6
    # Objects, not prefixes: SeaweedFS still lists an emptied prefix for a while (S3 does not).
    objects = run.fs.find(f"{run.path}/checkpoints")
    left = sorted({p.split("/checkpoints/", 1)[1].split("/", 1)[0] for p in objects})
    assert left == ["checkpoint-6", "checkpoint-8"]

    run.upload_dir(_checkpoint(tmp_path / "again", 6), "checkpoints/checkpoint-6")  # replaced
    record = {"request_id": "req-1", "adapter_uri": run.uri_of("adapter")}
    run.mark_complete(record)
    assert RunArtifacts(f"{s3_bucket}/tier3", "widgets", "req-1").completed() == record
