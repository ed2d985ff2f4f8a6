"""A fake Anthropic Messages API on 127.0.0.1, for the real ``anthropic`` SDK to talk to.

``POST /v1/messages`` (non-streaming) answers like the real API: a ``message`` with a
``thinking`` block (when the request enables extended thinking) and a ``text`` block, ``usage``
with input and output tokens, and the API's error shapes (``rate_limit_error`` with
``retry-after``, ``api_error``, ``overloaded_error`` for 529). A request without ``x-api-key``
gets a 401.

Usage::

    with AnthropicServer(delay_s=1.0, faults=[Fault(429, retry_after=0.2)]) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="test")
        ...
        server.requests   # every request body, in arrival order
        server.faults.add(Fault(500, match="revenue", times=None))

The answer comes from ``reply(prompt, body) -> (thinking, text)``; by default the widget task's
reference rules (``widget_replies.teacher_reply``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from tests.support.servers.fault import Fault, FaultPlan
from tests.support.servers.http_thread import ServerThread
from tests.support.servers.widget_replies import MALFORMED_ANSWER, rough_tokens, teacher_reply

Reply = Callable[[str, dict[str, Any]], tuple[str, str]]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def prompt_of(body: dict[str, Any]) -> str:
    """The text of the last user turn (string content or text blocks)."""
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content", "")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if isinstance(b, dict))


def error_response(status: int, message: str, retry_after: float | None = None) -> web.Response:
    error_type = _ERROR_TYPES.get(status, "api_error")
    headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return web.json_response(body, status=status, headers=headers)


class AnthropicServer(ServerThread):
    """The fake Messages API. ``faults`` injects failures; ``reply`` decides the answers."""

    def __init__(
        self,
        port: int = 0,
        delay_s: float = 0.0,
        faults: Iterable[Fault] = (),
        reply: Reply | None = None,
        keep_requests: bool = True,
    ) -> None:
        super().__init__(port, delay_s, keep_requests)
        self.faults = FaultPlan(faults)
        self.reply = reply or (lambda prompt, body: teacher_reply(prompt))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/messages", self._messages)
        return app

    async def _messages(self, request: web.Request) -> web.Response:
        if not request.headers.get("x-api-key") and not request.headers.get("authorization"):
            return error_response(401, "x-api-key header is required")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return error_response(400, "body is not JSON")
        self.record(body)
        prompt = prompt_of(body)
        await self.pause()
        fault = self.faults.take(prompt)
        if fault is not None and not fault.malformed:
            return error_response(fault.status, f"injected {fault.status}", fault.retry_after)
        thinking, text = self.reply(prompt, body)
        if fault is not None:
            text = MALFORMED_ANSWER
        return web.json_response(self.message(body, prompt, thinking, text))

    @staticmethod
    def message(body: dict[str, Any], prompt: str, thinking: str, text: str) -> dict[str, Any]:
        thinking_on = (body.get("thinking") or {}).get("type") == "enabled"
        content: list[dict[str, Any]] = []
        if thinking_on:
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": uuid.uuid4().hex}
            )
        content.append({"type": "text", "text": text})
        output_tokens = rough_tokens(text) + (rough_tokens(thinking) if thinking_on else 0)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-test"),
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": rough_tokens(prompt),
                "output_tokens": output_tokens,
            },
        }
