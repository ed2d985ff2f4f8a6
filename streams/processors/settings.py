"""The stream processors' settings: one class per processor, each a worker's whole configuration.

One source per setting: each is a field (default, description, ``TIER3_*`` variable), which the
command line turns into an option (``tier3.streams.cli.settings_options``). The module imports
no Faust, so ``tier3 --help`` stays fast and works without the streams extra.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.streams.kafka.topics import STUDENT_MODEL
from tier3.streams.processors.sampling import PolicySettings


class WorkerSettings(BaseSettings):
    """A Faust worker's group membership, logging and metrics."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    session_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds before the group gives a silent (crashed) worker's partitions to "
        "the others",
    )
    faust_log_level: str = Field("warning", description="Log level of Faust's own messages")
    metrics_port: int = Field(0, ge=0, description="Serve Prometheus metrics on this port (0: off)")


class SamplerSettings(PolicySettings, WorkerSettings):
    """Everything a sampler worker is set by: the policy's rules, its timing, the worker's own.

    One class, read from ``TIER3_*``; ``tier3 run sampler``'s options override its fields.
    """

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    sampling_timeout_s: float = Field(
        600.0, gt=0, description="Seconds an experience waits for its feedback"
    )
    dedupe_window_s: float = Field(
        3600.0, gt=0, description="Seconds a captured query is remembered against repeats"
    )


class CounterSettings(WorkerSettings):
    """Everything a counter worker is set by, read from ``TIER3_*``; ``tier3 run counter``'s
    options override its fields."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    min_traces: int = Field(100, ge=1, description="New traces that trigger training")
    student_model: str = Field(STUDENT_MODEL, description="The student model to train")
