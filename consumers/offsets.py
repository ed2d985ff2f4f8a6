"""Which offsets may be committed: only past jobs whose writes are all confirmed.

Jobs of one partition finish out of order (a teacher call takes 0.5 s for one query and 20 s for
the next), but a Kafka offset commit means "everything before this is done". So each partition
keeps the offsets it handed out, in order, and the commit position moves only over the
contiguous prefix of finished ones: if 10, 11 and 13 are done and 12 is not, the commit stops at
12, and a crash redelivers 12 and 13 (13's rewrite is idempotent).

A revoked partition's book is dropped; jobs of it still in flight finish into the dropped book,
which no one reads, so they never move a commit of the partition's next owner.
"""

from __future__ import annotations

from collections import deque

from confluent_kafka import TopicPartition


class PartitionBook:
    """The offsets taken from one partition and which of them are finished."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self._taken: deque[int] = deque()
        self._finished: set[int] = set()
        self._position: int | None = None  # next offset to commit (all before it are done)
        self._committed: int | None = None

    def take(self, offset: int) -> None:
        self._taken.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        while self._taken and self._taken[0] in self._finished:
            done = self._taken.popleft()
            self._finished.discard(done)
            self._position = done + 1

    @property
    def in_flight(self) -> int:
        return len(self._taken)

    def to_commit(self, again: bool = False) -> TopicPartition | None:
        """The position to commit, if it moved since the last call (or at all, with ``again``)."""
        if self._position is None or (self._position == self._committed and not again):
            return None
        self._committed = self._position
        return TopicPartition(self.topic, self.partition, self._position)


class OffsetBooks:
    """The books of every partition assigned to this consumer."""

    def __init__(self) -> None:
        self._books: dict[tuple[str, int], PartitionBook] = {}

    def book(self, topic: str, partition: int) -> PartitionBook:
        key = (topic, partition)
        if key not in self._books:
            self._books[key] = PartitionBook(topic, partition)
        return self._books[key]

    def drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._books.pop((tp.topic, tp.partition), None)

    def to_commit(
        self, partitions: list[TopicPartition] | None = None, again: bool = False
    ) -> list[TopicPartition]:
        """Positions that moved since last committed, of ``partitions`` (or all).

        ``again`` returns every known position, moved or not: the last, synchronous commit of a
        shutdown or revocation repeats any asynchronous commit that may have failed.
        """
        if partitions is None:
            keys = list(self._books)
        else:
            keys = [(p.topic, p.partition) for p in partitions]
        found = (self._books[k].to_commit(again) for k in keys if k in self._books)
        return [tp for tp in found if tp is not None]
