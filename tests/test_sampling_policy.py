"""The capture policy on its own: deterministic per query_id, the seed's rates, its switches."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tier3.streams.demo.simulate import simulate
from tier3.streams.processors.sampling import (
    HIGH_CONFIDENCE,
    LOW_RATING,
    RANDOM,
    Policy,
    PolicySettings,
    decide,
    hash_fraction,
)


def experience(query_id: str, confidence: float = 0.5) -> dict:
    return {"query_id": query_id, "confidence": confidence}


def ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in range(n)]


def test_hash_fraction_is_a_fixed_number_in_the_unit_interval() -> None:
    values = [hash_fraction(q) for q in ids(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [hash_fraction(q) for q in ids(1000)]
    assert len(set(values)) == 1000


def test_random_share_is_fifteen_percent_of_many_queries() -> None:
    chosen = [decide(experience(q, 0.0), None, Policy()) for q in ids(20_000)]
    share = chosen.count(RANDOM) / len(chosen)
    assert 0.14 < share < 0.16  # binomial sd is 0.25%: four of them each side


def test_high_confidence_answers_are_always_captured() -> None:
    policy = Policy(random_rate=0.0, high_confidence=0.9)
    assert decide(experience("a", 0.9), None, policy) == HIGH_CONFIDENCE
    assert decide(experience("a", 0.97), None, policy) == HIGH_CONFIDENCE
    assert decide(experience("a", 0.8999), None, policy) is None
    assert decide(experience("a", 1.0), None, Policy(random_rate=0.0, high_confidence=None)) is None


def test_random_wins_when_both_rules_choose() -> None:
    query_id = next(q for q in ids(100) if hash_fraction(q) < 0.15)
    assert decide(experience(query_id, 0.99), None, Policy()) == RANDOM


def test_low_rating_rule_needs_feedback_and_is_off_by_default() -> None:
    policy = Policy(random_rate=0.0, high_confidence=None, low_rating=2)
    assert decide(experience("q"), {"rating": 2}, policy) == LOW_RATING
    assert decide(experience("q"), {"rating": 3}, policy) is None
    assert decide(experience("q"), None, policy) is None
    assert decide(experience("q"), {"rating": 1}, Policy(random_rate=0.0)) is None


def test_capture_switch_off_chooses_nothing() -> None:
    off = Policy(random_rate=1.0, high_confidence=0.0, enabled=False)
    assert all(decide(experience(q, 1.0), None, off) is None for q in ids(100))


def test_policy_rejects_rates_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="random_rate"):
        Policy(random_rate=1.5)
    with pytest.raises(ValueError, match="high_confidence"):
        Policy(high_confidence=-0.1)


def test_settings_read_the_seed_switch_and_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PolicySettings().policy() == Policy()
    monkeypatch.setenv("ENABLE_TIER3_CAPTURE", "false")
    monkeypatch.setenv("TIER3_SAMPLE_RATE", "0.3")
    monkeypatch.setenv("TIER3_HIGH_CONFIDENCE", "0.95")
    assert PolicySettings().policy() == Policy(0.3, 0.95, None, enabled=False)


def test_simulated_traffic_is_sampled_at_about_the_seed_rates() -> None:
    experiences = [e.record for e in simulate(3000, seed=5) if e.event == "Experience"]
    reasons = [decide(e, None, Policy()) for e in experiences]
    high = sum(e["confidence"] >= 0.9 for e in experiences)
    assert reasons.count(RANDOM) == sum(hash_fraction(e["query_id"]) < 0.15 for e in experiences)
    assert 0.12 < reasons.count(RANDOM) / len(experiences) < 0.18
    # High-confidence answers the random draw did not already take.
    assert reasons.count(HIGH_CONFIDENCE) == sum(
        e["confidence"] >= 0.9 and hash_fraction(e["query_id"]) >= 0.15 for e in experiences
    )
    assert high > 0


@given(
    query_id=st.text(min_size=1, max_size=40),
    confidence=st.floats(0, 1),
    rating=st.one_of(st.none(), st.integers(1, 5)),
    rate=st.floats(0, 1),
)
def test_decision_depends_only_on_its_inputs(
    query_id: str, confidence: float, rating: int | None, rate: float
) -> None:
    policy = Policy(random_rate=rate, high_confidence=0.9, low_rating=1)
    feedback = None if rating is None else {"rating": rating}
    first = decide(experience(query_id, confidence), feedback, policy)
    assert first == decide(experience(query_id, confidence), feedback, policy)
    assert first in (None, RANDOM, HIGH_CONFIDENCE, LOW_RATING)
    if rate == 1.0:
        assert first == RANDOM
