"""Configuration shared by every tier3 process, read from the environment.

Every setting has an embedded default that works on a laptop: a local broker on 127.0.0.1:9092,
data under ``.tier3/`` in the working directory, offline providers. Production deployments set
``TIER3_*`` variables (or a ``.env`` file); secrets may come from files (``*_FILE`` variables).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.streams.kafka.errors import UsageError
from tier3.streams.telemetry.logs import LIBRARY_ROOT

LIBRDKAFKA_LOG = LIBRARY_ROOT.getChild("librdkafka")  # silent unless the program logs


def _read_secret_file(path: str | None) -> SecretStr | None:
    if not path:
        return None
    try:
        return SecretStr(Path(path).read_text().strip())
    except OSError as exc:
        raise UsageError(f"cannot read TIER3_SASL_PASSWORD_FILE {path}: {exc.strerror}") from exc


class KafkaSettings(BaseSettings):
    """How to reach the broker and name the topics."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_prefix: str = Field("tier3.", description="Prefix of every topic name.")
    partitions: int = Field(6, ge=1, description="Partitions of experiences/feedback/capture-jobs.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")
    framing: Literal["single-object", "confluent"] = Field(
        "single-object", description="Wire framing of Avro events."
    )
    schema_registry_url: str | None = Field(None, description="Registry URL (confluent framing).")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = Field("SCRAM-SHA-512", description="SASL mechanism when SASL is on.")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: str | None = Field(None, description="File holding the SASL password.")
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_legal(cls, value: str) -> str:
        legal = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= legal:
            raise ValueError("topic prefix may hold only letters, digits, '.', '_' and '-'")
        return value

    def password(self) -> SecretStr | None:
        return self.sasl_password or _read_secret_file(self.sasl_password_file)

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings common to producers, consumers and admin clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            # librdkafka's own log lines go through Python logging, like every tier3 log line,
            # instead of straight to stderr (where they would bury a command's one error line).
            "logger": LIBRDKAFKA_LOG,
        }
        if self.security_protocol.startswith("SASL"):
            password = self.password()
            if not self.sasl_username or password is None:
                raise UsageError(
                    f"TIER3_SECURITY_PROTOCOL={self.security_protocol} but TIER3_SASL_USERNAME "
                    "and TIER3_SASL_PASSWORD(_FILE) are not both set"
                )
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = password.get_secret_value()
        for key, value in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
        ):
            if value:
                config[key] = value
        return config

    def topic(self, name: str) -> str:
        """The full name of one of the design's topics (``experiences`` → ``tier3.experiences``)."""
        return f"{self.topic_prefix}{name}"


class LocalSettings(BaseSettings):
    """Where local state lives: the embedded broker, object storage, models."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".tier3"), description="Folder for local state (broker data, objects).")
    object_store_url: str | None = Field(
        None, description="Object storage root (file:// or s3://); default <home>/objects."
    )

    @cached_property
    def object_root(self) -> str:
        return self.object_store_url or (self.home.resolve() / "objects").as_uri()


class CaptureSwitch(BaseSettings):
    """The seed's on/off switch for trace capture."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    enabled: bool = Field(
        True,
        validation_alias=AliasChoices("ENABLE_TIER3_CAPTURE", "TIER3_ENABLE_CAPTURE"),
        description="Off makes publish() a no-op and the sampler emit no capture jobs.",
    )
