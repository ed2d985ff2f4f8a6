"""The A/B comparison: user ratings per model variant, and whether the student is worse.

Each Experience records the arm that served it (``model_variant``: ``teacher``, ``student``,
or ``student-fallback`` when the student failed and the teacher answered instead, see
``router``); each Feedback carries a rating for a query_id. Joining the two by query_id gives
the ratings of each arm (the latest rating counts when a user rated twice).

The significance test is the **Mann-Whitney U test** (two-sided, normal approximation with tie
and continuity corrections, as ``scipy.stats.mannwhitneyu(method="asymptotic")`` computes it).
Ratings are ordinal 1-5 scores, not measurements, so a rank test fits them better than a t-test;
with dozens of ratings per arm the normal approximation is accurate. It needs only ``math.erfc``,
so the backend's process (where the guard may run) does not need scipy. The tests check it
against scipy.

The guard (``guard_once``) rolls the student back when, since its deployment, both arms have
enough ratings, the student's mean is lower and the difference is significant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tier3.schemas import DecodeError
from tier3.schemas.codec import Record
from tier3.schemas.registry import EXPERIENCE, FEEDBACK
from tier3.streams.backend.deployments import DeploymentLog
from tier3.streams.backend.router import FALLBACK, STUDENT, TEACHER
from tier3.streams.kafka.events import codec_of
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import EXPERIENCES
from tier3.streams.kafka.topics import FEEDBACK as FEEDBACK_TOPIC
from tier3.streams.telemetry.logs import library_logger

log = library_logger("tier3.ab_test")  # silent unless the backend configures logging

__all__ = ["FALLBACK", "STUDENT", "TEACHER", "ABResult", "compare", "guard_once"]


@dataclass(frozen=True)
class Arm:
    variant: str
    ratings: int
    mean: float | None


@dataclass(frozen=True)
class ABResult:
    """The comparison of the student arm against the teacher arm."""

    arms: dict[str, Arm]
    u_statistic: float | None
    p_value: float | None  # None: too few ratings in an arm to test
    min_ratings: int
    alpha: float

    @property
    def rating_by_variant(self) -> dict[str, float]:
        return {v: a.mean for v, a in self.arms.items() if a.mean is not None}

    @property
    def student_worse(self) -> bool:
        """True when the student's ratings are lower than the teacher's, significantly."""
        student, teacher = self.arms.get(STUDENT), self.arms.get(TEACHER)
        if self.p_value is None or student is None or teacher is None:
            return False
        assert student.mean is not None and teacher.mean is not None
        return student.mean < teacher.mean and self.p_value < self.alpha

    def summary(self) -> str:
        arms = ", ".join(
            f"{a.variant}: {a.ratings} ratings, mean {a.mean:.2f}"
            for a in self.arms.values()
            if a.mean is not None
        )
        p = "n/a (too few ratings)" if self.p_value is None else f"{self.p_value:.4g}"
        return f"{arms or 'no ratings'}; Mann-Whitney p = {p}"


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """U statistic of ``a`` and the two-sided p-value that ``a`` and ``b`` differ in location."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    n = n1 + n2
    rank_sum_a = 0.0
    tie_term = 0.0
    i = 0
    while i < n:
        j = i
        while j < n and pooled[j][0] == pooled[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum_a += mid_rank * sum(1 for k in range(i, j) if pooled[k][1] == 0)
        t = j - i
        tie_term += t**3 - t
        i = j
    u1 = rank_sum_a - n1 * (n1 + 1) / 2
    mean_u = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return u1, 1.0  # every value tied: no evidence of any difference
    z = max(abs(u1 - mean_u) - 0.5, 0.0) / math.sqrt(variance)
    return u1, min(1.0, math.erfc(z / math.sqrt(2)))


def ratings_by_variant(
    experiences: Iterable[Record], feedback: Iterable[Record], since_ms: int = 0
) -> dict[str, list[int]]:
    """Ratings of each arm: feedback joined to experiences (at or after ``since_ms``) by id."""
    variant_of = {
        e["query_id"]: e.get("model_variant", TEACHER)
        for e in experiences
        if e["timestamp"] >= since_ms
    }
    latest: dict[str, Record] = {}
    for f in feedback:
        if f["query_id"] in variant_of:
            seen = latest.get(f["query_id"])
            if seen is None or f["timestamp"] >= seen["timestamp"]:
                latest[f["query_id"]] = f
    ratings: dict[str, list[int]] = {}
    for query_id, f in latest.items():
        ratings.setdefault(variant_of[query_id], []).append(int(f["rating"]))
    return ratings


def compare(
    ratings: Mapping[str, Sequence[float]], *, min_ratings: int = 30, alpha: float = 0.05
) -> ABResult:
    """Compare the student arm with the teacher arm; test only with ``min_ratings`` in each."""
    arms = {v: Arm(v, len(r), sum(r) / len(r) if r else None) for v, r in sorted(ratings.items())}
    student, teacher = ratings.get(STUDENT, ()), ratings.get(TEACHER, ())
    u = p = None
    if len(student) >= min_ratings and len(teacher) >= min_ratings:
        u, p = mann_whitney_u(student, teacher)
    return ABResult(arms, u, p, min_ratings, alpha)


def read_ratings(
    settings: KafkaSettings, since_ms: int = 0, timeout: float = 60.0
) -> dict[str, list[int]]:
    """Ratings per arm from the experiences and feedback topics as they are now."""
    codec = codec_of(settings)

    def records(topic: str, event: str) -> Iterable[Record]:
        for msg in read_to_end(settings, topic, timeout):
            try:
                yield codec.decode(msg.value(), expect=event).record
            except DecodeError as exc:
                # Only read here; the stage that consumes the topic dead-letters it.
                log.warning("skipping undecodable event", topic=topic, reason=str(exc))

    return ratings_by_variant(
        records(EXPERIENCES, EXPERIENCE), list(records(FEEDBACK_TOPIC, FEEDBACK)), since_ms
    )


def guard_once(
    settings: KafkaSettings,
    model: str,
    *,
    min_ratings: int = 30,
    alpha: float = 0.05,
) -> tuple[ABResult, bool]:
    """Compare the arms since the current deployment; roll back if the student is worse.

    Returns the comparison and whether a rollback was made.
    """
    deployments = DeploymentLog(settings, model)
    current = deployments.current()
    if current is None:
        return compare({}, min_ratings=min_ratings, alpha=alpha), False
    result = compare(
        read_ratings(settings, since_ms=current.deployed_at), min_ratings=min_ratings, alpha=alpha
    )
    if not result.student_worse:
        return result, False
    deployments.rollback(reason=f"A/B: student rated worse than teacher ({result.summary()})")
    return result, True
