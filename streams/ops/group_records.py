"""What the consumer-group tools return: plain records a command renders as a table or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PartitionLag:
    """One partition a group reads: where it is, where the log ends, who reads it.

    ``log_start`` and ``log_end`` are None where the topic no longer exists (the group still has
    offsets on it): there is nothing left to read, so the lag is 0.
    """

    topic: str
    partition: int
    committed: int | None
    log_start: int | None
    log_end: int | None
    member: str | None = None

    @property
    def lag(self) -> int:
        if self.log_start is None or self.log_end is None:
            return 0
        start = self.committed if self.committed is not None else self.log_start
        return max(0, self.log_end - max(start, self.log_start))


@dataclass
class GroupSummary:
    """A consumer group as ``groups list`` shows it."""

    group: str
    state: str
    members: int
    lag: int
    topics: list[str] = field(default_factory=list)


@dataclass
class GroupDescription:
    """A consumer group in full: state, members, and lag per partition."""

    group: str
    state: str
    members: list[dict[str, Any]]
    partitions: list[PartitionLag]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def active(self) -> bool:
        return bool(self.members) or self.state not in ("EMPTY", "DEAD")

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "lag": self.lag,
            "partitions": [{**asdict(p), "lag": p.lag} for p in self.partitions],
        }


@dataclass(frozen=True)
class OffsetMove:
    """One line of a reset plan."""

    topic: str
    partition: int
    current: int | None
    target: int
    log_start: int
    log_end: int


@dataclass
class ResetPlan:
    """What a reset would do (dry run) or did (executed), and where the old offsets went."""

    group: str
    strategy: str
    moves: list[OffsetMove]
    executed: bool = False
    backup: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "strategy": self.strategy,
            "executed": self.executed,
            "backup": str(self.backup) if self.backup else None,
            "moves": [asdict(m) for m in self.moves],
        }
