"""The fault suite's object-store scenarios against a real S3 server (SeaweedFS) through s3fs.

The pipeline is the fault suite's own (``tests/test_faults.py``: sampler, counter and capture
as processes on the real broker), with its traces going to ``s3://`` on a server this test may
stop. Two faults:

* the object store failing for a while: the server is down when the jobs arrive and comes
  back 10 s later;
* the S3 server stopped mid-capture, with jobs in flight: while it is down, no offset is
  committed past a job whose trace is not written; after it returns no trace is lost or doubled.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tier3.consumers.object_store import TraceStore
from tier3.streams.backend.publisher import Publisher
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS
from tier3.streams.local.kafka_broker import LocalBroker
from tier3.streams.local.s3_server import LocalS3Server

from tests.support.broker import fresh_settings
from tests.support.capture_harness import committed, latest_traces
from tests.support.kafka_reading import read_all
from tests.support.s3 import make_bucket, point_at, weed_binary
from tests.test_faults import Capture, Pipeline

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.s3]

GROUP = "tier3-capture"  # the capture processes' default group


class S3Pipeline(Pipeline):
    """The fault pipeline with its object store on S3."""

    def __init__(self, settings: KafkaSettings, folder: Path, root: str, **env: str) -> None:
        self.root = root
        super().__init__(settings, folder, **env)

    def start_capture(self) -> Capture:
        return Capture(self.settings, self.folder, self.root, **self.capture_env)

    def objects(self) -> Counter[str]:
        try:
            return Counter(TraceStore(self.root, skip_instance_cache=True).query_ids())
        except OSError:
            return Counter()  # the server is down: nothing can be seen


@pytest.fixture
def own_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalS3Server]:
    """An S3 server this test may stop and start; the AWS variables point at it."""
    pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
    server = LocalS3Server(home=tmp_path / "s3home", binary=weed_binary()).start()
    point_at(server, monkeypatch)
    yield server
    server.stop()


def _committed_past_unwritten(settings: KafkaSettings) -> list[str]:
    """Jobs below the group's committed offset whose trace is not confirmed on the topic."""
    done = committed(settings, GROUP)
    traced = set(latest_traces(settings))
    return [
        f"{job.partition}@{job.offset}:{job.key}"
        for job in read_all(settings, CAPTURE_JOBS, timeout=30)
        if job.offset < done.get(job.partition, -1) and job.key not in traced
    ]


def test_s3_store_failing_for_a_while(
    broker: LocalBroker, own_s3: LocalS3Server, tmp_path: Path
) -> None:
    settings = fresh_settings(broker)
    root = f"{make_bucket(own_s3)}/tier3"
    own_s3.stop()
    pipeline = S3Pipeline(
        settings, tmp_path, root, TIER3_ATTEMPTS="40", TIER3_ATTEMPT_BACKOFF_S="1"
    )
    pipeline.faults.append("S3 server down for 10 s while the jobs arrive")
    publisher = Publisher(settings, enabled=True)
    try:
        pipeline.publish(150, seed=71, publisher=publisher)
        assert publisher.close(60) == 0
        time.sleep(10)
        assert not latest_traces(settings)  # nothing was confirmed while the store was down
        assert not _committed_past_unwritten(settings)
        own_s3.start()
        pipeline.settle()
    finally:
        pipeline.stop()
    pipeline.check_end_state("S3 store failing")


def test_s3_server_stopped_mid_capture(
    broker: LocalBroker, own_s3: LocalS3Server, tmp_path: Path
) -> None:
    settings = fresh_settings(broker)
    root = f"{make_bucket(own_s3)}/tier3"
    pipeline = S3Pipeline(
        settings, tmp_path, root, TIER3_ATTEMPTS="40", TIER3_ATTEMPT_BACKOFF_S="1"
    )
    publisher = Publisher(settings, enabled=True)
    try:
        pipeline.wait_until_working(publisher)
        pipeline.publish(150, seed=81, publisher=publisher)
        publisher.flush(30)
        own_s3.stop()  # mid-capture: jobs of this batch are in flight or still to come
        pipeline.faults.append("S3 server stopped (SIGTERM) mid-capture for 10 s")
        pipeline.publish(100, seed=82, publisher=publisher)
        assert publisher.flush(60) == 0
        time.sleep(10)
        unwritten = pipeline.expected - set(latest_traces(settings))
        assert unwritten, "the outage hit no job: the test proves nothing"
        assert not _committed_past_unwritten(settings)
        own_s3.start()
        assert publisher.close(60) == 0
        pipeline.settle()
    finally:
        pipeline.stop()
    figures = pipeline.check_end_state("S3 server stopped mid-capture")
    assert figures["traces_missing"] == 0 and figures["traces_doubled"] == 0
