"""Teacher and student providers behind one small interface: ``await provider.answer(question)``.

A ``Question`` carries the messages the configured task rendered for a job (``Task.render``);
every provider sends exactly those messages, so the trace can record what the teacher saw.

* ``AnthropicTeacher``: Claude through ``anthropic.AsyncAnthropic`` with extended thinking. The
  SDK already retries 429, 529 and 5xx with exponential backoff and jitter, honouring
  ``retry-after`` (``max_retries``), so tier3 does not wrap a second retry loop around it; an SDK
  middleware, which runs once per HTTP attempt, counts the retries and applies the client-side
  rate limit to every attempt, retries included.
* ``OpenAICompatibleTeacher``: any server that speaks OpenAI's chat completions (vLLM, TGI,
  Ollama's ``/v1``, a gateway), through the ``openai`` SDK, which retries and backs off as the
  anthropic one does. Its thinking is the ``reasoning_content`` / ``reasoning`` field such
  servers add, when there is one. The rate limit applies per call (this SDK has no middleware).
* ``OllamaProvider``: any model Ollama serves, through ``ollama.AsyncClient``; the student, or a
  larger local teacher. JSON output is asked for with the task's JSON Schema (``format``).
* ``OfflineTeacher`` / ``OfflineStudent``: for the demo and machines without keys or servers.
  The offline teacher answers with the task's reference rules; the offline student with the
  task's deliberately weak baseline (the widget task: always a table). Both say ``offline`` as
  provider, so every trace they make says so.

All are async because a capture process keeps hundreds of calls in flight on one event loop; a
call is I/O (seconds of waiting), not work. Providers never catch errors: a failed call raises,
and the capture loop decides between another attempt and a dead letter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import anthropic
import httpx
import httpx2
import ollama
import openai
import structlog
from httpx_aiohttp import AiohttpTransport
from tier3.consumers import metrics
from tier3.consumers.rate_limit import RateLimiter
from tier3.consumers.settings import CaptureSettings
from tier3.tasks.contract import ChatMessage, Task, context_of, split_system
from tier3.tasks.registry import configured_task

log = structlog.get_logger("tier3.capture")


@dataclass(frozen=True)
class Question:
    """What a provider is asked: the query, its context (a JSON document) and the messages the
    task rendered from them, which are what every provider sends."""

    query: str
    context: str
    messages: tuple[ChatMessage, ...]

    @classmethod
    def of(cls, task: Task, query: str, context: str) -> Question:
        """The question for a job's query and context (a JSON document), rendered by ``task``."""
        return cls(query, context, tuple(task.render(query, context_of(context))))

    def context_dict(self) -> dict[str, Any]:
        return context_of(self.context)

    @property
    def prompt(self) -> str:
        """The last user turn's text (what most tasks' prompt is)."""
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class Answer:
    """A provider's reply: the answer text, its thinking (if any) and the tokens it cost."""

    text: str
    thinking: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


class Provider(Protocol):
    name: str  # what traces record as provider: 'anthropic', 'ollama', 'offline'
    model: str

    async def answer(self, question: Question) -> Answer: ...

    async def aclose(self) -> None: ...


def _estimate_tokens(payload: Any) -> int:
    """About four characters a token: enough to reserve rate-limit budget before a call."""
    return max(1, len(json.dumps(payload, default=str)) // 4)


class AnthropicTeacher:
    """Claude with extended thinking, through the official SDK."""

    name = "anthropic"

    def __init__(
        self,
        api_key: str,
        model: str,
        *,
        thinking_budget: int = 2048,
        max_tokens: int = 4096,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        limiter: RateLimiter | None = None,
        max_connections: int = 1000,
    ) -> None:
        self.model = model
        self.thinking_budget = thinking_budget
        self.max_tokens = max_tokens
        self.limiter = limiter
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout_s,
            middleware=[self._each_attempt],
            # Keep-alive for every concurrent call, not the SDK's default 100, so hundreds of
            # calls in flight do not reconnect each time.
            http_client=anthropic.DefaultAioHttpClient(
                limits=type(anthropic.DEFAULT_CONNECTION_LIMITS)(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                )
            ),
        )

    async def _each_attempt(self, request: Any, call_next: Any) -> Any:
        if request.retries_taken:
            metrics.RETRIES.labels("http").inc()
        if self.limiter is not None:
            estimate = _estimate_tokens((request.json or {}).get("messages"))
            waited = await self.limiter.admit(estimate)
            metrics.RATE_LIMIT_WAIT.inc(waited)
        return await call_next(request)

    async def answer(self, question: Question) -> Answer:
        system, turns = split_system(list(question.messages))
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": turns,
        }
        if system is not None:
            request["system"] = system  # the Messages API takes the system prompt apart
        if self.thinking_budget:
            request["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        message = await self.client.messages.create(**request)
        thinking = "\n\n".join(b.thinking for b in message.content if b.type == "thinking")
        text = "".join(b.text for b in message.content if b.type == "text")
        usage = message.usage
        if self.limiter is not None:
            estimate = _estimate_tokens(request["messages"])
            self.limiter.settle(estimate, usage.input_tokens + usage.output_tokens)
        return Answer(text, thinking, usage.input_tokens, usage.output_tokens)

    async def aclose(self) -> None:
        await self.client.close()


class OpenAICompatibleTeacher:
    """A teacher behind an OpenAI-compatible chat completions API."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_tokens: int = 4096,
        json_output: bool = True,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        limiter: RateLimiter | None = None,
        max_connections: int = 1000,
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.json_output = json_output
        self.limiter = limiter
        limits = httpx2.Limits(max_connections=max_connections,
                               max_keepalive_connections=max_connections)
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "none",  # local servers want no key, the SDK wants one
            max_retries=max_retries,
            timeout=timeout_s,
            http_client=openai.DefaultAioHttpClient(limits=limits),
        )

    async def answer(self, question: Question) -> Answer:
        messages = list(question.messages)
        estimate = _estimate_tokens(messages)
        if self.limiter is not None:
            metrics.RATE_LIMIT_WAIT.inc(await self.limiter.admit(estimate))
        extra: dict[str, Any] = {}
        if self.json_output:
            extra["response_format"] = {"type": "json_object"}
        completion = await self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=self.max_tokens, **extra
        )
        message = completion.choices[0].message
        fields = message.model_extra or {}
        thinking = fields.get("reasoning_content") or fields.get("reasoning") or ""
        usage = completion.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        if self.limiter is not None:
            self.limiter.settle(estimate, input_tokens + output_tokens)
        return Answer(message.content or "", thinking, input_tokens, output_tokens)

    async def aclose(self) -> None:
        await self.client.close()


class OllamaProvider:
    """A model served by Ollama: the student, or a larger local teacher."""

    name = "ollama"

    def __init__(
        self,
        host: str | None,
        model: str,
        *,
        json_output: bool = True,
        think: bool = False,
        timeout_s: float = 120.0,
        max_connections: int = 1000,
        answer_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.json_output = json_output
        self.answer_schema = answer_schema
        self.think = think
        self.max_tokens = max_tokens  # Ollama's num_predict: a rambling model stops here
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self.client = ollama.AsyncClient(
            host=host, timeout=timeout_s, transport=AiohttpTransport(limits=limits)
        )

    async def answer(self, question: Question) -> Answer:
        # The task's JSON Schema when there is one; else plain JSON mode.
        response_format = (self.answer_schema or "json") if self.json_output else None
        response = await self.client.chat(
            model=self.model,
            messages=list(question.messages),
            format=response_format,
            think=self.think or None,
            options={"temperature": 0, **({"num_predict": self.max_tokens}
                                           if self.max_tokens else {})},
        )
        return Answer(
            response.message.content or "",
            response.message.thinking or "",
            response.prompt_eval_count or 0,
            response.eval_count or 0,
        )

    async def aclose(self) -> None:
        await self.client._client.aclose()  # ollama's AsyncClient has no public close


class OfflineTeacher:
    """The task's reference rules, in the teacher's voice. No network, no cost."""

    name = "offline"
    model = "reference-rules"

    def __init__(self, task: Task) -> None:
        self.task = task

    async def answer(self, question: Question) -> Answer:
        context = question.context_dict()
        answer = self.task.reference_answer(question.query, context)
        return Answer(json.dumps(answer), self.task.reference_thinking(question.query, context))

    async def aclose(self) -> None:
        return None


class OfflineStudent:
    """A deliberately weak student: the task's baseline answer (the widget task: the metric, but
    always a table). A task without a baseline gets an empty object, which it may not accept."""

    name = "offline"

    def __init__(self, task: Task) -> None:
        self.task = task
        self.model = f"{task.name}-baseline"

    async def answer(self, question: Question) -> Answer:
        baseline = self.task.baseline_answer
        answer = baseline(question.query, question.context_dict()) if baseline else {}
        return Answer(json.dumps(answer))

    async def aclose(self) -> None:
        return None


def build_teacher(settings: CaptureSettings, task: Task | None = None) -> Provider:
    """The configured teacher for ``task`` (default: the configured one); logs plainly when the
    offline one stands in."""
    task = task or configured_task()
    model = settings.teacher_model_name
    limiter = None
    if settings.teacher_requests_per_minute or settings.teacher_tokens_per_minute:
        limiter = RateLimiter(settings.teacher_requests_per_minute,
                              settings.teacher_tokens_per_minute)
    if settings.teacher_provider == "openai":
        assert settings.openai_base_url is not None  # settings validation guarantees it
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAICompatibleTeacher(
            settings.openai_base_url,
            model,
            api_key=key,
            max_tokens=settings.teacher_max_tokens,
            json_output=settings.json_output,
            max_retries=settings.teacher_max_retries,
            timeout_s=settings.teacher_timeout_s,
            limiter=limiter,
            max_connections=settings.concurrency * 2,
        )
    if settings.teacher_provider == "anthropic":
        assert settings.anthropic_api_key is not None  # settings validation guarantees it
        return AnthropicTeacher(
            settings.anthropic_api_key.get_secret_value(),
            model,
            thinking_budget=settings.thinking_budget,
            max_tokens=settings.teacher_max_tokens,
            base_url=settings.anthropic_base_url,
            max_retries=settings.teacher_max_retries,
            timeout_s=settings.teacher_timeout_s,
            limiter=limiter,
            max_connections=settings.concurrency * 2,
        )
    if settings.teacher_provider == "ollama":
        return OllamaProvider(settings.ollama_host, model, json_output=settings.json_output,
                              think=settings.thinking_budget > 0,
                              timeout_s=settings.teacher_timeout_s,
                              max_connections=settings.concurrency * 2,
                              answer_schema=dict(task.answer_schema))
    log.warning(
        "no teacher configured (ANTHROPIC_API_KEY unset): the OFFLINE reference-rules teacher "
        "stands in; every trace says teacher_provider=offline",
    )
    return OfflineTeacher(task)


def build_student(settings: CaptureSettings, task: Task | None = None) -> Provider:
    """The configured student for ``task`` (default: the configured one); logs plainly when the
    offline one stands in."""
    task = task or configured_task()
    if settings.student_provider == "ollama":
        return OllamaProvider(settings.ollama_host, settings.student_model,
                              json_output=settings.json_output,
                              timeout_s=settings.student_timeout_s,
                              max_connections=settings.concurrency * 2,
                              answer_schema=dict(task.answer_schema),
                              max_tokens=settings.student_max_tokens)
    log.warning(
        "no student configured (TIER3_OLLAMA_HOST unset): the OFFLINE baseline student "
        "stands in; every trace says student_provider=offline",
    )
    return OfflineStudent(task)
