"""Failure injection for the fake provider servers: a plan of faults, each matched and counted.

A ``Fault`` says what to do instead of a normal answer (an HTTP error status, optionally with
``retry-after``; or a 200 whose answer is malformed), to which requests (those whose prompt
contains ``match``, or all), and how many times (``times``; ``None`` is forever). The plan tries
faults in order and applies the first one that matches and is not used up, so
``[Fault(429, retry_after=1), Fault(500)]`` answers the first request with a 429, the second with
a 500, and everything after normally.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Fault:
    """One injected failure."""

    status: int = 500
    retry_after: float | None = None
    malformed: bool = False  # a 200 whose answer is not the task's JSON
    match: str | None = None  # only requests whose prompt contains this text
    times: int | None = 1  # how many requests it hits; None = every matching request
    hits: int = field(default=0, init=False)

    def applies_to(self, prompt: str) -> bool:
        used_up = self.times is not None and self.hits >= self.times
        return not used_up and (self.match is None or self.match in prompt)


class FaultPlan:
    """The ordered faults of one server; thread-safe, since tests add faults while it serves."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._faults = list(faults)
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, prompt: str) -> Fault | None:
        """The fault to apply to a request with this prompt, counted as used; or None."""
        with self._lock:
            for fault in self._faults:
                if fault.applies_to(prompt):
                    fault.hits += 1
                    return fault
        return None
