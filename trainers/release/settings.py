"""The release stage's settings: one class, read from ``TIER3_RELEASE_*``; flags override it.

What a release does with a finished run (evaluate, gate, export, deploy) is set here once; the
commands (``tier3 eval``, ``deploy``, ``run release``, ...) take their options from these fields
through ``streams.cli.settings_options``. The gate's thresholds are one group inside it,
``thresholds``, which keeps its own ``TIER3_GATE_*`` variables (``trainers.release.gate``): they
are what a model must reach, read by everything that judges one.

The Ollama client is not a setting: it is a dependency, passed to ``Release`` by the command
that decided to deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.streams.kafka.topics import STUDENT_MODEL
from tier3.trainers.release.gate import GateThresholds
from tier3.trainers.release.ollama_deploy import DEFAULT_NAME

# The untrained base's name in Ollama; capture's default student (TIER3_CAPTURE_STUDENT_MODEL).
BASE_NAME = "cc-widget-selector-base"


class ReleaseSettings(BaseSettings):
    """How finished runs are evaluated and deployed (env: ``TIER3_RELEASE_<FIELD>``)."""

    model_config = SettingsConfigDict(
        env_prefix="TIER3_RELEASE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    student_model: str = Field(
        STUDENT_MODEL,
        validation_alias=AliasChoices("TIER3_STUDENT_MODEL", "TIER3_TRAIN_STUDENT_MODEL"),
        description="Logical student model whose runs and deployments to use",
    )
    ollama_name: str = Field(DEFAULT_NAME, description="The model's name in Ollama")
    base_name: str | None = Field(
        BASE_NAME,
        description="The untrained base as Ollama serves it (`tier3 student register`): the "
        "'before' of a served evaluation, and the champion until something is deployed",
    )
    ollama_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description='Extra Ollama model parameters for the served student, as JSON (e.g. '
        '{"num_thread": 1}: on a small shared CPU, ggml\'s spinning threads are slower than one)',
    )
    champion_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Significance level of the champion comparison (McNemar exact, one-sided)",
    )
    tolerance: float = Field(0.1, ge=0, description="Largest score difference that matches")
    schema_file: Path | None = Field(
        None, description="JSON Schema file answers must be valid against (unset: the task's)"
    )
    max_examples: int | None = Field(None, ge=1, description="Evaluate at most this many queries")
    max_new_tokens: int = Field(256, ge=1, description="Tokens the student may generate per reply")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Held-out queries generated together (unset: 128 on a GPU, 8 on a CPU)",
    )
    thresholds: GateThresholds = Field(
        default_factory=GateThresholds, description="The gate (TIER3_GATE_* variables)"
    )
