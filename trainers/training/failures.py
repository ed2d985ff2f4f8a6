"""Why a training run stopped: one exception type carrying what TrainingFailed reports.

Each stage raises ``TrainingError`` with its stage name and a reason an operator can act on;
the consumer turns it into a TrainingFailed event. Anything else that escapes a stage is
reported the same way with its exception type, so no failure is ever silent.
"""

from __future__ import annotations

from typing import Literal

Stage = Literal["dataset", "model", "train", "save"]


class TrainingError(Exception):
    """A run that cannot finish, with the stage it stopped in and why."""

    def __init__(self, stage: Stage, reason: str, error_type: str = "precondition") -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.error_type = error_type
