"""``tier3 groups``: lag per partition, and resets that are dry by default, refused on an active
group, backed up, and undoable — against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from tier3.streams.kafka.errors import TopicMissing
from tier3.streams.kafka.events import consumer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, create_named_topics, expected_topics
from tier3.streams.local.kafka_broker import LocalBroker
from tier3.streams.ops.consumer_groups import ConsumerGroups, GroupError
from tier3.streams.ops.group_records import PartitionLag

PER_PARTITION = 10


def _fill(
    settings: KafkaSettings,
    topic: str,
    per_partition: int = PER_PARTITION,
    timestamp_ms: int | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    errors = []
    for p in range(settings.partitions):
        for i in range(per_partition):
            producer.produce(
                settings.topic(topic),
                f"v{i}".encode(),
                f"k{p}-{i}".encode(),
                partition=p,
                timestamp=timestamp_ms or 0,
                on_delivery=lambda err, _: err and errors.append(err),
            )
    assert producer.flush(10) == 0
    assert not errors


COMMITTED = {0: 4, 1: 3, 2: 5}  # 12 of the 30 messages read


def _consume_and_commit(settings: KafkaSettings, group: str, topic: str) -> None:
    """Read each partition up to ``COMMITTED`` as a member of ``group``, commit, and leave."""
    c = consumer(settings, group)
    full = settings.topic(topic)
    c.assign([TopicPartition(full, p, 0) for p in COMMITTED])
    remaining = dict(COMMITTED)
    deadline = time.monotonic() + 20
    while any(remaining.values()) and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None or msg.error() or not remaining[msg.partition()]:
            continue
        remaining[msg.partition()] -= 1
    assert not any(remaining.values())
    c.commit(offsets=[TopicPartition(full, p, o) for p, o in COMMITTED.items()], asynchronous=False)
    c.close()


def _committed_total(groups: ConsumerGroups, group: str) -> int:
    return sum(groups.committed(group).values())


@pytest.fixture
def consumed(kafka: KafkaSettings) -> tuple[KafkaSettings, str]:
    """A topic of 3 x 10 messages, and a group that has read and committed 12 of them."""
    _fill(kafka, CAPTURE_JOBS)
    group = f"{kafka.topic_prefix}capture"
    _consume_and_commit(kafka, group, CAPTURE_JOBS)
    return kafka, group


def test_lag_is_log_end_minus_committed_per_partition(consumed: tuple[KafkaSettings, str]) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    d = groups.describe(group)
    assert d.state == "EMPTY" and not d.members
    assert {p.partition for p in d.partitions} == {0, 1, 2}
    for p in d.partitions:
        assert p.log_end == PER_PARTITION
        assert p.lag == PER_PARTITION - p.committed
    assert d.lag == 3 * PER_PARTITION - 12
    listed = {g.group: g for g in groups.list()}
    assert listed[group].lag == d.lag
    assert listed[group].topics == [settings.topic(CAPTURE_JOBS)]


def test_list_shows_only_groups_on_this_prefix(
    consumed: tuple[KafkaSettings, str], broker: LocalBroker
) -> None:
    _, group = consumed
    other = KafkaSettings(
        bootstrap_servers=broker.bootstrap, topic_prefix=f"someone-else-{uuid.uuid4().hex[:8]}."
    )
    with pytest.raises(TopicMissing):  # no topic of that deployment: not "no groups"
        ConsumerGroups(other).list()
    spec = next(s for s in expected_topics(other) if s.name == CAPTURE_JOBS)
    create_named_topics(other, {other.topic(CAPTURE_JOBS): spec})
    assert group not in {g.group for g in ConsumerGroups(other).list()}
    assert group in {g.group for g in ConsumerGroups(other).list(include_all=True)}


def test_listing_every_group_while_a_topic_is_deleted_never_fails(
    consumed: tuple[KafkaSettings, str],
) -> None:
    """Another deployment tearing its topics down while ``groups list --all`` runs: for a moment
    the broker still lists a group's offsets on a topic whose offsets it no longer answers for
    (seen in CI). Every listing must answer; that group is shown with nothing left to read."""
    settings, group = consumed
    full = settings.topic(CAPTURE_JOBS)
    groups = ConsumerGroups(settings)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    deleted = admin.delete_topics([full], operation_timeout=30)[full]
    listings = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = {g.group: g for g in groups.list(include_all=True)}
        listings += 1
        if group not in listed or full not in listed[group].topics:
            break
        if deleted.done():
            assert listed[group].lag in (0, 3 * PER_PARTITION - 12)
    else:
        pytest.fail("the group kept its offsets on the deleted topic for 30 s")
    deleted.result(timeout=10)
    assert listings >= 1
    gone = PartitionLag(full, 0, 4, None, None)
    assert gone.lag == 0  # a partition without a log has nothing left to read


def test_reset_dry_run_changes_nothing(consumed: tuple[KafkaSettings, str]) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    before = groups.committed(group)
    plan = groups.plan_reset(group, to_earliest=True)
    assert not plan.executed
    assert {m.target for m in plan.moves} == {0}
    assert groups.committed(group) == before


def test_reset_execute_backs_up_and_can_be_undone(
    consumed: tuple[KafkaSettings, str], tmp_path: Path
) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    before = groups.committed(group)

    plan = groups.execute(groups.plan_reset(group, to_earliest=True), tmp_path)
    assert plan.executed and plan.backup is not None and plan.backup.exists()
    assert set(groups.committed(group).values()) == {0}
    assert groups.describe(group).lag == 3 * PER_PARTITION
    backup = json.loads(plan.backup.read_text())
    assert {(o["topic"], o["partition"]): o["offset"] for o in backup["offsets"]} == before

    groups.execute(groups.plan_from_file(group, plan.backup), tmp_path)
    assert groups.committed(group) == before


def test_reset_is_refused_while_the_group_has_members(
    consumed: tuple[KafkaSettings, str], tmp_path: Path
) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    before = groups.committed(group)
    member = consumer(settings, group)
    member.subscribe([settings.topic(CAPTURE_JOBS)])
    try:
        deadline = time.monotonic() + 20
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        assert member.assignment()
        with pytest.raises(GroupError, match="active member"):
            groups.execute(groups.plan_reset(group, to_latest=True), tmp_path)
        assert not list(tmp_path.iterdir())  # no backup for a reset that did not happen
    finally:
        member.close()
    assert groups.committed(group) == before


def test_shift_by_is_clamped_to_the_log(consumed: tuple[KafkaSettings, str]) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    before = groups.committed(group)
    plan = groups.plan_reset(group, shift_by=-3)
    for m in plan.moves:
        assert m.target == max(0, before[(m.topic, m.partition)] - 3)
    plan = groups.plan_reset(group, shift_by=1000)
    assert {m.target for m in plan.moves} == {PER_PARTITION}


def test_reset_to_datetime_finds_the_first_offset_at_or_after(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    # The broker refuses timestamps over an hour ahead, and retention removes old ones.
    new = int(time.time() * 1000) - 60_000
    old = new - 3_600_000
    _fill(kafka, CAPTURE_JOBS, per_partition=4, timestamp_ms=old)
    _fill(kafka, CAPTURE_JOBS, per_partition=3, timestamp_ms=new)
    group = f"{kafka.topic_prefix}by-time"
    groups = ConsumerGroups(kafka)
    between = datetime.fromtimestamp((old + new) / 2000, UTC)
    plan = groups.plan_reset(group, topics=[CAPTURE_JOBS], to_datetime=between)
    assert {m.target for m in plan.moves} == {4}
    groups.execute(plan, tmp_path)
    assert groups.describe(group).lag == 3 * 3
    after_all = datetime.fromtimestamp(new / 1000 + 1, UTC)
    plan = groups.plan_reset(group, topics=[CAPTURE_JOBS], to_datetime=after_all)
    assert {m.target for m in plan.moves} == {7}


def _tier3(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    env |= {
        "TIER3_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": settings.topic_prefix,
        "TIER3_LOG_JSON": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "tier3"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_reset_is_dry_by_default_then_executes_and_undoes(
    consumed: tuple[KafkaSettings, str], tmp_path: Path
) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    before = groups.committed(group)

    dry = _tier3(settings, "groups", "reset", group, "--to-earliest", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["executed"] is False
    assert groups.committed(group) == before

    done = _tier3(
        settings,
        "groups",
        "reset",
        group,
        "--to-earliest",
        "--execute",
        "--backup-dir",
        str(tmp_path),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    backup = json.loads(done.stdout)["backup"]
    assert set(groups.committed(group).values()) == {0}

    lag = _tier3(settings, "groups", "lag", group, "--json")
    assert lag.returncode == 0, lag.stderr
    assert json.loads(lag.stdout)["lag"] == 3 * PER_PARTITION

    undo = _tier3(
        settings,
        "groups",
        "reset",
        group,
        "--from-file",
        backup,
        "--execute",
        "--backup-dir",
        str(tmp_path),
    )
    assert undo.returncode == 0, undo.stderr
    assert groups.committed(group) == before


def test_cli_refuses_a_missing_strategy(consumed: tuple[KafkaSettings, str]) -> None:
    settings, group = consumed
    result = _tier3(settings, "groups", "reset", group)
    assert result.returncode == 2  # bad usage
    assert "choose exactly one" in result.stderr


def test_describe_unknown_group_has_no_partitions(kafka: KafkaSettings) -> None:
    d = ConsumerGroups(kafka).describe(f"nobody-{uuid.uuid4().hex}")
    assert d.partitions == [] and not d.active


def test_committed_offsets_match_the_consumer_view(consumed: tuple[KafkaSettings, str]) -> None:
    settings, group = consumed
    c = consumer(settings, group)
    try:
        tps = [TopicPartition(settings.topic(CAPTURE_JOBS), p) for p in range(3)]
        from_consumer = {
            (tp.topic, tp.partition): tp.offset
            for tp in c.committed(tps, timeout=10)
            if tp.offset >= 0
        }
    finally:
        c.close()
    assert ConsumerGroups(settings).committed(group) == from_consumer


def test_delete_is_refused_while_active_and_undoable_when_done(
    consumed: tuple[KafkaSettings, str], tmp_path: Path
) -> None:
    settings, group = consumed
    groups = ConsumerGroups(settings)
    before = groups.committed(group)
    member = consumer(settings, group)
    member.subscribe([settings.topic(CAPTURE_JOBS)])
    try:
        deadline = time.monotonic() + 20
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        with pytest.raises(GroupError, match="active member"):
            groups.delete(group, tmp_path)
    finally:
        member.close()
    assert groups.committed(group) == before

    dry = _tier3(settings, "groups", "delete", group)
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert group in {g.group for g in groups.list()}

    backup = groups.delete(group, tmp_path)
    assert groups.committed(group) == {}
    assert group not in {g.group for g in groups.list()}
    groups.execute(groups.plan_from_file(group, backup), tmp_path)
    assert groups.committed(group) == before


def test_cli_reset_by_duration(consumed: tuple[KafkaSettings, str]) -> None:
    settings, group = consumed
    day = _tier3(settings, "groups", "reset", group, "--by-duration", "1d", "--json")
    assert day.returncode == 0, day.stderr
    assert {m["target"] for m in json.loads(day.stdout)["moves"]} == {0}  # all written since
    iso = _tier3(settings, "groups", "reset", group, "--by-duration", "PT1H", "--json")
    assert json.loads(iso.stdout)["moves"] == json.loads(day.stdout)["moves"]
    bad = _tier3(settings, "groups", "reset", group, "--by-duration", "yesterday")
    assert bad.returncode == 2 and "duration" in bad.stderr
