"""The backend's switch: split, stickiness, fallback and rollback, against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from tier3.schemas.registry import EXPERIENCE, MODEL_DEPLOYED
from tier3.streams.backend.deployments import DeploymentLog, DeploymentWatcher
from tier3.streams.backend.publisher import Publisher
from tier3.streams.backend.router import (
    FALLBACK,
    STUDENT,
    TEACHER,
    Router,
    RoutingSettings,
)
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.topics import EXPERIENCES, TRAINING_RESULTS
from tier3.tasks import widgets

from tests.support.kafka_reading import read_events

CONTEXT = {"page": "sales", "alerts_open": False, "screen": "desktop"}
QUERY = "show revenue by region for last quarter"


def teacher(query: str, context: dict) -> str:
    return json.dumps(widgets.reference_answer(query, context))


def good_student(model: str, query: str, context: dict) -> str:
    answer = json.dumps(widgets.reference_answer(query, context))
    return f"<think>{model} thinks first.</think>\n{answer}"


def router(student=good_student, **settings) -> Router:
    return Router(teacher, student, RoutingSettings(use_finetuned_model=True, **settings))


def ask(r: Router, user: str, session: str = "s"):
    return r.answer(QUERY, CONTEXT, user_id_hash=user, session_id_hash=session)


def test_switch_off_sends_everything_to_the_teacher(monkeypatch):
    monkeypatch.setenv("USE_FINETUNED_MODEL", "false")
    r = Router(teacher, good_student)
    assert {ask(r, f"user-{i}").variant for i in range(50)} == {TEACHER}


def test_switch_on_from_the_environment_serves_the_seed_model(monkeypatch):
    monkeypatch.setenv("USE_FINETUNED_MODEL", "true")
    r = Router(teacher, good_student)
    routed = ask(r, "user-1")
    assert routed.variant == STUDENT
    assert routed.model == "cc-widget-selector-v2"
    assert widgets.parse_answer(routed.experience["response"]) == widgets.reference_answer(
        QUERY, CONTEXT
    )


def test_split_serves_the_configured_share_of_users():
    r = router(student_percent=30)
    served = [ask(r, f"user-{i}").variant for i in range(2000)]
    share = served.count(STUDENT) / len(served)
    assert 0.27 < share < 0.33


def test_assignment_is_sticky_per_user_across_processes_and_only_grows():
    users = [f"user-{i}" for i in range(300)]
    first = {u: ask(router(student_percent=40), u, session=f"{u}-a").variant for u in users}
    again = {u: ask(router(student_percent=40), u, session=f"{u}-b").variant for u in users}
    assert first == again  # same user, new session, new router: same arm
    wider = {u: ask(router(student_percent=70), u).variant for u in users}
    assert all(wider[u] == STUDENT for u in users if first[u] == STUDENT)
    assert sum(v == STUDENT for v in wider.values()) > sum(v == STUDENT for v in first.values())


def test_session_stickiness_keys_on_the_session():
    r = router(student_percent=50, sticky_by="session")
    arms = {ask(r, "one-user", session=f"session-{i}").variant for i in range(60)}
    assert arms == {STUDENT, TEACHER}  # one user, many sessions: both arms
    assert len({ask(r, f"user-{i}", session="same").variant for i in range(60)}) == 1


def test_student_error_falls_back_to_the_teacher():
    def broken(model: str, query: str, context: dict) -> str:
        raise ConnectionError("ollama is down")

    routed = ask(router(broken), "user-1")
    assert routed.variant == FALLBACK
    assert routed.reply == teacher(QUERY, CONTEXT)
    assert "ollama is down" in routed.fallback_reason
    assert routed.experience["model_variant"] == FALLBACK
    assert routed.experience["model"] == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    "reply",
    [
        "I think a bar chart",
        '{"widgets": ["bar_chart"]}',
        '<think>unclosed {"widgets": ["kpi_card"], "primary_metric": "x", "appropriateness": 1}',
        '{"widgets": ["sparkline"], "primary_metric": "revenue", "appropriateness": 0.9}',
    ],
)
def test_invalid_student_reply_falls_back_to_the_teacher(reply):
    routed = ask(router(lambda m, q, c: reply), "user-1")
    assert routed.variant == FALLBACK
    assert routed.reply == teacher(QUERY, CONTEXT)


def test_published_experiences_record_the_variant(kafka):
    publisher = Publisher(kafka, enabled=True)
    r = Router(
        teacher,
        good_student,
        RoutingSettings(use_finetuned_model=True, student_percent=50),
        publisher=publisher,
    )
    served = {}
    for i in range(40):
        routed = r.answer(
            QUERY, CONTEXT, user_id_hash=f"u{i}", session_id_hash="s", query_id=f"q{i}"
        )
        served[f"q{i}"] = routed.variant
    assert publisher.close(10) == 0
    events = read_events(kafka, EXPERIENCES)
    assert {name for name, _ in events} == {EXPERIENCE}
    assert {rec["query_id"]: rec["model_variant"] for _, rec in events} == served
    assert set(served.values()) == {STUDENT, TEACHER}


def deployed(name: str, at: int) -> dict:
    return {
        "request_id": f"req-{name}",
        "model": "tier3-student",
        "ollama_name": name,
        "digest": f"sha256:{name:0>64}",
        "quantization": "q4_k_m",
        "gguf_uri": f"file:///models/{name}.gguf",
        "manifest_uri": "file:///manifest.json",
        "eval_report_uri": "file:///report.md",
        "deployed_at": at,
        "action": "deploy",
    }


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_rollback_switches_running_routers_back(kafka):
    producer = EventProducer(kafka)
    now = int(time.time() * 1000)
    producer.send_and_wait(TRAINING_RESULTS, MODEL_DEPLOYED, "tier3-student", deployed("v1", now))
    producer.send_and_wait(
        TRAINING_RESULTS, MODEL_DEPLOYED, "tier3-student", deployed("v2", now + 1)
    )
    watcher = DeploymentWatcher(kafka, "tier3-student")
    try:
        assert watcher.wait_caught_up(20)
        r = Router(
            teacher,
            good_student,
            RoutingSettings(use_finetuned_model=True),
            deployments=watcher,
        )
        assert ask(r, "user-1").model == "v2"

        log = DeploymentLog(kafka, "tier3-student")
        event = log.rollback(reason="operator said so", producer=producer)
        assert event["action"] == "rollback" and event["ollama_name"] == "v1"
        assert wait_for(lambda: ask(r, "user-1").model == "v1")

        log.rollback(reason="v1 too", producer=producer)
        assert wait_for(lambda: ask(r, "user-1").variant == TEACHER)
        assert log.current() is None
        with pytest.raises(LookupError):
            log.rollback(reason="nothing left")
    finally:
        watcher.close()


def tier3(kafka, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIER3_TOPIC_PREFIX": kafka.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "tier3.streams", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rollback_is_one_command(kafka):
    producer = EventProducer(kafka)
    now = int(time.time() * 1000)
    # The default logical model of the trainer and of the router: cc-widget-selector.
    model = RoutingSettings().model
    producer.send_and_wait(TRAINING_RESULTS, MODEL_DEPLOYED, model, deployed("v1", now))

    done = tier3(kafka, "rollback", "--reason", "users complain")
    assert done.returncode == 0, done.stderr
    assert "now serving the teacher" in done.stderr
    assert DeploymentLog(kafka, model).current() is None

    again = tier3(kafka, "rollback")
    assert again.returncode == 1 and "nothing to roll back" in again.stderr
