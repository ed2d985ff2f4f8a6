"""Each of streams/processors/faust_patches.py's patches: the upstream behaviour it works around is
still there, and the patch is in place.

A test here that fails after an upgrade of faust-streaming, mode-streaming or aiokafka means that
upstream changed what the patch depends on: read the patch's comment, check whether the bug is
fixed upstream (then the patch goes) or the internals moved (then the patch follows them), and
update ``faust_patches.CHECKED``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES
from tier3.streams.processors import faust_patches
from tier3.streams.processors.faust_app import make_app


def _app(tmp_path: Path, role: str = "patches") -> faust.App:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix=f"p{uuid.uuid4().hex}.")
    return make_app(settings, role, tmp_path / role)


def test_make_app_installs_the_class_patches(tmp_path: Path) -> None:
    _app(tmp_path)
    assert ProducerBuffer.max_messages == faust_patches.BUFFER_MAX_MESSAGES
    assert FaustConsumer.perform_seek is faust_patches.perform_seek


# --- 1. The producer buffer's limit ---------------------------------------------------------


def test_faust_still_flushes_its_producer_buffer_past_100_records() -> None:
    assert faust_patches.UPSTREAM_BUFFER_MAX_MESSAGES == 100, (
        "Faust's producer buffer has a new default limit: is the 20,000 still needed?"
    )

    async def ebb(max_messages: int) -> int:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        buffer.max_messages = max_messages
        for _ in range(101):
            buffer.pending.put_nowait(object())
        # Not started: a flush attempt says so, which is how we see that one was made.
        await buffer.wait_until_ebb()
        return buffer.size

    with pytest.raises(RuntimeError, match="Cannot flush"):
        asyncio.run(ebb(faust_patches.UPSTREAM_BUFFER_MAX_MESSAGES))
    # With the patch's limit the conductor goes on without flushing.
    assert asyncio.run(ebb(faust_patches.BUFFER_MAX_MESSAGES)) == 101


# --- 2. The seek after a rebalance ----------------------------------------------------------


def test_aiokafka_still_skips_the_seek_where_nothing_or_0_is_committed(
    kafka: KafkaSettings,
) -> None:
    topic = kafka.topic(EXPERIENCES)
    producer = Producer(kafka.client_config())
    for i in range(5):
        producer.produce(topic, f"v{i}".encode(), f"k{i}".encode(), partition=0)
    assert producer.flush(10) == 0

    async def positions_after_seek_to_committed() -> list[tuple[int | None, int]]:
        tp = TopicPartition(topic, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"{kafka.topic_prefix}seek",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        consumer.assign([tp])
        await consumer.start()
        try:
            seen: list[tuple[int | None, int]] = []
            for commit in (None, 0):
                if commit is not None:
                    await consumer.commit({tp: commit})
                await consumer.seek_to_beginning(tp)
                read, deadline = 0, time.monotonic() + 30
                while read < 5 and time.monotonic() < deadline:
                    read += len((await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
                assert read == 5
                committed = await consumer.seek_to_committed()
                seen.append((committed[tp], await consumer.position(tp)))
            return seen
        finally:
            await consumer.stop()

    # Where reading stopped, not the committed offset or the beginning: the position a Faust
    # worker is left at after recovery's dropped fetches, which faust_patches.perform_seek fixes.
    assert asyncio.run(positions_after_seek_to_committed()) == [(None, 5), (0, 5)], (
        "aiokafka's seek_to_committed now seeks partitions without a committed offset: "
        "faust_patches.perform_seek may no longer be needed"
    )


class _StandInConsumer:
    """What Faust's ``perform_seek`` uses of its consumer, with committed offsets given."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={"changelog"}))
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {}
        self._committed = committed
        self.sought: dict[TP, int] = {}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return self._committed

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.sought.update(partitions)


def test_faust_perform_seek_relies_on_seek_to_committed_alone_and_the_patch_adds_the_rest() -> None:
    committed = {
        TP("source", 0): None,  # nothing committed yet
        TP("source", 1): 0,  # committed at the beginning
        TP("source", 2): 7,
        TP("changelog", 0): None,  # recovery seeks changelogs itself
    }
    upstream, patched = _StandInConsumer(committed), _StandInConsumer(committed)
    asyncio.run(faust_patches.UPSTREAM_PERFORM_SEEK(upstream))
    asyncio.run(faust_patches.perform_seek(patched))

    assert upstream.sought == {}, (
        "Faust's perform_seek now seeks partitions itself: faust_patches.perform_seek may go"
    )
    assert patched.sought == {TP("source", 0): 0, TP("source", 1): 0}
    # The patch keeps upstream's bookkeeping exactly.
    assert patched._read_offset == upstream._read_offset
    assert patched._committed_offset == upstream._committed_offset


# --- 3. Asking the group to rebalance -------------------------------------------------------


def test_a_rejoin_is_still_asked_for_through_faust_and_aiokafka_internals(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    thread = _app(tmp_path).consumer._thread
    assert isinstance(thread, AIOKafkaConsumerThread)
    assert callable(thread._ensure_consumer) and callable(thread.call_thread)
    assert not hasattr(AIOKafkaConsumer, "request_rejoin"), (
        "aiokafka has a public request_rejoin now: use it in faust_patches.request_rejoin"
    )

    async def generations() -> tuple[int, int]:
        consumer = AIOKafkaConsumer(
            kafka.topic(EXPERIENCES),
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"{kafka.topic_prefix}rejoin",
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + 60
            while not consumer.assignment() and time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=500)
            before = consumer._coordinator.generation
            consumer._coordinator.request_rejoin()
            while consumer._coordinator.generation == before and time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=500)
            return before, consumer._coordinator.generation
        finally:
            await consumer.stop()

    before, after = asyncio.run(generations())
    assert after > before  # the group rebalanced


# --- 4. The start-up spinner ----------------------------------------------------------------


def _root_logger_level_after_setup(worker: faust.Worker) -> int:
    logger = logging.getLogger(f"tier3.test.spinner.{uuid.uuid4().hex}")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.WARNING)
    worker.on_setup_root_logger(logger, logging.WARNING)
    return logger.level


def test_faust_still_turns_the_root_logger_to_debug_for_its_spinner(tmp_path: Path) -> None:
    def worker(role: str) -> faust.Worker:
        app = _app(tmp_path, role)
        return faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)

    assert _root_logger_level_after_setup(worker("spinning")) == logging.DEBUG, (
        "Faust's worker no longer sets the root logger to DEBUG: without_spinner may go"
    )
    quiet = faust_patches.without_spinner(worker("quiet"))
    assert _root_logger_level_after_setup(quiet) == logging.WARNING


# --- 5. A stop by signal --------------------------------------------------------------------


def test_mode_still_records_a_stop_by_signal(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool]:
        app = _app(tmp_path)
        worker = faust.Worker(
            app, loglevel="warning", quiet=True, redirect_stdouts=False,
            loop=asyncio.get_running_loop(),
        )
        before = faust_patches.stopped_by_signal(worker)
        worker._schedule_shutdown(signal.SIGTERM)
        worker._signal_stop_future.cancel()  # the stop itself is not what is tested
        await asyncio.sleep(0)
        return before, faust_patches.stopped_by_signal(worker)

    assert asyncio.run(scenario()) == (False, True)


# --- 6. Commits wait for tier3's writer -----------------------------------------------------


class _StandInCommitter:
    """What Faust's ``Consumer._commit_offsets`` uses of its consumer and app, recording order."""

    def __init__(self, assigned: set[TP], calls: list[str]) -> None:
        async def flush() -> None:
            calls.append("flush")

        def on_commit(offsets: object) -> None:
            calls.append("tables.on_commit")

        self.log = SimpleNamespace(dev=lambda *a, **k: None, info=lambda *a, **k: None)
        self.in_transaction = False
        self.app = SimpleNamespace(
            producer=SimpleNamespace(flush=flush),
            tables=SimpleNamespace(on_commit=on_commit),
            monitor=SimpleNamespace(on_tp_commit=lambda offsets: None),
        )
        self._committed_offset: dict[TP, int] = {}
        self._assigned = assigned
        self._calls = calls

    def assignment(self) -> set[TP]:
        return self._assigned

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self._calls.append("commit")
        return True


def test_faust_still_flushes_app_producer_right_before_it_commits_offsets() -> None:
    calls: list[str] = []
    tp = TP("source", 0)
    committer = _StandInCommitter({tp}, calls)
    asyncio.run(FaustConsumer._commit_offsets(committer, {tp: 5}))
    assert calls == ["flush", "commit", "tables.on_commit"], (
        "Faust's commit no longer goes through app.producer.flush() first: the writer's records "
        "could be committed past before they are on the broker (faust_patches.flush_also)"
    )


def test_flush_also_makes_the_app_producers_flush_wait_for_the_drain(tmp_path: Path) -> None:
    app = _app(tmp_path)
    calls: list[str] = []

    async def upstream() -> None:
        calls.append("faust")

    async def drain() -> None:
        await asyncio.sleep(0.05)  # a drain that takes a while: the flush must wait for it
        calls.append("writer")

    app.producer.flush = upstream
    faust_patches.flush_also(app, drain)
    asyncio.run(app.producer.flush())
    assert calls == ["faust", "writer"]
