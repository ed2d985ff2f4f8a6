"""Every place tier3 changes or reaches inside faust-streaming, mode-streaming and aiokafka.

Checked against faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0 (``CHECKED``).
Each patch says which upstream behaviour it works around and which upstream code it depends on;
``tests/test_faust_patches.py`` runs that upstream code unpatched and fails the day its
behaviour changes, which is the day to check whether the patch can go.

Two patches change Faust's classes, and ``apply()`` installs them (``faust_app.make_app`` calls
it; it is idempotent): the producer buffer's limit and the consumer's seek after a rebalance.
One wraps a method of one app's producer: its flush also waits for tier3's own writer. Three
helpers reach into private attributes because no public API does the job: asking the group to
rebalance, keeping the start-up spinner off, and telling a stop by signal from a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.consumer import ensure_TP
from faust.transport.producer import ProducerBuffer

CHECKED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}

# --- 1. The producer buffer's limit ------------------------------------------------------------
#
# Behaviour: before each event, Faust's conductor awaits ``ProducerBuffer.wait_until_ebb()``
# (faust/transport/producer.py, called from faust/transport/conductor.py). When the buffer holds
# more than ``max_messages`` records (100) it calls ``flush_atmost``, which waits up to 0.1 s per
# record for a ``message_sent`` event that is easily missed. Measured here, that capped a worker
# near 1,000 events/s (bench/RESULTS.md). Depends on: the class attribute ``max_messages`` being
# the only limit ``wait_until_ebb`` reads. A larger buffer lets records flow to aiokafka's own
# batching; Faust still flushes all of them before it commits an offset, so at-least-once holds.

UPSTREAM_BUFFER_MAX_MESSAGES: int = ProducerBuffer.__dict__["max_messages"]
BUFFER_MAX_MESSAGES = 20_000

# --- 2. The seek after a rebalance -------------------------------------------------------------
#
# Behaviour: while a worker recovers its tables, Faust fetches records of its (paused) source
# partitions and drops them, then seeks each partition back to its committed offset with
# ``Consumer.perform_seek`` (faust/transport/consumer.py), which calls aiokafka's
# ``AIOKafkaConsumer.seek_to_committed`` (aiokafka/consumer/consumer.py). That one seeks only
# ``if offset and offset > 0``: a partition whose group has no committed offset, or offset 0,
# stays where the dropped fetches left it. Depends on: Faust's ``seek_to_committed`` returning
# {partition: committed offset or None}, ``seek_wait``, the consumer's private ``_read_offset``
# and ``_committed_offset`` dicts (which upstream ``perform_seek`` fills the same way), and
# ``app.tables.changelog_topics``.

UPSTREAM_PERFORM_SEEK = FaustConsumer.perform_seek


async def perform_seek(self: FaustConsumer) -> None:
    """Seek every assigned partition to its committed offset, or to its beginning if none.

    Without this a worker taking over from one killed before its first commit started past
    records nobody had processed. Measured here: 4 restarts in 8 lost every event published
    after the kill. Starting such partitions at the beginning is what
    ``auto_offset_reset='earliest'`` means; offset 0, where retention removed it, resets to the
    earliest offset still kept. Changelog partitions are left alone: recovery seeks those itself.
    """
    committed = await self.seek_to_committed()
    changelogs = self.app.tables.changelog_topics
    fresh = {tp: 0 for tp, offset in committed.items() if not offset and tp.topic not in changelogs}
    if fresh:
        await self.seek_wait(fresh)
    # What upstream perform_seek records, unchanged.
    self._read_offset.update(
        {tp: offset if offset is not None and offset >= 0 else None
         for tp, offset in committed.items()}
    )
    self._committed_offset.update(
        {ensure_TP(tp): offset or None for tp, offset in committed.items() if offset is not None}
    )


def apply() -> None:
    """Install the two class patches (idempotent)."""
    ProducerBuffer.max_messages = BUFFER_MAX_MESSAGES
    FaustConsumer.perform_seek = perform_seek  # type: ignore[method-assign]


# --- 3. Asking the group to rebalance ----------------------------------------------------------


async def request_rejoin(app: faust.App) -> None:
    """Make this worker rejoin its consumer group, so that the group rebalances.

    The watchdog's cure for a worker that reads nothing while it lags. Neither Faust nor
    aiokafka has a public call for it. Depends on: Faust's ``Consumer._thread`` (the
    ``AIOKafkaConsumerThread`` that owns the aiokafka consumer, faust/transport/drivers/
    aiokafka.py), its ``_ensure_consumer()`` and ``call_thread``, and aiokafka's
    ``AIOKafkaConsumer._coordinator.request_rejoin()`` (aiokafka/consumer/group_coordinator.py).
    The aiokafka consumer lives on Faust's consumer thread, so the call is made there.
    """
    thread = app.consumer._thread

    async def rejoin() -> None:
        thread._ensure_consumer()._coordinator.request_rejoin()

    await thread.call_thread(rejoin)


# --- 4. The start-up spinner -------------------------------------------------------------------


def without_spinner(worker: faust.Worker) -> faust.Worker:
    """Turn off the worker's start-up spinner.

    Behaviour: at a log level of WARN or above, ``faust.Worker.on_setup_root_logger`` keeps its
    terminal spinner and ``_setup_spinner_handler`` sets the root logger to DEBUG, so that every
    record turns the spinner (faust/worker.py). Measured here, building aiokafka's and Faust's
    debug records that nobody reads took ~7% of a busy sampler's time, and the spinner wrote
    terminal escapes into the logs. Depends on: ``Worker.spinner`` being what both consult.
    """
    worker.spinner = None
    return worker


# --- 5. A stop by signal ----------------------------------------------------------------------


def stopped_by_signal(worker: Any) -> bool:
    """True when SIGINT or SIGTERM stopped the worker (a stop asked for, not a failure).

    ``execute_from_commandline`` ends in ``SystemExit`` either way. Depends on mode's private
    ``Worker._signal_stop_time``, which ``Worker._schedule_shutdown`` sets on the first signal
    (mode/worker.py).
    """
    return worker._signal_stop_time is not None


# --- 6. Commits wait for tier3's writer ------------------------------------------------------


def flush_also(app: faust.App, drain: Callable[[], Awaitable[None]]) -> None:
    """Make every flush of ``app``'s producer also await ``drain()``, after Faust's own.

    Behaviour: with ``processing_guarantee='at_least_once'``, Faust awaits
    ``app.producer.flush()`` right before it commits input offsets
    (``Consumer._commit_offsets``, faust/transport/consumer.py), before it gives partitions
    away (``App._on_partitions_revoked``) and as it stops (``App._producer_flush``,
    faust/app/base.py). The processors write through their own librdkafka producer
    (``writer``), so that flush must wait for it too, or an offset could be committed before
    the records its events caused are on the broker. An exception from ``drain`` fails the
    commit, and Faust crashes the worker. Depends on: those three callers going through
    ``app.producer.flush`` (the ``App.producer`` property, which makes the producer on first
    use) and on it being looked up on the instance.
    """
    producer = app.producer
    upstream = producer.flush

    async def flush() -> None:
        await upstream()
        await drain()

    producer.flush = flush  # type: ignore[method-assign]
