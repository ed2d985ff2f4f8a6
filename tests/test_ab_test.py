"""Ratings per variant, the Mann-Whitney test, and the guard that rolls a worse student back."""

from __future__ import annotations

import random
import time

import pytest
from scipy.stats import mannwhitneyu
from tier3.schemas.registry import EXPERIENCE, FEEDBACK, MODEL_DEPLOYED
from tier3.streams.backend.ab_test import (
    FALLBACK,
    STUDENT,
    TEACHER,
    compare,
    guard_once,
    mann_whitney_u,
    ratings_by_variant,
)
from tier3.streams.backend.deployments import REASON_HEADER, DeploymentLog
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.topics import EXPERIENCES, TRAINING_RESULTS
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC

from tests.support.kafka_reading import read_all


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_matches_scipy_on_tied_ratings(seed):
    rng = random.Random(seed)
    a = [rng.choice([1, 2, 3, 4, 5, 5]) for _ in range(rng.randint(5, 80))]
    b = [rng.choice([2, 3, 4, 4, 5]) for _ in range(rng.randint(5, 80))]
    u, p = mann_whitney_u(a, b)
    expected = mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert u == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=1e-9)


def test_mann_whitney_on_identical_samples_finds_nothing():
    assert mann_whitney_u([3, 3, 3], [3, 3])[1] == 1.0


def experience(query_id: str, variant: str, at: int = 1_000) -> dict:
    return {"query_id": query_id, "timestamp": at, "model_variant": variant}


def rating(query_id: str, stars: int, at: int = 2_000) -> dict:
    return {"query_id": query_id, "timestamp": at, "rating": stars, "comment": None}


def test_ratings_join_by_query_and_the_latest_rating_counts():
    experiences = [
        experience("a", TEACHER),
        experience("b", STUDENT),
        experience("c", FALLBACK),
        experience("old", STUDENT, at=10),
    ]
    feedback = [
        rating("a", 5),
        rating("b", 1, at=2_000),
        rating("b", 4, at=3_000),  # the user changed their mind
        rating("c", 2),
        rating("old", 1),
        rating("unknown", 1),  # no experience: nothing to attribute it to
    ]
    assert ratings_by_variant(experiences, feedback, since_ms=100) == {
        TEACHER: [5],
        STUDENT: [4],
        FALLBACK: [2],
    }


def test_compare_needs_enough_ratings_and_a_significant_drop():
    few = compare({STUDENT: [1] * 5, TEACHER: [5] * 5}, min_ratings=30)
    assert few.p_value is None and not few.student_worse

    worse = compare({STUDENT: [2, 3] * 20, TEACHER: [4, 5] * 20}, min_ratings=30)
    assert worse.p_value < 0.001 and worse.student_worse
    assert worse.rating_by_variant == {STUDENT: 2.5, TEACHER: 4.5}

    better = compare({STUDENT: [4, 5] * 20, TEACHER: [2, 3] * 20}, min_ratings=30)
    assert better.p_value < 0.001 and not better.student_worse

    same = compare({STUDENT: [3, 4] * 20, TEACHER: [4, 3] * 20}, min_ratings=30)
    assert same.p_value > 0.5 and not same.student_worse


def deployment(name: str, at: int) -> dict:
    return {
        "request_id": "req-1",
        "model": "tier3-student",
        "ollama_name": name,
        "digest": "sha256:" + "a" * 64,
        "quantization": "q4_k_m",
        "gguf_uri": "file:///m.gguf",
        "manifest_uri": "file:///manifest.json",
        "eval_report_uri": "file:///report.md",
        "deployed_at": at,
        "action": "deploy",
    }


def publish_rated_traffic(producer, variant_stars, start_ms):
    for i, (variant, stars) in enumerate(variant_stars):
        qid = f"{variant}-{start_ms}-{i}"
        producer.send(
            EXPERIENCES,
            EXPERIENCE,
            qid,
            {
                "query_id": qid,
                "timestamp": start_ms + i,
                "user_id_hash": f"u{i}",
                "session_id_hash": "s",
                "query": "show revenue total",
                "context": "{}",
                "response": "{}",
                "model": variant,
                "model_variant": variant,
                "confidence": 0.5,
                "latency_ms": 10.0,
            },
        )
        producer.send(
            FEEDBACK_TOPIC,
            FEEDBACK,
            qid,
            {"query_id": qid, "timestamp": start_ms + i + 1, "rating": stars, "comment": None},
        )
    producer.flush()


def test_guard_rolls_back_a_student_rated_worse_and_keeps_a_good_one(kafka):
    producer = EventProducer(kafka)
    now = int(time.time() * 1000)
    producer.send_and_wait(TRAINING_RESULTS, MODEL_DEPLOYED, "tier3-student", deployment("v2", now))
    rng = random.Random(1)
    # Before the deployment the student was bad; that must not count against the new one.
    publish_rated_traffic(producer, [(STUDENT, 1)] * 40 + [(TEACHER, 5)] * 40, now - 100_000)
    good = [(STUDENT, rng.choice([4, 5])) for _ in range(40)]
    good += [(TEACHER, rng.choice([4, 5])) for _ in range(40)]
    publish_rated_traffic(producer, good, now + 10)

    result, rolled_back = guard_once(kafka, "tier3-student", min_ratings=30)
    assert not rolled_back and not result.student_worse
    assert result.arms[STUDENT].ratings == 40

    bad = [(STUDENT, rng.choice([1, 2, 3])) for _ in range(60)]
    publish_rated_traffic(producer, bad, now + 1_000)
    result, rolled_back = guard_once(kafka, "tier3-student", min_ratings=30)
    assert rolled_back and result.student_worse
    assert result.arms[STUDENT].ratings == 100
    assert DeploymentLog(kafka, "tier3-student").current() is None
    rollbacks = [r for r in read_all(kafka, TRAINING_RESULTS) if REASON_HEADER in r.headers]
    assert len(rollbacks) == 1
    assert b"A/B: student rated worse" in rollbacks[0].headers[REASON_HEADER]
