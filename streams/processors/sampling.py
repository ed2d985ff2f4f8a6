"""The capture policy: which answered queries become capture jobs, and why.

The policy is a pure function of the query's two events, so that any process (the sampler, a
replay, a test) that sees the same events makes the same decision:

* **random**: a fixed share of queries (the seed's 15%). "Random" is a hash of the query_id,
  not a random number generator: the first 8 bytes of ``sha256(query_id)``, read as an unsigned
  integer and divided by 2**64, give a number uniform in [0, 1) that never changes for a query,
  so a replay or a second sampler decides the same way.
* **high_confidence**: every answer the backend was at least ``high_confidence`` sure of (the
  seed's "high-confidence queries": the teacher is likely right, so they make good examples).
* **low_rating** (off by default): answers the user rated ``low_rating`` or worse, to learn where
  the served model goes wrong. This rule alone needs the feedback; the two seed rules do not, so
  with the default policy the decision never depends on whether feedback came before the timeout
  (``Policy.needs_feedback`` says which case holds; the sampler decides at the experience then).

A query that several rules choose is captured once, with the first reason in the order above.
``enabled=False`` (``ENABLE_TIER3_CAPTURE=false``) chooses nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.streams.kafka.settings import CaptureSwitch

RANDOM = "random"
HIGH_CONFIDENCE = "high_confidence"
LOW_RATING = "low_rating"

_TWO_TO_64 = float(2**64)


@dataclass(frozen=True)
class Policy:
    """What the sampler captures."""

    random_rate: float = 0.15
    high_confidence: float | None = 0.9
    low_rating: int | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_rate <= 1.0:
            raise ValueError(f"random_rate must lie in [0, 1], not {self.random_rate}")
        if self.high_confidence is not None and not 0.0 <= self.high_confidence <= 1.0:
            raise ValueError(f"high_confidence must lie in [0, 1], not {self.high_confidence}")

    @property
    def needs_feedback(self) -> bool:
        """True when some rule in force reads the feedback (``low_rating``).

        When False, ``decide(experience, None)`` is already the final answer for every query:
        the sampler decides at the experience and lets the unchosen go without a table write.
        """
        return self.enabled and self.low_rating is not None


class PolicySettings(BaseSettings):
    """The policy's rules as the environment sets them (``TIER3_SAMPLE_RATE`` etc.).

    The on/off switch is not here: ``ENABLE_TIER3_CAPTURE`` has one reader, ``CaptureSwitch``,
    which ``policy()`` asks. A negative confidence or a rating of 0 turns that rule off, so a
    command line can turn off a rule the environment turned on.
    """

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    sample_rate: float = Field(
        0.15, ge=0, le=1, description="Share of queries captured at random, by query_id hash"
    )
    high_confidence: float | None = Field(
        0.9, ge=0, le=1,
        description="Capture every answer at least this confident (empty or negative: off)",
    )
    low_rating: int | None = Field(
        None, ge=1, le=5, description="Capture answers rated at most this (empty or 0: off)"
    )

    @field_validator("high_confidence", mode="before")
    @classmethod
    def _negative_is_off(cls, value: Any) -> Any:
        return None if _number(value) is not None and _number(value) < 0 else value

    @field_validator("low_rating", mode="before")
    @classmethod
    def _zero_is_off(cls, value: Any) -> Any:
        return None if _number(value) == 0 else value

    def policy(self) -> Policy:
        enabled = CaptureSwitch().enabled
        return Policy(self.sample_rate, self.high_confidence, self.low_rating, enabled)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def hash_fraction(query_id: str) -> float:
    """A number in [0, 1) fixed by the query_id: its place in the 'random' draw."""
    digest = hashlib.sha256(query_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / _TWO_TO_64


def decide(
    experience: dict[str, Any], feedback: dict[str, Any] | None, policy: Policy
) -> str | None:
    """The reason to capture this query, or None to let it go."""
    if not policy.enabled:
        return None
    if hash_fraction(experience["query_id"]) < policy.random_rate:
        return RANDOM
    if policy.high_confidence is not None and experience["confidence"] >= policy.high_confidence:
        return HIGH_CONFIDENCE
    low = policy.low_rating
    if low is not None and feedback is not None and feedback["rating"] <= low:
        return LOW_RATING
    return None


def capture_job(
    experience: dict[str, Any], feedback: dict[str, Any] | None, reason: str, created_at_ms: int
) -> dict[str, Any]:
    """The CaptureJob for an experience (and its feedback): what the sampler and replay emit."""
    return {
        "query_id": experience["query_id"],
        "created_at": created_at_ms,
        "reason": reason,
        "query": experience["query"],
        "context": experience["context"],
        "original_response": experience["response"],
        "original_model": experience["model"],
        "model_variant": experience["model_variant"],
        "confidence": experience["confidence"],
        "rating": feedback["rating"] if feedback else None,
    }
