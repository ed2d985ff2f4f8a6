"""The held-out split must not depend on how a query was sampled.

The sampler's random draw and the trainer's split both hash the query_id; if they hashed it the
same way, the randomly sampled queries would crowd the held-out split (every one below the eval
share) and evaluation would judge the student on a biased set.
"""

from __future__ import annotations

import uuid

from tier3.streams.processors.sampling import RANDOM, Policy, decide
from tier3.trainers.training.dataset import split_of


def test_the_eval_share_is_the_same_for_every_sampling_reason() -> None:
    policy = Policy()
    by_reason: dict[str, list[bool]] = {}
    for i in range(20_000):
        query_id = str(uuid.UUID(int=i * 7919 + 1))
        confidence = 0.95 if i % 3 == 0 else 0.5
        reason = decide({"query_id": query_id, "confidence": confidence}, None, policy)
        if reason:
            by_reason.setdefault(reason, []).append(split_of(query_id, 0.1) == "eval")
    for reason, held_out in by_reason.items():
        share = sum(held_out) / len(held_out)
        assert 0.07 < share < 0.13, f"{reason}: {share:.1%} held out instead of about 10%"
    assert len(by_reason[RANDOM]) > 1000
