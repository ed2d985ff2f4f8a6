"""The TrainingRequested record and its identity, shared by everything that makes or checks one.

The counter (which fires at the threshold), ``tier3 train`` (the manual trigger) and the trainer
(which does each request once) must agree on it, so a request for the same model and the same
traces gets the same id however it was made; ``training_request`` is the one place the record is
built.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any, Literal

THRESHOLD = "threshold"
MANUAL = "manual"


def request_id(model: str, query_ids: Iterable[str]) -> str:
    """The stable id of a request to train ``model`` on exactly these traces."""
    text = "\n".join([model, *sorted(set(query_ids))])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def training_request(
    model: str,
    query_ids: Iterable[str],
    trigger: Literal["threshold", "manual"],
    requested_at_ms: int | None = None,
) -> dict[str, Any]:
    """The TrainingRequested record asking to train ``model`` on these traces (ids sorted)."""
    ids = sorted(set(query_ids))
    return {
        "request_id": request_id(model, ids),
        "model": model,
        "requested_at": int(time.time() * 1000) if requested_at_ms is None else requested_at_ms,
        "trigger": trigger,
        "trace_count": len(ids),
        "query_ids": ids,
    }
