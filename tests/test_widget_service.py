"""The example FastAPI service, run as users run it: uvicorn in its own process, real broker,
the real anthropic and ollama SDKs against the fake servers over HTTP."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tier3.schemas.registry import EXPERIENCE, FEEDBACK
from tier3.streams.backend.router import (
    FALLBACK,
    STUDENT,
    TEACHER,
    RoutingSettings,
    assigned_to_student,
)
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.tasks import widgets

from tests.support.kafka_reading import read_events
from tests.support.ports import free_port
from tests.support.servers import AnthropicServer, Fault, OllamaServer

REPO = Path(__file__).resolve().parent.parent
SERVICE_DIR = REPO / "examples" / "widget_service"
QUERY = "show revenue by region for last quarter"
CONTEXT = {"page": "sales", "alerts_open": False, "screen": "desktop"}


def _app_module():
    """The example's module, to use its id hashing exactly as the service does."""
    spec = importlib.util.spec_from_file_location("widget_service_app", SERVICE_DIR / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def service(
    kafka: KafkaSettings,
    teacher_url: str,
    student_url: str,
    tmp_path: Path,
    workers: int = 1,
    **env: str,
) -> Iterator[httpx.Client]:
    """``uvicorn app:app`` as the example's README starts it (``workers`` processes); stopped
    with SIGTERM (so the lifespan flushes the publisher, as in production). Yields once every
    worker has started."""
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIER3_")},
        "TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": kafka.topic_prefix,
        "TIER3_PARTITIONS": str(kafka.partitions),
        "ANTHROPIC_API_KEY": "sk-test-key",
        "TIER3_ANTHROPIC_BASE_URL": teacher_url,
        "TIER3_OLLAMA_HOST": student_url,
        "TIER3_LOG_JSON": "false",
        **env,
    }
    log_path = tmp_path / f"service-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app:app",
                "--app-dir",
                str(SERVICE_DIR),
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--no-access-log",
            ],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the service exited at start:\n{log_path.read_text()[-3000:]}")
            started = log_path.read_text().count("Application startup complete")
            with contextlib.suppress(httpx.HTTPError):
                if started >= workers and httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the service did not stop on SIGTERM:\n{log_path.read_text()[-3000:]}")


def select(client: httpx.Client, user: str, session: str = "s-1") -> dict:
    response = client.post(
        "/select",
        json={"query": QUERY, "context": CONTEXT, "user_id": user, "session_id": session},
    )
    assert response.status_code == 200, response.text
    return response.json()


def variants_published(kafka: KafkaSettings) -> dict[str, str]:
    """query_id -> model_variant of every Experience on the topic."""
    return {rec["query_id"]: rec["model_variant"] for _, rec in read_events(kafka, EXPERIENCES)}


def test_experiences_and_feedback_land_and_decode(kafka: KafkaSettings, tmp_path: Path):
    with AnthropicServer() as teacher, OllamaServer() as student:
        with service(kafka, teacher.url, student.url, tmp_path) as client:  # switch off
            answers = [select(client, f"user-{i}") for i in range(5)]
            for i, a in enumerate(answers):
                rating = {"query_id": a["query_id"], "rating": i + 1, "comment": f"comment {i}"}
                accepted = client.post("/feedback", json=rating)
                assert accepted.status_code == 202 and accepted.json()["published"] is True
            assert client.post("/feedback", json={"query_id": "q", "rating": 9}).status_code == 422
        assert student.requests == []  # the switch is off: the student is never asked

    assert {a["variant"] for a in answers} == {TEACHER}
    assert all(a["answer"] == widgets.reference_answer(QUERY, CONTEXT) for a in answers)
    experiences = read_events(kafka, EXPERIENCES)
    assert {name for name, _ in experiences} == {EXPERIENCE}
    by_id = {rec["query_id"]: rec for _, rec in experiences}
    assert set(by_id) == {a["query_id"] for a in answers}
    for rec in by_id.values():
        assert rec["model_variant"] == TEACHER and rec["model"] == "claude-sonnet-4-5"
        assert json.loads(rec["response"]) == widgets.reference_answer(QUERY, CONTEXT)
        assert json.loads(rec["context"]) == CONTEXT
        assert not rec["user_id_hash"].startswith("user-")  # hashed, never the id itself
    feedback = read_events(kafka, FEEDBACK_TOPIC)
    assert {name for name, _ in feedback} == {FEEDBACK}
    assert {(rec["query_id"], rec["rating"], rec["comment"]) for _, rec in feedback} == {
        (a["query_id"], i + 1, f"comment {i}") for i, a in enumerate(answers)
    }


def test_the_switch_and_the_split_route_as_configured(kafka: KafkaSettings, tmp_path: Path):
    pseudonym = _app_module().pseudonym
    routing = RoutingSettings(use_finetuned_model=True, student_percent=50)
    users = [f"user-{i}" for i in range(40)]
    with AnthropicServer() as teacher, OllamaServer() as student:
        env = {"USE_FINETUNED_MODEL": "true", "TIER3_STUDENT_PERCENT": "50"}
        with service(kafka, teacher.url, student.url, tmp_path, **env) as client:
            first = {u: select(client, u, session="a") for u in users}
            again = {u: select(client, u, session="b") for u in users}
        asked_student = len(student.requests)

    expected = {
        u: STUDENT if assigned_to_student(routing, pseudonym(u), pseudonym("a")) else TEACHER
        for u in users
    }
    assert {u: a["variant"] for u, a in first.items()} == expected
    assert {u: a["variant"] for u, a in again.items()} == expected  # sticky: a new session
    assert set(expected.values()) == {STUDENT, TEACHER}
    assert asked_student == 2 * list(expected.values()).count(STUDENT)
    for a in first.values():
        if a["variant"] == STUDENT:
            assert a["model"] == "cc-widget-selector-v2" and a["answer"]["widgets"] == ["table"]
    served = {a["query_id"]: a["variant"] for a in [*first.values(), *again.values()]}
    assert variants_published(kafka) == served


def test_a_failing_student_falls_back_to_the_teacher(kafka: KafkaSettings, tmp_path: Path):
    reference = widgets.reference_answer(QUERY, CONTEXT)
    with AnthropicServer() as teacher:
        student = OllamaServer().start()
        env = {"USE_FINETUNED_MODEL": "true", "TIER3_STUDENT_TIMEOUT_S": "2"}
        with service(kafka, teacher.url, student.url, tmp_path, **env) as client:
            served = [select(client, "user-1")]  # the student is well: it answers
            student.faults.add(Fault(500, times=None))
            served.append(select(client, "user-2"))  # it errs
            student.faults.clear()
            student.faults.add(Fault(malformed=True, times=None))
            served.append(select(client, "user-3"))  # it rambles
            student.stop()
            served.append(select(client, "user-4"))  # it is down
            metrics = client.get("/metrics").text

    assert [a["variant"] for a in served] == [STUDENT, FALLBACK, FALLBACK, FALLBACK]
    assert all(a["answer"] == reference and a["model"] == "claude-sonnet-4-5" for a in served[1:])
    assert 'tier3_router_answers_total{variant="student-fallback"} 3.0' in metrics
    assert variants_published(kafka) == {a["query_id"]: a["variant"] for a in served}


def metric_values(page: str) -> dict[str, float]:
    """``name{label values}`` -> value of every sample on a /metrics page."""
    return {
        f"{s.name}{sorted(s.labels.values())}": s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def test_several_workers_are_counted_on_one_metrics_page(kafka: KafkaSettings, tmp_path: Path):
    """``uvicorn --workers 2`` with ``PROMETHEUS_MULTIPROC_DIR``, as the README says: whichever
    worker answers the scrape, /metrics counts the answers and events of both."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    requests = 30
    with AnthropicServer() as teacher:
        ollama_down = f"http://127.0.0.1:{free_port()}"
        env = {"USE_FINETUNED_MODEL": "true", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        with service(kafka, teacher.url, ollama_down, tmp_path, workers=2, **env) as client:
            for i in range(requests):  # a connection each: the workers share the listening socket
                body = {"query": QUERY, "context": CONTEXT, "user_id": f"u-{i}", "session_id": "s"}
                answer = httpx.post(
                    f"{client.base_url}/select", json=body, headers={"Connection": "close"}
                )
                assert answer.status_code == 200 and answer.json()["variant"] == FALLBACK
            deadline = time.monotonic() + 20  # each worker copies its publisher's counts each 1 s
            while True:
                pages = [
                    metric_values(httpx.get(f"{client.base_url}/metrics").text) for _ in range(4)
                ]
                if all(
                    p.get("tier3_publisher_events_total['delivered']") == requests for p in pages
                ):
                    break
                assert time.monotonic() < deadline, pages[-1]
                time.sleep(0.5)

    for page in pages:
        assert page["tier3_router_answers_total['student-fallback']"] == requests
        assert page["tier3_publisher_events_total['accepted']"] == requests
        assert page["tier3_publisher_events_total['dropped']"] == 0
        assert page["tier3_publisher_pending[]"] == 0
    assert len(variants_published(kafka)) == requests
