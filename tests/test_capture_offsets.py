"""Offset books: commits move only over a contiguous run of finished jobs."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from tier3.consumers.offsets import OffsetBooks, PartitionBook


def test_commit_stops_at_the_first_unfinished_job():
    book = PartitionBook("jobs", 0)
    for offset in (10, 11, 12, 13):
        book.take(offset)
    book.finish(11)
    assert book.to_commit() is None  # 10 is not done
    book.finish(10)
    book.finish(13)
    assert book.to_commit() == TopicPartition("jobs", 0, 12)
    assert book.to_commit() is None  # nothing moved since
    assert book.to_commit(again=True) == TopicPartition("jobs", 0, 12)
    book.finish(12)
    assert book.to_commit() == TopicPartition("jobs", 0, 14)
    assert book.in_flight == 0


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_any_finishing_order_commits_exactly_the_done_prefix(order: list[int], finished: int):
    book = PartitionBook("jobs", 0)
    for offset in range(30):
        book.take(offset)
    done = set(order[:finished])
    for offset in order[:finished]:
        book.finish(offset)
    prefix = next((o for o in range(30) if o not in done), 30)
    position = book.to_commit()
    assert (position.offset if position else 0) == prefix


def test_a_dropped_partition_never_commits_for_its_next_owner():
    books = OffsetBooks()
    old = books.book("jobs", 1)
    old.take(5)
    books.drop([TopicPartition("jobs", 1)])
    old.finish(5)  # a job that was in flight when the partition was revoked
    assert books.to_commit() == []
    fresh = books.book("jobs", 1)
    fresh.take(5)
    assert books.to_commit() == []
