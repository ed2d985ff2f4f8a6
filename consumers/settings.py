"""Configuration of the capture consumers, read from the environment (``TIER3_*``).

Which teacher and student answer is a configuration change, never a code change: the provider
names pick an implementation in ``providers``. Left unset, the teacher is Claude when
``ANTHROPIC_API_KEY`` is set and the offline reference teacher otherwise; the student is Ollama
when ``TIER3_OLLAMA_HOST`` is set (by default the real base, ``cc-widget-selector-base``, which
``tier3 student register`` serves) and the offline heuristic student otherwise. The offline
choices are logged plainly and written into every trace, so nobody trains on them by mistake.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TeacherProvider = Literal["anthropic", "openai", "ollama", "offline"]
StudentProvider = Literal["ollama", "offline"]


class CaptureSettings(BaseSettings):
    """Everything ``tier3 run capture`` needs beyond the Kafka and local settings."""

    model_config = SettingsConfigDict(
        env_prefix="TIER3_", env_file=".env", extra="ignore", populate_by_name=True
    )

    group: str = Field("tier3-capture", description="Consumer group id of the capture consumers.")
    instance_id: str | None = Field(
        None,
        description="Static group membership id (group.instance.id): a restarted process with the "
        "same id takes its partitions back at once instead of after a rebalance.",
    )
    session_timeout_ms: int = Field(
        45000, ge=1000, description="How long the group waits for a silent member (ms)."
    )
    concurrency: int = Field(256, ge=1, description="Most jobs in flight in one process.")
    attempts: int = Field(3, ge=1, description="Attempts per job before its dead letter.")
    attempt_backoff_s: float = Field(1.0, ge=0, description="Pause before a job's next attempt.")
    shutdown_deadline_s: float = Field(30.0, ge=0, description="Time in-flight jobs get on stop.")
    commit_interval_s: float = Field(0.5, gt=0, description="How often done offsets are committed.")

    teacher_provider: TeacherProvider | None = Field(
        None, description="anthropic | openai | ollama | offline (default: anthropic if keyed)."
    )
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "TIER3_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(None, description="Anthropic API base URL override.")
    openai_base_url: str | None = Field(
        None, description="An OpenAI-compatible server's /v1 URL (vLLM, Ollama, a gateway)."
    )
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OPENAI_API_KEY", "TIER3_OPENAI_API_KEY")
    )
    teacher_model: str | None = Field(None, description="Teacher model (default per provider).")
    thinking_budget: int = Field(2048, ge=0, description="Thinking budget; 0: off.")
    teacher_max_tokens: int = Field(4096, ge=1, description="max_tokens of a teacher call.")
    teacher_max_retries: int = Field(4, ge=0, description="SDK retries on 429/529/5xx per call.")
    teacher_timeout_s: float = Field(120.0, gt=0, description="Timeout of one teacher request.")
    teacher_requests_per_minute: float | None = Field(
        None, gt=0, description="Client-side request rate limit of the teacher (none if unset)."
    )
    teacher_tokens_per_minute: float | None = Field(
        None, gt=0, description="Client-side token rate limit of the teacher (none if unset)."
    )

    student_provider: StudentProvider | None = Field(
        None, description="ollama | offline (default: ollama if TIER3_OLLAMA_HOST is set)."
    )
    ollama_host: str | None = Field(None, description="Ollama server URL.")
    student_model: str = Field(
        "cc-widget-selector-base",
        # TIER3_STUDENT_MODEL also names the trainer's logical model; capture's own name first.
        validation_alias=AliasChoices("TIER3_CAPTURE_STUDENT_MODEL", "TIER3_STUDENT_MODEL"),
        description="Student model served by Ollama (default: the untrained base, as `tier3 "
        "student register` serves it).",
    )
    student_timeout_s: float = Field(120.0, gt=0, description="Timeout of one student request.")
    student_max_tokens: int | None = Field(
        512, ge=1, description="Most tokens the student may generate per answer (num_predict)."
    )
    json_output: bool = Field(True, description="Ask Ollama for JSON output (the task wants JSON).")

    redact: bool = Field(True, description="Redact personal data and secrets from traces.")
    redact_patterns: dict[str, str] = Field(
        default_factory=dict,
        description='Extra redaction patterns as JSON {"name": "regex"}, added to the defaults.',
    )
    redact_defaults: bool = Field(True, description="Use the default patterns.")

    metrics_port: int | None = Field(None, description="Prometheus port (none: no endpoint).")

    @model_validator(mode="after")
    def _pick_providers(self) -> CaptureSettings:
        if self.teacher_provider is None:
            self.teacher_provider = "anthropic" if self.anthropic_api_key else "offline"
        if self.student_provider is None:
            self.student_provider = "ollama" if self.ollama_host else "offline"
        if self.teacher_provider == "anthropic" and self.anthropic_api_key is None:
            raise ValueError("TIER3_TEACHER_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
        if self.teacher_provider == "openai" and not self.openai_base_url:
            raise ValueError("TIER3_TEACHER_PROVIDER=openai needs TIER3_OPENAI_BASE_URL")
        if self.thinking_budget and self.teacher_max_tokens <= self.thinking_budget:
            raise ValueError("TIER3_TEACHER_MAX_TOKENS must exceed TIER3_THINKING_BUDGET")
        return self

    @property
    def teacher_model_name(self) -> str:
        if self.teacher_model:
            return self.teacher_model
        defaults = {"anthropic": "claude-sonnet-4-6", "ollama": "llama3.1:70b",
                    "openai": "llama3.1:70b"}
        return defaults.get(
            self.teacher_provider or "offline", "reference-rules"
        )
