"""Self-healing for a Faust worker: a rebalance when it stalls, a restart in place when that fails.

Written when a restarted worker seemed to freeze after its changelog recovery (tables rebuilt,
then no event read). The cause turned out to be Faust's seek after a rebalance, now fixed in
``faust_patches.perform_seek``; these checks stay as a safety net, each logs why it acted, and
none fires in the test suite now (docs/stream-processing.md, "Restarting in place").
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import NoReturn

import faust
import structlog
from tier3.streams.processors.faust_patches import request_rejoin

log = structlog.get_logger("tier3.faust")


class Watchdog:
    """Watches one worker's progress, checked from its partition timer every two seconds.

    * A ready worker that reads nothing for two checks in a row while its lag is above zero asks
      the group to rebalance; after ``REJOINS_BEFORE_RESTART`` such rebalances without progress
      it restarts in place.
    * A worker not ready (recovering or rebalancing) for ``STUCK_NOT_READY_S`` restarts.
    * A thread of its own restarts the worker when the checks stop coming for
      ``TIMERS_SILENT_S``: seen after a restart's recovery, when the tables were rebuilt and then
      neither the timers nor the stream ran again.
    """

    STUCK_NOT_READY_S = 60.0
    TIMERS_SILENT_S = 60.0
    REJOINS_BEFORE_RESTART = 3

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._last_progress = -1
        self._idle_checks = 0
        self._rejoins = 0
        self._not_ready_since: float | None = None
        self._heartbeat = time.monotonic()
        threading.Thread(target=self._dead_mans_switch, name="tier3-watchdog", daemon=True).start()

    def _dead_mans_switch(self) -> None:
        while True:
            time.sleep(5)
            silent = time.monotonic() - self._heartbeat
            if silent > self.TIMERS_SILENT_S:
                restart_in_place(f"no timer has run for {silent:.0f}s")

    def beat(self) -> None:
        """The partition timer ran: the worker's event loop is alive."""
        self._heartbeat = time.monotonic()

    async def check(self, ready: bool, lag: int, progress: int) -> None:
        """One check: ``progress`` is any count that grows while the worker reads."""
        now = time.monotonic()
        if ready:
            self._not_ready_since = None
        elif self._not_ready_since is None:
            self._not_ready_since = now
        elif now - self._not_ready_since > self.STUCK_NOT_READY_S:
            restart_in_place(f"not ready (recovery or rebalance) for {self.STUCK_NOT_READY_S:.0f}s")
        if not ready or lag == 0 or progress != self._last_progress:
            if progress != self._last_progress:
                self._rejoins = 0
            self._last_progress, self._idle_checks = progress, 0
            return
        self._idle_checks += 1
        if self._idle_checks >= 2:
            if self._rejoins >= self.REJOINS_BEFORE_RESTART:
                restart_in_place(f"idle while lagging ({lag}) after {self._rejoins} rebalances")
            log.warning("stream idle while lagging; asking the group to rebalance", lag=lag)
            self._idle_checks = 0
            self._rejoins += 1
            await request_rejoin(self.app)


def restart_in_place(reason: str) -> NoReturn:
    """Start this worker afresh in the same process (``exec``): same pid, clean Faust state.

    The cure for the stalls above, and for a worker that could not reach the broker while it
    started: what a supervisor would do, without one, and without leaving a child behind when
    the process is killed. Tables recover from their changelogs as after any restart. Repeated
    restarts back off, up to 30 s apart.
    """
    restarts = int(os.environ.get("TIER3_WORKER_RESTARTS", "0"))
    delay = min(30.0, 2.0**restarts)
    log.error("restarting the worker", reason=reason, restarts=restarts, after_s=delay)
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(delay)
    os.environ["TIER3_WORKER_RESTARTS"] = str(restarts + 1)
    os.execv(sys.executable, [sys.executable, *sys.argv])
