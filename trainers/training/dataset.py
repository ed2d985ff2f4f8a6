"""The training set of one request, rebuilt exactly from what the request names.

A TrainingRequested event lists the query_ids of its dataset. The trainer rebuilds the examples
from exactly those ids and the latest trace of each (``traces_source``), in query_id order, so a
re-run of the same request trains on the same data. Ids whose trace was deleted (tombstoned) or
whose teacher answer is not valid JSON for the task are left out, and the manifest says which
and why, rather than teaching the student a malformed answer.

The held-out split is decided by a hash of the query_id alone, not by position or a random
draw: a query is in the evaluation split in every request that includes it, so a later run can
never train on what an earlier run was evaluated on.

Each example is a conversation in TRL's format: the prompt turns are the messages the teacher
was sent, exactly as the trace recorded them (``Trace.teacher_messages``), never rendered again,
so a changed prompt cannot make the student learn text the teacher never saw. Only a trace older
than schema version 3, which has no messages, is rendered with the configured task
(``tasks.contract.trace_messages``); the manifest counts those (``rendered_prompts``). The
assistant turn is the teacher's thinking in ``<think>…</think>`` followed by its answer, so the
student learns the reasoning, not only the verdict. The loss is on the assistant turn only
(see ``sft``). With ``thinking=False`` (``TIER3_TRAIN_THINKING=false``) the assistant turn is the
answer alone: sequences about a third as long, which is what lets a CPU train the real student
in minutes (``tier3 demo`` on a machine without a GPU); the manifest records the choice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from tier3.tasks.contract import ChatMessage, Task, trace_messages
from tier3.tasks.registry import configured_task

Split = Literal["train", "eval"]
MANIFEST_VERSION = 1


# The sampler's random draw hashes the bare query_id (``tier3.streams.processors.sampling``).
# Hashing it the same way here would put most randomly sampled queries in the held-out split
# and none of the rest, so the split hashes the id under its own salt: the draws are independent.
SPLIT_SALT = b"tier3-eval-split:"


def split_of(query_id: str, eval_share: float) -> Split:
    """The split a query belongs to: the same answer for the same id, on any machine."""
    digest = hashlib.sha256(SPLIT_SALT + query_id.encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if bucket < eval_share else "train"


def assistant_turn(thinking: str, answer: str) -> str:
    """What the student learns to say: the teacher's thinking, then its answer."""
    return f"<think>{thinking.strip()}</think>\n{answer.strip()}" if thinking.strip() else answer


def to_messages(
    trace: dict[str, Any], task: Task | None = None, thinking: bool = True
) -> list[ChatMessage]:
    """One example: the messages the teacher saw, then what the student learns to answer (the
    teacher's thinking first unless ``thinking`` is off)."""
    prompt = trace_messages(trace, task or configured_task())
    answer = assistant_turn(trace["teacher_thinking"] if thinking else "", trace["teacher_answer"])
    return [*prompt, ChatMessage(role="assistant", content=answer)]


@dataclass
class BuiltDataset:
    """The examples of one request, split, with the manifest that records how they were chosen."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def build_dataset(
    request: dict[str, Any],
    traces: dict[str, dict[str, Any]],
    eval_share: float,
    base_model: str,
    task: Task | None = None,
    thinking: bool = True,
) -> BuiltDataset:
    """The examples for ``request`` from ``traces`` (latest trace per query_id); ``task``
    (default: the configured one) renders only traces that carry no messages; ``thinking`` off
    trains the answer alone."""
    task = task or configured_task()
    built = BuiltDataset()
    included, excluded = [], []
    rendered = 0
    for query_id in sorted(set(request["query_ids"])):
        trace = traces.get(query_id)
        if trace is None:
            excluded.append({"query_id": query_id, "reason": "no live trace (deleted or missing)"})
            continue
        if not trace.get("teacher_answer_valid", True) or not trace["teacher_answer"].strip():
            excluded.append({"query_id": query_id, "reason": "teacher answer not valid"})
            continue
        split = split_of(query_id, eval_share)
        rendered += not trace.get("teacher_messages")
        example = {"query_id": query_id, "messages": to_messages(trace, task, thinking)}
        (built.eval if split == "eval" else built.train).append(example)
        included.append(
            {
                "query_id": query_id,
                "split": split,
                "trace_created_at": trace["created_at"],
                "object_uri": trace.get("object_uri", ""),
            }
        )
    built.manifest = {
        "manifest_version": MANIFEST_VERSION,
        "request_id": request["request_id"],
        "model": request["model"],
        "base_model": base_model,
        "task": task.name,
        "rendered_prompts": rendered,
        "thinking": thinking,
        "eval_share": eval_share,
        "split_rule": "sha256('tier3-eval-split:' + query_id)[:8] / 2**64 < eval_share → eval",
        "requested": len(set(request["query_ids"])),
        "train_examples": len(built.train),
        "eval_examples": len(built.eval),
        "examples": included,
        "excluded": excluded,
        "content_sha256": _content_digest(built),
    }
    return built


def _content_digest(built: BuiltDataset) -> str:
    """A digest of the exact examples, so two runs can prove they trained on the same data."""
    digest = hashlib.sha256()
    for example in (*built.train, *built.eval):
        digest.update(json.dumps(example, sort_keys=True).encode())
    return digest.hexdigest()
