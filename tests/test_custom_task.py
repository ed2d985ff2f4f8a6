"""A team's own task with its own prompt, end to end: registered by dotted path (TIER3_TASK),
captured against the fake Anthropic and Ollama servers over HTTP, built into a dataset and held
out for evaluation. What the student is trained and judged on must be, byte for byte, what the
teacher received; and the router asks the student with the same task's messages."""

from __future__ import annotations

import json
from pathlib import Path

import ollama
import pytest
from tier3.streams.backend.router import (
    STUDENT,
    Router,
    RoutingSettings,
    ollama_student,
)
from tier3.streams.kafka.settings import KafkaSettings
from tier3.tasks import configured_task
from tier3.trainers.release.evaluate import held_out_from_traces
from tier3.trainers.training.dataset import build_dataset

from tests.support import custom_task
from tests.support.capture_harness import (
    build_worker,
    latest_traces,
    make_job,
    provider_settings,
    publish_jobs,
    run_until,
)
from tests.support.servers import AnthropicServer, OllamaServer

TICKETS = [
    ("the dashboard is down since 9:00", {"plan": "enterprise"}),
    ("my invoice shows the wrong VAT", {"plan": "team"}),
    ("I can't change my avatar", {"plan": "free"}),
]


@pytest.fixture(autouse=True)
def triage_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIER3_TASK", "tests.support.custom_task:task")


def test_the_dataset_trains_on_exactly_what_the_teacher_received(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    assert configured_task().name == "ticket-triage"
    jobs = [make_job(i, query=q, context=c) for i, (q, c) in enumerate(TICKETS)]
    publish_jobs(kafka, jobs)
    with (
        AnthropicServer(reply=lambda prompt, body: custom_task.teacher_reply(prompt)) as teacher,
        OllamaServer(reply=lambda prompt, body: '{"queue": "account", "urgency": 0.5}') as student,
    ):
        settings = provider_settings(teacher.url, student.url)
        worker = build_worker(kafka, settings, (tmp_path / "objects").as_uri())
        run_until(worker, lambda: worker.traced >= len(jobs))
        teacher_bodies, student_bodies = teacher.requests, student.requests

    traces = latest_traces(kafka)
    assert set(traces) == {j["query_id"] for j in jobs}
    assert all(t["teacher_answer_valid"] for t in traces.values())  # the task's own parse
    request = {"request_id": "r-1", "model": "triage", "query_ids": sorted(traces)}
    built = build_dataset(request, traces, eval_share=0.0, base_model="tiny")
    assert built.manifest["task"] == "ticket-triage"
    assert built.manifest["rendered_prompts"] == 0  # every prompt came from its trace
    assert len(built.train) == len(jobs)

    def received(bodies: list[dict], query: str) -> dict:
        [body] = [b for b in bodies if f"«{query}»" in json.dumps(b, ensure_ascii=False)]
        return body

    for example in built.train:
        trace = traces[example["query_id"]]
        system, user, assistant = example["messages"]
        body = received(teacher_bodies, trace["query"])
        # The Messages API takes the system prompt apart; the user turn is the last message.
        assert system == {"role": "system", "content": body["system"]}
        assert user["role"] == "user" == body["messages"][-1]["role"]
        assert user["content"].encode() == body["messages"][-1]["content"].encode()
        assert "«" in user["content"] and "Select dashboard widgets" not in user["content"]
        thinking, answer = custom_task.teacher_reply(user["content"])
        assert assistant["content"] == f"<think>{thinking}</think>\n{answer}"
        # The student was asked with the same messages (Ollama takes the system turn inline).
        assert received(student_bodies, trace["query"])["messages"] == [system, user]

    # Evaluation holds the same messages out: the student is judged on the teacher's text.
    everything = build_dataset(request, traces, eval_share=1.0, base_model="tiny")
    held_out = held_out_from_traces(everything.manifest, traces)
    assert [list(h.messages) for h in held_out] == [e["messages"][:2] for e in everything.eval]


def test_the_router_asks_the_student_with_the_configured_task() -> None:
    query, context = TICKETS[0]
    expected = custom_task.reference_answer(query, context)
    with OllamaServer(reply=lambda prompt, body: json.dumps(expected)) as server:
        router = Router(
            teacher=lambda q, c: pytest.fail("the student's valid answer needs no teacher"),
            student=ollama_student(ollama.Client(host=server.url)),
            settings=RoutingSettings(use_finetuned_model=True, student_model="triage:1"),
        )
        routed = router.answer(query, context, user_id_hash="u", session_id_hash="s")
        [body] = server.requests
    assert body["messages"] == custom_task.messages(query, context)
    assert routed.variant == STUDENT
    assert routed.experience["confidence"] == expected["urgency"]  # the task's score
