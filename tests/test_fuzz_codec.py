"""Fuzzing the decode paths: whatever bytes arrive, the codec answers with a ``DecodeError`` (or,
for bytes that happen to be a valid event, the event) — never another exception, never a hang —
and a consumer sends what does not decode to its dead-letter topic and goes on.

Hypothesis deadlines turn a hang or a pathological slowdown into a failure.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tier3.consumers.settings import CaptureSettings
from tier3.schemas import Decoded, DecodeError, SingleObjectCodec
from tier3.schemas.codec import SINGLE_OBJECT_MAGIC
from tier3.schemas.registry import EVENT_NAMES, current
from tier3.streams.kafka.dead_letters import HEADER_REASON, HEADER_STAGE, DeadLetter
from tier3.streams.kafka.topics import CAPTURE_JOBS, DLQ_SUFFIX

from tests.support.broker import disposable_settings
from tests.support.capture_harness import build_worker, make_job, publish_jobs, run_until
from tests.support.kafka_reading import read_all
from tests.support.samples import SAMPLES

CODEC = SingleObjectCodec()
FAST = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
names = st.sampled_from(EVENT_NAMES)


def decode_or_error(data: bytes | None, expect: str | None = None) -> Decoded | DecodeError:
    """Decode; a ``DecodeError`` is an answer, any other exception fails the test."""
    try:
        return CODEC.decode(data, expect=expect)
    except DecodeError as exc:
        assert str(exc)  # the error says why
        return exc


def frame(name: str) -> bytes:
    return CODEC.encode(name, SAMPLES[name])


def zigzag_varint(n: int) -> bytes:
    """Avro's long encoding, for crafting length prefixes."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


@FAST
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    # Random bytes are never a magic, a known 64-bit fingerprint and a record all at once.
    assert isinstance(decode_or_error(data), DecodeError)


@FAST
@given(names, st.binary(max_size=2048))
def test_a_valid_header_before_random_bytes(name: str, body: bytes) -> None:
    data = SINGLE_OBJECT_MAGIC + current(name).fingerprint + body
    result = decode_or_error(data)
    if isinstance(result, Decoded):  # random bytes that happen to be a valid record
        assert result.name == name
        assert CODEC.encode(name, result.record) == data  # Avro binary is canonical


@FAST
@given(names, st.data())
def test_truncated_frames(name: str, data: st.DataObject) -> None:
    whole = frame(name)
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert isinstance(decode_or_error(whole[:cut]), DecodeError)


@FAST
@given(names, st.integers(2, 9), st.integers(0, 7))
def test_flipped_fingerprint_bits(name: str, byte: int, bit: int) -> None:
    data = bytearray(frame(name))
    data[byte] ^= 1 << bit
    result = decode_or_error(bytes(data))
    assert isinstance(result, DecodeError) and "fingerprint" in str(result)


@FAST
@given(names, st.data())
def test_mutated_frames(name: str, data: st.DataObject) -> None:
    whole = bytearray(frame(name))
    for _ in range(data.draw(st.integers(1, 8))):
        whole[data.draw(st.integers(0, len(whole) - 1))] = data.draw(st.integers(0, 255))
    decode_or_error(bytes(whole))


@FAST
@given(
    st.sampled_from(["Experience", "Trace", "CaptureJob"]),
    st.integers(2**16, 2**62),
    st.binary(max_size=64),
)
def test_oversized_string_lengths(name: str, length: int, tail: bytes) -> None:
    # Every one of these records starts with the string query_id: claim a huge one.
    data = SINGLE_OBJECT_MAGIC + current(name).fingerprint + zigzag_varint(length) + tail
    assert isinstance(decode_or_error(data), DecodeError)


@FAST
@given(st.integers(2**16, 2**62))
def test_oversized_array_block_counts(count: int) -> None:
    # TrainingRequested ends with the query_ids array: claim a huge block of items.
    head = CODEC.encode("TrainingRequested", {**SAMPLES["TrainingRequested"], "query_ids": []})
    data = head[:-1] + zigzag_varint(count) + b"\x02a"
    assert isinstance(decode_or_error(data), DecodeError)


@settings(max_examples=10, deadline=2000)
@given(st.integers(100_000, 2_000_000))
def test_oversized_values_round_trip(size: int) -> None:
    record = {**SAMPLES["Trace"], "teacher_thinking": "x" * size}
    decoded = CODEC.decode(CODEC.encode("Trace", record), expect="Trace")
    assert decoded.record == record


@FAST
@given(names, names)
def test_the_wrong_event_type_is_refused(written: str, expected: str) -> None:
    result = decode_or_error(frame(written), expect=expected)
    assert isinstance(result, Decoded) == (written == expected)


def test_no_payload_at_all() -> None:
    assert isinstance(decode_or_error(None), DecodeError)
    assert isinstance(decode_or_error(b""), DecodeError)


# -- a consumer's decode path, through the real broker ---------------------------------------------

garbage = st.one_of(
    st.binary(min_size=1, max_size=256),
    st.builds(lambda cut: frame("CaptureJob")[:cut], st.integers(1, 60)),
    st.builds(lambda b: SINGLE_OBJECT_MAGIC + b"\xff" * 8 + b, st.binary(max_size=32)),
    st.builds(
        lambda n: SINGLE_OBJECT_MAGIC + current("CaptureJob").fingerprint + zigzag_varint(n),
        st.integers(2**20, 2**62),
    ),
    st.just(frame("Trace")),  # a valid event of the wrong type
)


@pytest.mark.slow
@settings(
    max_examples=3,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(garbage, min_size=3, max_size=8))
def test_the_capture_consumer_dead_letters_garbage_and_goes_on(
    broker, tmp_path: Path, payloads: list[bytes]
) -> None:
    with disposable_settings(broker) as kafka:
        payloads = [
            p for p in payloads if isinstance(decode_or_error(p, "CaptureJob"), DecodeError)
        ]
        jobs = [make_job(seed) for seed in range(3)]
        publish_jobs(kafka, jobs[:1])
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        for i, payload in enumerate(payloads):
            producer.produce(
                kafka.topic(CAPTURE_JOBS), payload, f"garbage-{i}".encode(), partition=0
            )
        assert producer.flush(10) == 0
        publish_jobs(kafka, jobs[1:])

        capture = CaptureSettings(
            teacher_provider="offline",
            student_provider="offline",
            group=f"{kafka.topic_prefix}capture",
            commit_interval_s=0.2,
        )
        worker = build_worker(kafka, capture, (tmp_path / f"o-{kafka.topic_prefix}").as_uri())

        def letters() -> list[DeadLetter]:
            return [
                DeadLetter(
                    r.key.encode() if r.key else None,
                    r.value,
                    {k: v.decode() for k, v in r.headers.items()},
                )
                for r in read_all(kafka, CAPTURE_JOBS + DLQ_SUFFIX)
            ]

        run_until(
            worker,
            lambda: worker.traced == len(jobs) and len(letters()) == len(payloads),
            timeout=60,
        )
        assert worker.traced == len(jobs)  # the good jobs around the garbage all got their trace
        dead = {d.key.decode(): d for d in letters()}
        assert set(dead) == {f"garbage-{i}" for i in range(len(payloads))}
        for i, payload in enumerate(payloads):
            letter = dead[f"garbage-{i}"]
            assert letter.value == payload  # the original bytes, kept for an operator
            assert letter.headers[HEADER_REASON] and letter.headers[HEADER_STAGE]


@pytest.mark.slow
@settings(
    max_examples=2,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(garbage, min_size=2, max_size=6))
def test_the_trainer_dead_letters_garbage_requests_and_goes_on(
    broker, tmp_path: Path, payloads: list[bytes]
) -> None:
    import threading

    from tier3.streams.kafka.settings import LocalSettings
    from tier3.streams.kafka.topics import TRAINING_REQUESTS
    from tier3.trainers.training.consumer import TrainerConsumer
    from tier3.trainers.training.run import TrainingRun

    from tests.support.trainer_harness import tiny_config

    with disposable_settings(broker) as kafka:
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        for i, payload in enumerate(payloads):
            producer.produce(kafka.topic(TRAINING_REQUESTS), payload, f"garbage-{i}".encode())
        assert producer.flush(10) == 0
        local = LocalSettings(home=tmp_path / kafka.topic_prefix)
        run = TrainingRun(kafka, local, tiny_config(tmp_path / "no-model", tmp_path / "work"))
        worker = TrainerConsumer(kafka, run, group=f"{kafka.topic_prefix}trainer")
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        dlq = TRAINING_REQUESTS + DLQ_SUFFIX
        try:
            deadline = time.monotonic() + 60
            while len(read_all(kafka, dlq)) < len(payloads) and time.monotonic() < deadline:
                time.sleep(0.3)
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive()  # it stopped when asked: no crash, no hang
        letters = {r.key: r for r in read_all(kafka, dlq)}
        assert set(letters) == {f"garbage-{i}" for i in range(len(payloads))}
        assert all(letters[f"garbage-{i}"].value == p for i, p in enumerate(payloads))
        assert worker.outcomes == []  # nothing was mistaken for a request
