"""What the fake servers answer by default: the widget task's reference rules, read off the prompt.

The prompt is ``tier3.tasks.widgets.render_prompt``'s (``Request: ...`` and ``Context: ...``
lines), so a fake teacher answers as a competent model would (``reference_answer``) and a fake
student answers a little worse (it always picks a table), which gives evaluation something to
measure. A prompt that is not the widget task gets a fixed valid answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tier3.tasks.widgets import reference_answer, reference_thinking

_REQUEST = re.compile(r"^Request: (.*)$", re.MULTILINE)
_CONTEXT = re.compile(r"^Context: (.*)$", re.MULTILINE)


def task_of(prompt: str) -> tuple[str, dict[str, Any]]:
    """The (query, context) a widget prompt carries; ("", {}) if it is not one."""
    request, context = _REQUEST.search(prompt), _CONTEXT.search(prompt)
    query = request.group(1) if request else ""
    try:
        ctx = json.loads(context.group(1)) if context else {}
    except json.JSONDecodeError:
        ctx = {}
    return query, ctx if isinstance(ctx, dict) else {}


def teacher_reply(prompt: str) -> tuple[str, str]:
    """(thinking, answer text) of a competent teacher."""
    query, context = task_of(prompt)
    return reference_thinking(query, context), json.dumps(reference_answer(query, context))


def student_reply(prompt: str) -> str:
    """A weaker answer: the right metric, but always a table."""
    query, context = task_of(prompt)
    answer = reference_answer(query, context)
    answer["widgets"] = ["table"]
    answer["appropriateness"] = 0.5
    return json.dumps(answer)


MALFORMED_ANSWER = "I would probably show a bar chart here, but it depends on the data."


def rough_tokens(text: str) -> int:
    """About four characters a token, as usage numbers only need to be plausible."""
    return max(1, len(text) // 4)
