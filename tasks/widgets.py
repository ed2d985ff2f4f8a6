"""The built-in task: widget selection for a dashboard, as the seed's backend does it.

A user asks for something ("show revenue by region for last quarter"); the model answers with
JSON naming the widgets to show, the primary metric and an appropriateness score. This module
holds the task's vocabulary, the answer's JSON Schema, the rules a competent model follows (the
offline teacher answers with them), how to read an answer, and a generator of its traffic; the
stages reach them through the contract (``task()``, registered as ``widgets``), never directly.

The prompt is the one setting of the task: ``TIER3_PROMPT_TEMPLATE``, a ``string.Template`` with
``$query`` and ``$context`` (the context as sorted JSON). Unset, ``render_prompt`` is the prompt.
Because the trace records the messages capture sent, a changed prompt reaches the dataset and the
evaluation through the traces, with no second place to change it.
"""

from __future__ import annotations

import json
import random
from string import Template
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.tasks.contract import ChatMessage, Context, Query, Task, load_json_answer

METRICS = ("revenue", "active users", "latency", "error rate", "orders", "churn", "signups", "cost")
# What the user wants to see → the widget that shows it best.
VIEWS = {
    "over time": "line_chart",
    "trend": "line_chart",
    "by region": "bar_chart",
    "by product": "bar_chart",
    "share by channel": "pie_chart",
    "breakdown by plan": "pie_chart",
    "right now": "kpi_card",
    "total": "kpi_card",
    "top accounts": "table",
    "on a map": "geo_map",
}
WIDGETS = ("line_chart", "bar_chart", "pie_chart", "kpi_card", "table", "geo_map", "alert_list")
PERIODS = ("for last quarter", "this week", "for the last 30 days", "today", "year to date", "")
VERBS = ("show", "show me", "I need", "plot", "give me", "display")
PAGES = ("sales", "ops", "growth", "finance", "support")

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["widgets", "primary_metric", "appropriateness"],
    "properties": {
        "widgets": {
            "type": "array",
            "items": {"type": "string", "enum": list(WIDGETS)},
            "minItems": 1,
            "maxItems": 3,
        },
        "primary_metric": {"type": "string"},
        "appropriateness": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}


def random_query(rng: random.Random) -> Query:
    metric = rng.choice(METRICS)
    view = rng.choice(list(VIEWS))
    text = " ".join(w for w in (rng.choice(VERBS), metric, view, rng.choice(PERIODS)) if w)
    context = {
        "page": rng.choice(PAGES),
        "alerts_open": rng.random() < 0.2,
        "screen": rng.choice(("desktop", "mobile")),
    }
    return Query(text, context)


def reference_answer(query: str, context: Context) -> dict[str, Any]:
    """The answer a competent model gives: the rules the offline teacher follows."""
    metric = next((m for m in METRICS if m in query), "unknown")
    widgets = [w for phrase, w in VIEWS.items() if phrase in query][:1] or ["table"]
    if context.get("alerts_open") and metric in ("latency", "error rate"):
        widgets.append("alert_list")
    score = 0.9 if metric != "unknown" else 0.4
    if context.get("screen") == "mobile" and widgets[0] in ("table", "geo_map"):
        score -= 0.2
    return {"widgets": widgets, "primary_metric": metric, "appropriateness": round(score, 2)}


def baseline_answer(query: str, context: Context) -> dict[str, Any]:
    """A deliberately weak answer (the offline student's): the metric, but always a table."""
    metric = next((m for m in METRICS if m in query.lower()), "unknown")
    return {"widgets": ["table"], "primary_metric": metric, "appropriateness": 0.5}


def reference_thinking(query: str, context: Context) -> str:
    """The reasoning behind ``reference_answer``, in the teacher's voice."""
    answer = reference_answer(query, context)
    steps = [
        f"The user asks: {query!r} on the {context.get('page', 'unknown')} page.",
        f"The metric they care about is {answer['primary_metric']}.",
        f"The view they describe is best shown as a {answer['widgets'][0]}.",
    ]
    if "alert_list" in answer["widgets"]:
        steps.append("Alerts are open and the metric is operational, so add the alert list.")
    if context.get("screen") == "mobile":
        steps.append("On a mobile screen dense widgets are less appropriate.")
    steps.append(f"Appropriateness: {answer['appropriateness']}.")
    return " ".join(steps)


def render_prompt(query: str, context: dict[str, Any] | str) -> str:
    """The user turn: the query with its context, as teacher, student and trainer all see it."""
    ctx = context if isinstance(context, str) else json.dumps(context, sort_keys=True)
    return (
        "Select dashboard widgets for this request. Answer with JSON only: "
        '{"widgets": [...], "primary_metric": "...", "appropriateness": 0..1}.\n'
        f"Request: {query}\nContext: {ctx}"
    )


def parse_answer(text: str) -> dict[str, Any] | None:
    """The answer as a dict if it is valid against ``ANSWER_SCHEMA``, else None."""
    answer = load_json_answer(text)
    return answer if is_valid_answer(answer) else None


def is_valid_answer(answer: Any) -> bool:
    """Validate against ``ANSWER_SCHEMA`` without a schema library on the hot path."""
    if not isinstance(answer, dict) or set(answer) != set(ANSWER_SCHEMA["required"]):
        return False
    widgets, metric, score = answer["widgets"], answer["primary_metric"], answer["appropriateness"]
    return (
        isinstance(widgets, list)
        and 1 <= len(widgets) <= 3
        and all(w in WIDGETS for w in widgets)
        and isinstance(metric, str)
        and isinstance(score, int | float)
        and not isinstance(score, bool)
        and 0 <= score <= 1
    )


def same_selection(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same set of widgets: their order does not matter to a dashboard."""
    s, t = a.get("widgets"), b.get("widgets")
    return isinstance(s, list) and isinstance(t, list) and set(map(str, s)) == set(map(str, t))


def appropriateness(answer: dict[str, Any]) -> float | None:
    """The answer's score: its appropriateness (the router reports it as confidence)."""
    value = answer.get("appropriateness")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class WidgetTaskSettings(BaseSettings):
    """The widget task's one setting: its prompt (env ``TIER3_PROMPT_TEMPLATE``)."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    prompt_template: str | None = Field(
        None,
        description="The prompt as a string.Template with $query and $context (sorted JSON); "
        "default: the widget task's own prompt (tier3.tasks.widgets.render_prompt).",
    )


def task(settings: WidgetTaskSettings | None = None) -> Task:
    """The widget task, with the configured prompt: what ``TIER3_TASK=widgets`` loads."""
    template = (settings or WidgetTaskSettings()).prompt_template

    def messages(query: str, context: Context) -> list[ChatMessage]:
        if template is None:
            prompt = render_prompt(query, dict(context))
        else:
            ctx = json.dumps(dict(context), sort_keys=True)
            prompt = Template(template).safe_substitute(query=query, context=ctx)
        return [ChatMessage(role="user", content=prompt)]

    return Task(
        name="widgets",
        messages=messages,
        answer_schema=ANSWER_SCHEMA,
        parse=parse_answer,
        agree=same_selection,
        score=appropriateness,
        reference_answer=reference_answer,
        reference_thinking=reference_thinking,
        baseline_answer=baseline_answer,
        random_query=random_query,
    )
