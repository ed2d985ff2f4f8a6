"""Before and after, as users would get it: the base, the serving model and the candidate, served.

A release with an Ollama server judges what would actually ship, not the checkpoint: the
candidate is exported (F16 GGUF), registered in Ollama quantized to q4_k_m under a candidate
name (``<ollama_name>-candidate``, so a candidate that fails never replaces the serving model),
and asked through Ollama's chat API exactly as the router asks it (``streams.backend.router.
ollama_chat``, the trace's recorded messages, greedy, no JSON grammar: what the router serves).
On the **same held-out queries** it also asks:

- **the base as served** (``cc-widget-selector-base``, registered by ``tier3 student register``
  from the untrained base GGUF): the "before";
- **the champion**: the student that serves now (the current ModelDeployed), or, before anything
  was deployed, the base it was trained from. The gate compares the candidate with it
  (``trainers.release.champion``);
- **the teacher**: its answers and latencies as the traces recorded them (the reference, so its
  agreement is 100% by definition; what it shows is its validity and its latency).

Every variant is scored by ``evaluate`` against the teacher's answers, so the numbers of one
table are comparable. User ratings come from feedback per router arm (``streams.ab_test``):
the teacher arm's belong to the teacher, the student arm's to the serving model; the base and
the candidate served no users, so they have none.

Passing the gate promotes the candidate: Ollama copies the candidate model to ``ollama_name``
(the same q4_k_m blob, no second quantization) and ModelDeployed is emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from tier3.schemas.codec import Record
from tier3.streams.backend.deployments import send_deployment
from tier3.streams.backend.router import ollama_chat
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.trainers.release.champion import ChampionComparison, compare_champion
from tier3.trainers.release.evaluate import (
    AnswerValidator,
    EvalMetrics,
    HeldOut,
    StudentReply,
    evaluate,
    replies_from,
)
from tier3.trainers.release.ollama_deploy import (
    Registered,
    deployment_record,
    register,
    served_digest,
    serving_template,
)

log = structlog.get_logger("tier3.served_eval")

BASE, CHAMPION, CANDIDATE, TEACHER = "base", "champion", "candidate", "teacher"


@dataclass
class Variant:
    """One model's answers to the held-out queries, scored against the teacher's."""

    role: str  # BASE, CHAMPION, CANDIDATE or TEACHER
    model: str  # its Ollama name, or the teacher's model
    metrics: EvalMetrics
    rating: float | None = None  # users' mean rating of this model, where feedback exists
    ratings: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "model": self.model,
            **self.metrics.headline(),
            "user_rating": self.rating,
            "user_ratings": self.ratings,
        }


@dataclass
class ServedEvaluation:
    """The candidate as served, beside the base, the champion and the teacher."""

    candidate: Registered
    variants: list[Variant] = field(default_factory=list)
    comparison: ChampionComparison | None = None

    def of(self, role: str) -> Variant | None:
        return next((v for v in self.variants if v.role == role), None)

    @property
    def metrics(self) -> EvalMetrics:
        """The candidate's metrics: what the EvalReport and the gate's thresholds judge."""
        found = self.of(CANDIDATE)
        assert found is not None
        return found.metrics


def ask_served(
    client: Any,
    name: str,
    examples: Sequence[HeldOut],
    *,
    max_new_tokens: int,
) -> list[StudentReply]:
    """``name``'s replies as Ollama serves them (greedy, at most ``max_new_tokens`` tokens)."""
    chat = ollama_chat(client, {"num_predict": max_new_tokens})
    return replies_from(lambda messages: chat(name, messages), examples)


def teacher_variant(
    examples: Sequence[HeldOut], model: str, validator: AnswerValidator, tolerance: float
) -> Variant:
    """The teacher's recorded answers and latencies, scored like every other variant."""
    replies = [StudentReply(e.teacher_answer, e.teacher_latency_ms) for e in examples]
    return Variant(TEACHER, model, evaluate(examples, replies, tolerance=tolerance,
                                            validator=validator))


def is_served(client: Any, name: str) -> bool:
    """Whether Ollama has a model called ``name``."""
    import ollama

    try:
        client.show(name)
    except ollama.ResponseError:
        return False
    return True


def evaluate_candidate(
    client: Any,
    examples: Sequence[HeldOut],
    candidate_gguf: str | Path,
    *,
    ollama_name: str,
    base_name: str | None,
    champion_name: str | None,
    validator: AnswerValidator,
    tolerance: float,
    max_new_tokens: int,
    teacher_model: str = "teacher",
    ratings: Any = None,  # streams.ab_test.ABResult
    alpha: float = 0.05,
    ollama_parameters: dict[str, Any] | None = None,
) -> ServedEvaluation:
    """Register the candidate (q4_k_m) and evaluate it, the base and the champion as served."""
    template, parameters = serving_template(candidate_gguf)
    candidate = register(
        client, candidate_gguf, f"{ollama_name}-candidate", template=template,
        parameters={**parameters, **(ollama_parameters or {})},
    )  # fmt: skip
    found = ServedEvaluation(candidate)
    asked: dict[str, EvalMetrics] = {}

    def served(role: str, name: str) -> Variant:
        if name not in asked:
            log.info("asking the served model", role=role, model=name, queries=len(examples))
            replies = ask_served(client, name, examples, max_new_tokens=max_new_tokens)
            asked[name] = evaluate(examples, replies, tolerance=tolerance, validator=validator)
        return Variant(role, name, asked[name])

    if base_name and is_served(client, base_name):
        found.variants.append(served(BASE, base_name))
    champion = champion_name if champion_name and is_served(client, champion_name) else None
    champion = champion or (base_name if found.of(BASE) else None)
    if champion is not None:
        found.variants.append(served(CHAMPION, champion))
    found.variants.append(served(CANDIDATE, candidate.ollama_name))
    found.variants.append(teacher_variant(examples, teacher_model, validator, tolerance))
    _attach_ratings(found, ratings, champion_deployed=champion_name is not None)
    if champion is not None:
        champ, cand = found.of(CHAMPION), found.of(CANDIDATE)
        assert champ is not None and cand is not None
        found.comparison = compare_champion(
            champ.model,
            cand.model,
            [r.selection_match for r in champ.metrics.rows],
            [r.selection_match for r in cand.metrics.rows],
            alpha=alpha,
        )
    return found


def _attach_ratings(found: ServedEvaluation, ratings: Any, *, champion_deployed: bool) -> None:
    arms = getattr(ratings, "arms", None) or {}
    for variant in found.variants:
        arm = {TEACHER: "teacher", CHAMPION: "student" if champion_deployed else None}.get(
            variant.role
        )
        if arm and arm in arms:
            variant.rating, variant.ratings = arms[arm].mean, arms[arm].ratings


def promote(
    settings: KafkaSettings,
    client: Any,
    evaluation: ServedEvaluation,
    *,
    ollama_name: str,
    request_id: str,
    model: str,
    gguf_uri: str,
    manifest_uri: str,
    eval_report_uri: str,
    reason: str,
    producer: EventProducer | None = None,
) -> Record:
    """Serve the candidate under ``ollama_name`` (Ollama copies it) and emit ModelDeployed."""
    client.copy(evaluation.candidate.ollama_name, ollama_name)
    shown = client.show(ollama_name)
    level = (shown.details.quantization_level if shown.details else None) or "unknown"
    registered = Registered(ollama_name, served_digest(shown.modelfile or ""), level)
    record = deployment_record(
        request_id=request_id,
        model=model,
        registered=registered,
        gguf_uri=gguf_uri,
        manifest_uri=manifest_uri,
        eval_report_uri=eval_report_uri,
    )
    send_deployment(settings, model, record, reason, producer)
    log.info("deployed", name=ollama_name, digest=registered.digest, quantization=level)
    return record
