"""The capture consumer end to end, in-process: real broker, real SDKs, fake provider servers.

Each test publishes capture jobs, runs one consumer until every job is traced or dead-lettered,
and checks what a user would look at: the objects in the store, the traces topic, the
dead-letter topic and the group's committed offsets.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tier3.consumers.object_store import TraceStore
from tier3.streams.kafka.dead_letters import HEADER_REASON, HEADER_STAGE
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, DLQ_SUFFIX
from tier3.tasks.widgets import parse_answer, reference_answer

from tests.support.capture_harness import (
    behind,
    build_worker,
    latest_traces,
    make_job,
    provider_settings,
    publish_jobs,
    run_until,
)
from tests.support.kafka_reading import read_all
from tests.support.servers import MALFORMED_ANSWER, AnthropicServer, Fault, OllamaServer


@pytest.fixture
def servers():
    with AnthropicServer(delay_s=0.05) as teacher, OllamaServer(delay_s=0.02) as student:
        yield teacher, student


@pytest.fixture
def store_root(tmp_path: Path) -> str:
    return (tmp_path / "objects").as_uri()


def test_every_job_gets_one_trace_in_store_and_topic(kafka: KafkaSettings, servers, store_root):
    teacher, student = servers
    jobs = [make_job(i) for i in range(24)]
    publish_jobs(kafka, jobs)
    settings = provider_settings(teacher.url, student.url, thinking_budget=1500)
    worker = build_worker(kafka, settings, store_root)

    run_until(worker, lambda: worker.traced >= len(jobs))

    store = TraceStore(store_root)
    assert sorted(store.query_ids()) == sorted(j["query_id"] for j in jobs)
    latest = latest_traces(kafka)
    assert set(latest) == {j["query_id"] for j in jobs}
    for job in jobs:
        trace = latest[job["query_id"]]
        document = store.read(job["query_id"])
        context = json.loads(job["context"])
        assert trace["object_uri"] == store.uri(job["query_id"]) == document["object_uri"]
        assert trace["teacher_provider"] == "anthropic" and trace["student_provider"] == "ollama"
        assert json.loads(trace["teacher_answer"]) == reference_answer(job["query"], context)
        assert trace["teacher_thinking"].startswith("The user asks")
        assert trace["teacher_answer_valid"] is True
        assert trace["teacher_input_tokens"] > 0 and trace["teacher_output_tokens"] > 0
        assert parse_answer(trace["student_answer"])["widgets"] == ["table"]
        assert trace["student_error"] is None
        assert trace["teacher_latency_ms"] >= 50  # the server's delay
        assert document["teacher_answer"] == trace["teacher_answer"]
        assert document["original_model"] == "claude-backend"
    # The teacher was asked with extended thinking; the student for the task's JSON.
    thinking = {"type": "enabled", "budget_tokens": 1500}
    assert all(r["thinking"] == thinking for r in teacher.requests)
    assert all(r["format"]["required"] for r in student.requests)
    # Every job's offset is committed once it is traced.
    assert behind(kafka, settings.group) == {}


def test_teacher_retries_429_with_retry_after_500_and_529(kafka, servers, store_root):
    teacher, student = servers
    job = make_job(1, query="show revenue by region today")
    teacher.faults.add(Fault(429, retry_after=0.3, match="revenue by region"))
    teacher.faults.add(Fault(500, match="revenue by region"))
    teacher.faults.add(Fault(529, match="revenue by region"))
    publish_jobs(kafka, [job])
    worker = build_worker(kafka, provider_settings(teacher.url, student.url), store_root)

    run_until(worker, lambda: worker.traced >= 1)

    asked = [
        t
        for r, t in zip(teacher.requests, teacher.arrivals, strict=True)
        if "revenue by region" in r["messages"][0]["content"]
    ]
    assert len(asked) == 4  # three failures, then the answer
    assert asked[1] - asked[0] >= 0.3  # retry-after honoured
    assert latest_traces(kafka)[job["query_id"]]["teacher_answer_valid"] is True


def test_malformed_teacher_reply_is_recorded_not_crashed_on(kafka, servers, store_root):
    teacher, student = servers
    bad, good = make_job(1, query="show churn trend"), make_job(2, query="show orders total")
    teacher.faults.add(Fault(malformed=True, match="churn trend"))
    publish_jobs(kafka, [bad, good])
    worker = build_worker(kafka, provider_settings(teacher.url, student.url), store_root)

    run_until(worker, lambda: worker.traced >= 2)

    latest = latest_traces(kafka)
    assert latest[bad["query_id"]]["teacher_answer_valid"] is False
    assert latest[bad["query_id"]]["teacher_answer"] == MALFORMED_ANSWER
    assert latest[good["query_id"]]["teacher_answer_valid"] is True
    assert worker.dead_lettered == 0


def test_student_failure_is_recorded_and_the_trace_kept(kafka, servers, store_root):
    teacher, student = servers
    job = make_job(1, query="plot latency over time")
    student.faults.add(Fault(500, match="latency over time", times=None))
    publish_jobs(kafka, [job])
    worker = build_worker(kafka, provider_settings(teacher.url, student.url), store_root)

    run_until(worker, lambda: worker.traced >= 1)

    trace = latest_traces(kafka)[job["query_id"]]
    assert "500" in trace["student_error"]
    assert trace["student_answer"] == ""
    assert trace["teacher_answer_valid"] is True


def test_poison_jobs_go_to_the_dead_letter_topic_and_the_rest_goes_on(kafka, servers, store_root):
    teacher, student = servers
    failing = make_job(1, query="show signups on a map")
    healthy = [make_job(i, query=f"show revenue total {i}") for i in range(5)]
    teacher.faults.add(Fault(500, match="signups on a map", times=None))
    producer = EventProducer(kafka)
    producer.raw.produce(kafka.topic(CAPTURE_JOBS), b"not an avro event", b"garbage-key")
    producer.flush(10)
    publish_jobs(kafka, [failing, *healthy])
    settings = provider_settings(teacher.url, student.url, attempts=2, teacher_max_retries=1)
    worker = build_worker(kafka, settings, store_root)

    run_until(worker, lambda: worker.traced + worker.dead_lettered >= 7)

    dead = {r.key: r for r in read_all(kafka, CAPTURE_JOBS + DLQ_SUFFIX)}
    assert set(dead) == {"garbage-key", failing["query_id"]}
    assert dead["garbage-key"].value == b"not an avro event"
    assert b"undecodable" in dead["garbage-key"].headers[HEADER_REASON]
    assert b"failed after 2 attempts" in dead[failing["query_id"]].headers[HEADER_REASON]
    assert dead[failing["query_id"]].headers[HEADER_STAGE] == b"capture"
    # Two job attempts, each one call plus one SDK retry.
    assert sum("signups on a map" in r["messages"][0]["content"] for r in teacher.requests) == 4
    assert set(latest_traces(kafka)) == {j["query_id"] for j in healthy}
    assert behind(kafka, settings.group) == {}


def test_in_flight_work_is_bounded_by_concurrency(kafka, store_root):
    with AnthropicServer(delay_s=0.3) as teacher, OllamaServer() as student:
        jobs = [make_job(i) for i in range(40)]
        publish_jobs(kafka, jobs)
        worker = build_worker(
            kafka, provider_settings(teacher.url, student.url, concurrency=8), store_root
        )

        run_until(worker, lambda: worker.traced >= len(jobs))

        assert teacher.max_in_flight == 8  # full, and never more
    assert len(latest_traces(kafka)) == len(jobs)


def test_an_unusable_query_id_is_dead_lettered(kafka, servers, store_root):
    teacher, student = servers
    job = make_job(1)
    job["query_id"] = "../../etc/passwd"
    publish_jobs(kafka, [job])
    worker = build_worker(kafka, provider_settings(teacher.url, student.url), store_root)

    run_until(worker, lambda: worker.dead_lettered >= 1)

    dead = read_all(kafka, CAPTURE_JOBS + DLQ_SUFFIX)
    assert [d.key for d in dead] == ["../../etc/passwd"]
    assert b"cannot be an object key" in dead[0].headers[HEADER_REASON]
    assert not teacher.requests  # rejected before any call was paid for


def test_teacher_and_student_are_asked_at_the_same_time(kafka, store_root):
    with AnthropicServer(delay_s=2.0) as teacher, OllamaServer() as student:
        publish_jobs(kafka, [make_job(1)])
        worker = build_worker(kafka, provider_settings(teacher.url, student.url), store_root)
        run_until(worker, lambda: worker.traced >= 1)
        # Asked one after the other, the student would come 2 s after the teacher.
        assert abs(student.arrivals[0] - teacher.arrivals[0]) < 1.0


@pytest.mark.slow
def test_a_second_member_joining_mid_stream_loses_and_duplicates_nothing(kafka, store_root):
    # One member alone needs ~9 s (120 jobs, 4 at a time, 0.3 s each); the second joins at ~1 s.
    with AnthropicServer(delay_s=0.3) as teacher, OllamaServer() as student:
        jobs = [make_job(i) for i in range(120)]
        publish_jobs(kafka, jobs)
        settings = provider_settings(teacher.url, student.url, concurrency=4)
        first, second = (build_worker(kafka, settings, store_root) for _ in range(2))
        store = TraceStore(store_root)
        ids = {j["query_id"] for j in jobs}

        def all_stored() -> bool:
            return set(store.query_ids()) == ids

        runner = threading.Thread(target=run_until, args=(first, all_stored))
        runner.start()
        while first.traced < 12:
            time.sleep(0.05)
        run_until(second, all_stored)  # joins: the group rebalances mid-stream
        runner.join(60)

    assert first.traced > 0 and second.traced > 0  # both did work
    latest = latest_traces(kafka)
    assert set(latest) == ids
    assert behind(kafka, settings.group) == {}


def test_metrics_tell_jobs_retries_dead_letters_tokens_and_latency(kafka, servers, store_root):
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    names = [
        ("tier3_capture_jobs_total", {"outcome": "traced"}),
        ("tier3_capture_jobs_total", {"outcome": "dead_letter"}),
        ("tier3_capture_retries_total", {"kind": "http"}),
        ("tier3_capture_retries_total", {"kind": "job"}),
        ("tier3_capture_dead_letters_total", {"reason": "failed"}),
        ("tier3_capture_tokens_total", {"role": "teacher", "direction": "output"}),
        ("tier3_capture_teacher_latency_seconds_count", {"provider": "anthropic"}),
        ("tier3_capture_student_latency_seconds_count", {"provider": "ollama"}),
    ]
    before = [value(n, **labels) for n, labels in names]
    teacher, student = servers
    teacher.faults.add(Fault(529, match="geo", times=None))
    jobs = [make_job(i, query=f"show orders total {i}") for i in range(3)]
    publish_jobs(kafka, [*jobs, make_job(9, query="show cost on a map geo")])
    settings = provider_settings(teacher.url, student.url, attempts=2, teacher_max_retries=1)
    worker = build_worker(kafka, settings, store_root)

    run_until(worker, lambda: worker.traced + worker.dead_lettered >= 4)

    delta = [value(n, **labels) - b for (n, labels), b in zip(names, before, strict=True)]
    traced, dead, http_retries, job_retries, dead_failed, tokens, teacher_n, student_n = delta
    assert (traced, dead, dead_failed) == (3, 1, 1)
    assert http_retries == 2  # one SDK retry in each of the failing job's two attempts
    assert job_retries == 1
    assert tokens > 0
    assert teacher_n == 3  # calls that answered
    assert student_n == 3 + 2  # the student answered the failing job in both attempts too


def test_offline_providers_make_traces_that_say_so(kafka, store_root, monkeypatch):
    from tier3.consumers.settings import CaptureSettings

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    jobs = [make_job(i) for i in range(5)]
    publish_jobs(kafka, jobs)
    settings = CaptureSettings(group="capture-offline", commit_interval_s=0.2)
    worker = build_worker(kafka, settings, store_root)

    run_until(worker, lambda: worker.traced >= len(jobs))

    latest = latest_traces(kafka)
    for job in jobs:
        trace = latest[job["query_id"]]
        assert (trace["teacher_provider"], trace["teacher_model"]) == ("offline", "reference-rules")
        student = (trace["student_provider"], trace["student_model"])
        assert student == ("offline", "widgets-baseline")
        context = json.loads(job["context"])
        assert json.loads(trace["teacher_answer"]) == reference_answer(job["query"], context)
        assert trace["teacher_input_tokens"] == 0  # nothing was paid for
