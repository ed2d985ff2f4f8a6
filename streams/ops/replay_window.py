"""What a replay covers and what it reports: the window, its offset ranges, the report.

A window is a time range (``since`` <= timestamp < ``until``, found with the broker's
offsets-for-times index), an offset range (``from_offset`` <= offset < ``to_offset``), or both,
on every partition or only the ones named. ``resolve`` turns it into one offset range per
partition as the broker has them now, so the window's end is fixed when the replay starts.

Points in time and durations as operators write them (``--since``/``--until`` here,
``groups reset --to-datetime``/``--by-duration`` for a group's offsets) are read here too
(``parse_time``, ``parse_duration``): a wrong one is a ``UsageError`` naming its flag, one line
and exit code 2 like every other bad window, not a usage box.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka.admin import AdminClient
from tier3.streams.kafka import offsets
from tier3.streams.kafka.errors import OperatorError, UsageError
from tier3.streams.kafka.offsets import Range


class ReplayError(OperatorError, RuntimeError):
    """A replay that cannot run as asked; the message says why."""


class WindowError(UsageError, ReplayError):
    """A window that cannot be right (reversed, negative, unknown partitions); exit code 2."""


def parse_time(text: str, flag: str) -> datetime:
    """ISO 8601 (``2026-01-01T12:00``, ``...Z``, with an offset) or milliseconds since the epoch;
    a naive time means UTC."""
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is neither an ISO 8601 datetime nor milliseconds since the epoch"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_duration(text: str, flag: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, or an ISO 8601 duration such as ``PT1H30M`` / ``P1D``."""
    simple = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if simple:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[simple.group(2)]
        return timedelta(**{unit: int(simple.group(1))})
    iso = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text.strip())
    if iso and any(iso.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise UsageError(f"{flag} {text!r} is not a duration such as 15m, 2h, 1d or PT1H30M")


@dataclass(frozen=True)
class Window:
    """Which part of a topic's history to replay. Every bound is optional."""

    since: datetime | None = None
    until: datetime | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    partitions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise WindowError(
                f"--since {self.since.isoformat()} is not before --until {self.until.isoformat()}"
            )
        for name, value in (("--from-offset", self.from_offset), ("--to-offset", self.to_offset)):
            if value is not None and value < 0:
                raise WindowError(f"{name} {value} is negative")
        if (
            self.from_offset is not None
            and self.to_offset is not None
            and self.from_offset > self.to_offset
        ):
            raise WindowError(
                f"--from-offset {self.from_offset} is after --to-offset {self.to_offset}"
            )


@dataclass
class ReplayReport:
    """What a replay read, chose and sent (nothing sent in a dry run)."""

    mode: str
    replay_id: str
    source: str
    target: str
    ranges: list[Range]
    executed: bool = False
    read: int = 0
    undecodable: int = 0
    duplicates: int = 0
    skipped_deleted: int = 0
    skipped_traced: int = 0
    chosen: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    failed: int = 0

    @property
    def window_size(self) -> int:
        return sum(r.size for r in self.ranges)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "replay_id": self.replay_id,
            "executed": self.executed,
            "source": self.source,
            "target": self.target,
            "window": [r.__dict__ for r in self.ranges],
            "window_size": self.window_size,
            "read": self.read,
            "undecodable": self.undecodable,
            "duplicates": self.duplicates,
            "skipped_deleted": self.skipped_deleted,
            "skipped_traced": self.skipped_traced,
            "chosen": dict(self.chosen),
            "jobs": sum(self.chosen.values()),
            "sent": self.sent,
            "failed": self.failed,
        }


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def resolve(admin: AdminClient, topic: str, window: Window) -> list[Range]:
    """The offset ranges of ``topic`` that ``window`` covers, as the broker has them now."""
    parts = offsets.partitions_of(admin, topic)
    if window.partitions is not None:
        unknown = set(window.partitions) - {p for _, p in parts}
        if unknown:
            raise WindowError(
                f"{topic} has no partition {', '.join(map(str, sorted(unknown)))} "
                f"(it has {len(parts)}: 0 to {len(parts) - 1})"
            )
        parts = [tp for tp in parts if tp[1] in window.partitions]
    marks = offsets.watermarks(admin, parts)
    since = offsets.offsets_for_time(admin, parts, _ms(window.since)) if window.since else {}
    until = offsets.offsets_for_time(admin, parts, _ms(window.until)) if window.until else {}
    ranges = []
    for tp in parts:
        low, high = marks[tp]
        start, end = low, high
        if tp in since:
            start = max(start, since[tp] if since[tp] >= 0 else high)  # -1: nothing that late
        if tp in until:
            end = min(end, until[tp] if until[tp] >= 0 else high)
        if window.from_offset is not None:
            start = max(start, window.from_offset)
        if window.to_offset is not None:
            end = min(end, window.to_offset)
        ranges.append(Range(tp[0], tp[1], start, max(start, end)))
    return ranges
