"""Teacher and student providers: the real SDKs over HTTP against the fake servers."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import ollama
import pytest
from tier3.consumers.providers import (
    AnthropicTeacher,
    OfflineStudent,
    OfflineTeacher,
    OllamaProvider,
    Question,
    build_student,
    build_teacher,
)
from tier3.consumers.rate_limit import RateLimiter
from tier3.consumers.settings import CaptureSettings
from tier3.tasks import widgets
from tier3.tasks.widgets import ANSWER_SCHEMA, parse_answer, reference_answer

from tests.support.servers import AnthropicServer, Fault, OllamaServer
from tests.support.servers.widget_replies import teacher_reply

CONTEXT = {"alerts_open": True, "page": "ops", "screen": "desktop"}
WIDGETS = widgets.task()
TASK = Question.of(WIDGETS, "plot error rate trend this week", json.dumps(CONTEXT))


def ask(provider, task: Question = TASK):
    async def go():
        try:
            return await provider.answer(task)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def test_anthropic_teacher_captures_thinking_answer_and_usage():
    with AnthropicServer() as server:
        answer = ask(AnthropicTeacher("sk-test", "claude-sonnet-4-6", thinking_budget=1024,
                                      max_tokens=3000, base_url=server.url))
        request = server.requests[0]
    assert json.loads(answer.text) == reference_answer(TASK.query, CONTEXT)
    assert "alert list" in answer.thinking
    assert answer.input_tokens > 0 and answer.output_tokens > 0
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert request["max_tokens"] == 3000 and request["model"] == "claude-sonnet-4-6"
    assert request["messages"][0]["content"] == TASK.prompt


def test_thinking_budget_zero_turns_thinking_off():
    with AnthropicServer() as server:
        answer = ask(AnthropicTeacher("sk-test", "m", thinking_budget=0, base_url=server.url))
        assert "thinking" not in server.requests[0]
    assert answer.thinking == "" and parse_answer(answer.text) is not None


def test_retry_after_is_honoured_and_5xx_retried_with_backoff():
    with AnthropicServer(faults=[Fault(429, retry_after=0.5), Fault(503)]) as server:
        answer = ask(AnthropicTeacher("sk-test", "m", base_url=server.url, max_retries=3))
        arrivals = server.arrivals
    assert parse_answer(answer.text) is not None
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.5


def test_retries_run_out_into_the_sdk_error():
    with AnthropicServer(faults=[Fault(529, times=None)]) as server:
        with pytest.raises(anthropic.InternalServerError):
            ask(AnthropicTeacher("sk-test", "m", base_url=server.url, max_retries=2))
        assert len(server.requests) == 3


def test_ollama_student_asks_for_the_task_json_schema():
    with OllamaServer(models={"llama3.2:1b"}) as server:
        answer = ask(OllamaProvider(server.url, "llama3.2:1b", answer_schema=ANSWER_SCHEMA))
        request = server.requests[0]
    assert request["format"] == ANSWER_SCHEMA
    assert request["_path"] == "/api/chat"
    assert parse_answer(answer.text)["widgets"] == ["table"]
    assert answer.output_tokens > 0


def test_ollama_unknown_model_is_an_error():
    with OllamaServer(models={"llama3.2:1b"}) as server, pytest.raises(ollama.ResponseError):
        ask(OllamaProvider(server.url, "no-such-model"))


def test_ollama_can_be_the_teacher_with_thinking():
    settings = CaptureSettings(teacher_provider="ollama", teacher_model="llama3.1:70b",
                               ollama_host="http://127.0.0.1:1", thinking_budget=1024)
    with OllamaServer() as server:
        settings.ollama_host = server.url
        teacher = build_teacher(settings)
        answer = ask(teacher)
        assert server.requests[0]["think"] is True
    assert teacher.name == "ollama" and teacher.model == "llama3.1:70b"
    assert answer.thinking and parse_answer(answer.text) is not None


def test_offline_providers_say_so_and_differ_in_quality():
    teacher, student = ask(OfflineTeacher(WIDGETS)), ask(OfflineStudent(WIDGETS))
    assert OfflineTeacher.name == OfflineStudent.name == "offline"
    assert json.loads(teacher.text) == reference_answer(TASK.query, CONTEXT)
    assert json.loads(student.text)["widgets"] == ["table"]
    assert json.loads(student.text)["primary_metric"] == "error rate"


def test_without_key_or_host_the_offline_providers_stand_in(monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = CaptureSettings()
    assert settings.teacher_provider == "offline" and settings.student_provider == "offline"
    assert isinstance(build_teacher(settings), OfflineTeacher)
    assert isinstance(build_student(settings), OfflineStudent)
    logged = capsys.readouterr()
    assert "OFFLINE reference-rules teacher" in logged.out + logged.err


def test_a_key_picks_anthropic_and_a_template_shapes_the_prompt(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    monkeypatch.setenv("TIER3_PROMPT_TEMPLATE", "Q: $query | C: $context | {json}")
    assert CaptureSettings().teacher_provider == "anthropic"
    # The prompt is the widget task's setting: capture, dataset and router all get it there.
    question = Question.of(widgets.task(), "show orders", '{"page": "sales"}')
    assert question.messages == ({"role": "user",
                                  "content": 'Q: show orders | C: {"page": "sales"} | {json}'},)


def test_rate_limit_on_requests_is_honoured():
    # 600 a minute is 10 a second with at most one second's worth (10) banked: 30 calls at once
    # must spread over at least two seconds, and no one-second window may hold more than 20.
    with AnthropicServer() as server:
        teacher = AnthropicTeacher("sk-test", "m", base_url=server.url,
                                   limiter=RateLimiter(requests_per_minute=600,
                                                       tokens_per_minute=None))

        async def burst():
            try:
                return await asyncio.gather(*(teacher.answer(TASK) for _ in range(30)))
            finally:
                await teacher.aclose()

        started = time.monotonic()
        answers = asyncio.run(burst())
        arrivals = sorted(server.arrivals)
    assert len(answers) == 30
    assert arrivals[-1] - started >= 1.9
    for i, t in enumerate(arrivals):
        assert sum(1 for u in arrivals[i:] if u - t < 1.0) <= 20


def test_rate_limit_on_tokens_charges_the_real_usage():
    # Each call uses ~170 tokens (input + thinking + answer); 6000 a minute is 100 a second.
    with AnthropicServer() as server:
        limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=6000)
        teacher = AnthropicTeacher("sk-test", "m", base_url=server.url, limiter=limiter)

        async def calls():
            try:
                return [await teacher.answer(TASK) for _ in range(4)]
            finally:
                await teacher.aclose()

        started = time.monotonic()
        answers = asyncio.run(calls())
        elapsed = time.monotonic() - started
    spent = sum(a.input_tokens + a.output_tokens for a in answers)
    # All but the first second's 100 tokens must have been earned at 100 a second (give or take
    # the last call, whose debt nobody waits for).
    last = answers[-1].input_tokens + answers[-1].output_tokens
    assert elapsed >= (spent - last - 100) / 100 * 0.95


def test_an_openai_compatible_server_can_be_the_teacher():
    # Ollama's own /v1 endpoint, answering as a competent teacher would.
    with OllamaServer(reply=lambda prompt, body: teacher_reply(prompt)[1],
                      faults=[Fault(429, retry_after=0.3)]) as server:
        settings = CaptureSettings(teacher_provider="openai", teacher_model="qwen3:32b",
                                   openai_base_url=f"{server.url}/v1")
        teacher = build_teacher(settings)
        answer = ask(teacher)
        requests, arrivals = server.requests, server.arrivals
    assert teacher.name == "openai" and teacher.model == "qwen3:32b"
    assert json.loads(answer.text) == reference_answer(TASK.query, CONTEXT)
    assert answer.input_tokens > 0 and answer.output_tokens > 0
    assert [r["_path"] for r in requests] == ["/v1/chat/completions"] * 2
    assert requests[-1]["response_format"] == {"type": "json_object"}
    assert arrivals[1] - arrivals[0] >= 0.3  # the 429's retry-after, honoured by the SDK
