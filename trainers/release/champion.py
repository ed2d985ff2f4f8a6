"""Champion against challenger: is the candidate worse than the student that serves now?

The gate's thresholds say whether a candidate is good enough in absolute terms; this says
whether shipping it would make things worse for users than the model they already get. Both
models answer the **same held-out queries**, so the comparison is paired: per query, did each
one agree with the teacher?

The test is **McNemar's exact test** on those paired outcomes. Only the discordant queries
carry information (``b``: the champion agreed and the candidate did not; ``c``: the reverse);
under "equally good" each discordant query is a fair coin, so ``b`` is Binomial(b + c, 1/2).
The one-sided p-value is P(X >= b), the chance of the candidate losing at least this often by
luck. A candidate is **worse beyond noise** when it loses more discordant queries than it wins
and that p-value is below ``alpha`` (default 0.05). Why this test: agreement is a yes/no per
query and the two models are measured on the same queries, which is exactly McNemar's design; a
paired test needs far fewer queries than comparing two independent rates (the champion's and
the candidate's successes are strongly correlated, the shared easy queries cancel out). The
exact binomial form is used because held-out sets are small (tens of queries), where the
chi-squared approximation is poor. It is a few lines of ``math.comb``, so the release stage does
not need scipy; the tests check it against ``scipy.stats.binomtest``.

The report also gives the size of the difference (points of agreement) with a paired bootstrap
95% interval (queries resampled with their pair of outcomes), so "by how much" is stated even
when the test cannot tell.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChampionComparison:
    """The candidate against the serving model on the same queries (agreement with the teacher)."""

    champion: str  # the serving model's Ollama name (or the base's, before any deployment)
    candidate: str
    queries: int
    champion_agreement: float
    candidate_agreement: float
    champion_only: int  # b: queries the champion got right and the candidate did not
    candidate_only: int  # c: the reverse
    p_value: float  # one-sided McNemar exact: P(candidate loses >= b of the b + c by chance)
    difference_ci: tuple[float, float]  # paired bootstrap 95% interval of candidate - champion
    alpha: float = 0.05

    @property
    def difference(self) -> float:
        """Candidate minus champion agreement, as a share (0.1 = 10 points)."""
        return self.candidate_agreement - self.champion_agreement

    @property
    def worse(self) -> bool:
        """Worse beyond noise: loses more discordant queries than it wins, with p < alpha."""
        return self.champion_only > self.candidate_only and self.p_value < self.alpha

    def summary(self) -> str:
        low, high = self.difference_ci
        verdict = "worse beyond noise" if self.worse else "not worse beyond noise"
        return (
            f"candidate {self.candidate_agreement:.1%} vs serving {self.champion} "
            f"{self.champion_agreement:.1%} agreement on the same {self.queries} queries: "
            f"{self.difference * 100:+.1f} points (95% CI {low * 100:+.1f} to {high * 100:+.1f}); "
            f"{self.candidate_only} won, {self.champion_only} lost; McNemar exact one-sided "
            f"p = {self.p_value:.3g}: {verdict} (alpha {self.alpha})"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "champion": self.champion,
            "candidate": self.candidate,
            "queries": self.queries,
            "champion_agreement": self.champion_agreement,
            "candidate_agreement": self.candidate_agreement,
            "difference_points": round(self.difference * 100, 2),
            "difference_ci_points": [round(x * 100, 2) for x in self.difference_ci],
            "champion_only": self.champion_only,
            "candidate_only": self.candidate_only,
            "test": "McNemar exact, one-sided (candidate worse)",
            "p_value": self.p_value,
            "alpha": self.alpha,
            "worse": self.worse,
        }


def mcnemar_exact_worse(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse: P(X >= b), X ~ Bin(b+c, ½)."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n)


def paired_bootstrap_ci(
    champion: Sequence[bool],
    candidate: Sequence[bool],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of candidate - champion agreement, resampling queries in pairs."""
    n = len(champion)
    if n == 0:
        return (0.0, 0.0)
    diffs = [int(b) - int(a) for a, b in zip(champion, candidate, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]


def compare_champion(
    champion: str,
    candidate: str,
    champion_agreed: Sequence[bool],
    candidate_agreed: Sequence[bool],
    *,
    alpha: float = 0.05,
) -> ChampionComparison:
    """Compare per-query agreement of the two models (same queries, same order)."""
    if len(champion_agreed) != len(candidate_agreed):
        raise ValueError("champion and candidate must answer the same queries")
    pairs = list(zip(champion_agreed, candidate_agreed, strict=True))
    b = sum(1 for a, c in pairs if a and not c)
    c = sum(1 for a, c in pairs if c and not a)
    n = len(pairs) or 1
    return ChampionComparison(
        champion=champion,
        candidate=candidate,
        queries=len(pairs),
        champion_agreement=sum(champion_agreed) / n,
        candidate_agreement=sum(candidate_agreed) / n,
        champion_only=b,
        candidate_only=c,
        p_value=mcnemar_exact_worse(b, c),
        difference_ci=paired_bootstrap_ci(champion_agreed, candidate_agreed),
        alpha=alpha,
    )
