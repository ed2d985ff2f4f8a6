"""A fake Ollama server on 127.0.0.1, for the real ``ollama`` SDK to talk to.

Non-streaming ``POST /api/chat`` and ``POST /api/generate`` answer as Ollama does (``message`` /
``response``, ``done``, ``prompt_eval_count``, ``eval_count``, durations in nanoseconds);
``format`` (``"json"`` or a JSON Schema) is logged and honoured by the default reply, which is
JSON anyway. ``think`` adds a ``thinking`` field. Model management, for the deploy stage:
``GET /api/tags``, ``POST /api/create`` (records the model, answers ``success``),
``POST /api/show``, ``DELETE /api/delete``, ``GET /api/version``. Like the real Ollama, it also
speaks OpenAI's chat completions at ``POST /v1/chat/completions`` (``reasoning`` carries the
thinking when ``think`` or ``reasoning_effort`` is asked for; errors in OpenAI's shape).

Usage::

    with OllamaServer(delay_s=0.2, models={"llama3.2:1b"}) as server:
        client = ollama.Client(host=server.url)
        ...
        server.requests        # every request body (path in "_path"), in arrival order
        server.created         # bodies of /api/create calls

When ``models`` is given, a chat or generate for another model gets Ollama's 404
(``model "x" not found``); ``/api/create`` adds to it. The answer comes from
``reply(prompt, body) -> text``; by default a weak widget answer (``widget_replies.student_reply``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.support.servers.fault import Fault, FaultPlan
from tests.support.servers.http_thread import ServerThread
from tests.support.servers.widget_replies import (
    MALFORMED_ANSWER,
    rough_tokens,
    student_reply,
    teacher_reply,
)

Reply = Callable[[str, dict[str, Any]], str]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class OllamaServer(ServerThread):
    """The fake Ollama API. ``faults`` injects failures; ``reply`` decides the answers."""

    def __init__(
        self,
        port: int = 0,
        delay_s: float = 0.0,
        faults: Iterable[Fault] = (),
        reply: Reply | None = None,
        models: Iterable[str] | None = None,
        keep_requests: bool = True,
    ) -> None:
        super().__init__(port, delay_s, keep_requests)
        self.faults = FaultPlan(faults)
        self.reply = reply or (lambda prompt, body: student_reply(prompt))
        self.models: set[str] | None = set(models) if models is not None else None
        self.created: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/create", self._create)
        app.router.add_post("/api/show", self._show)
        app.router.add_delete("/api/delete", self._delete)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        return app

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        self.record({**body, "_path": request.path})
        return body

    async def _openai_chat(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        messages = body.get("messages") or [{}]
        prompt = str(messages[-1].get("content", ""))
        if body.get("reasoning_effort"):
            body["think"] = True
        answer = await self._answer(body, prompt)
        if isinstance(answer, web.Response):
            message = json.loads(answer.body)["error"]
            headers = {k: v for k, v in answer.headers.items() if k.lower() == "retry-after"}
            error = {"error": {"message": message, "type": "server_error", "code": None}}
            return web.json_response(error, status=answer.status, headers=headers)
        thinking, text = answer
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["reasoning"] = thinking
        prompt_tokens, completion_tokens = rough_tokens(prompt), rough_tokens(text + thinking)
        return web.json_response(
            {
                "id": f"chatcmpl-{int(time.time() * 1000)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _answer(self, body: dict[str, Any], prompt: str) -> tuple[str, str] | web.Response:
        """(thinking, text) for a chat or generate request, or the error to answer with."""
        model = body.get("model", "")
        if self.models is not None and model not in self.models:
            return _error(404, f'model "{model}" not found, try pulling it first')
        started = time.perf_counter()
        await self.pause()
        body["_waited_s"] = time.perf_counter() - started
        fault = self.faults.take(prompt)
        if fault is not None and not fault.malformed:
            response = _error(fault.status, f"injected {fault.status}")
            if fault.retry_after is not None:
                response.headers["retry-after"] = f"{fault.retry_after:g}"
            return response
        text = MALFORMED_ANSWER if fault is not None else self.reply(prompt, body)
        thinking = teacher_reply(prompt)[0] if body.get("think") else ""
        return thinking, text

    def _done(self, body: dict[str, Any], prompt: str, text: str) -> dict[str, Any]:
        waited_ns = int(body.get("_waited_s", 0) * 1e9)
        return {
            "model": body.get("model", ""),
            "created_at": _now(),
            "done": True,
            "done_reason": "stop",
            "total_duration": waited_ns,
            "load_duration": 0,
            "prompt_eval_count": rough_tokens(prompt),
            "prompt_eval_duration": waited_ns // 4,
            "eval_count": rough_tokens(text),
            "eval_duration": waited_ns - waited_ns // 4,
        }

    async def _chat(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        messages = body.get("messages") or [{}]
        prompt = str(messages[-1].get("content", ""))
        answer = await self._answer(body, prompt)
        if isinstance(answer, web.Response):
            return answer
        thinking, text = answer
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return web.json_response({**self._done(body, prompt, text), "message": message})

    async def _generate(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        prompt = str(body.get("prompt", ""))
        answer = await self._answer(body, prompt)
        if isinstance(answer, web.Response):
            return answer
        thinking, text = answer
        reply = {**self._done(body, prompt, text), "response": text}
        if thinking:
            reply["thinking"] = thinking
        return web.json_response(reply)

    async def _tags(self, request: web.Request) -> web.Response:
        names = sorted(self.models or ())
        return web.json_response(
            {
                "models": [
                    {
                        "name": n,
                        "model": n,
                        "modified_at": _now(),
                        "size": 0,
                        "digest": "0" * 64,
                        "details": {"format": "gguf", "family": "llama"},
                    }
                    for n in names
                ]
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not body.get("model"):
            return _error(400, "model is required")
        self.created.append(body)
        if self.models is None:
            self.models = set()
        self.models.add(body["model"])
        return web.json_response({"status": "success"})

    async def _show(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = body.get("model", "")
        if self.models is not None and model not in self.models:
            return _error(404, f'model "{model}" not found')
        return web.json_response(
            {
                "modelfile": f"FROM {model}",
                "parameters": "",
                "template": "",
                "details": {"format": "gguf", "family": "llama"},
                "model_info": {},
                "modified_at": _now(),
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = body.get("model", "")
        if self.models is None or model not in self.models:
            return _error(404, f'model "{model}" not found')
        self.models.discard(model)
        return web.json_response({})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})
