"""The identity of a training request, shared by everything that makes or checks one.

The counter (which fires at the threshold), ``tier3 train`` (the manual trigger) and the trainer
(which does each request once) must agree on it, so a request for the same model and the same
traces gets the same id however it was made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def request_id(model: str, query_ids: Iterable[str]) -> str:
    """The stable id of a request to train ``model`` on exactly these traces."""
    text = "\n".join([model, *sorted(set(query_ids))])
    return hashlib.sha256(text.encode()).hexdigest()[:32]
