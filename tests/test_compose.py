"""docker-compose.yml and the Dockerfile, checked without Docker (no engine on these machines):
the services the design names, Kafka in KRaft mode, a scalable capture group, a GPU for the
trainer, start order through health checks, and — the part that breaks silently — every tier3
command and every TIER3_* variable being one tier3 really has."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
TIER3_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("tier3")}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The modules that hold tier3's settings classes (each read from TIER3_* variables).
SETTINGS_MODULES = [
    "tier3.streams.kafka.settings",
    "tier3.streams.processors.sampling",
    "tier3.streams.processors.settings",
    "tier3.streams.backend.router",
    "tier3.consumers.settings",
    "tier3.trainers.training.settings",
    "tier3.trainers.release.gate",
    "tier3.trainers.release.settings",
]


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _settings_variables() -> set[str]:
    """Every environment variable a tier3 settings class reads."""
    for module in SETTINGS_MODULES:
        importlib.import_module(module)
    names = set()
    for cls in _subclasses(BaseSettings):
        if not cls.__module__.startswith("tier3."):
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {c.upper() for c in alias.choices if isinstance(c, str)}
            elif isinstance(alias, str):
                names.add(alias.upper())
            else:
                names.add(f"{prefix}{field_name}".upper())
    return names


def _cli() -> Any:
    from tier3.streams.cli import main as cli

    cli._load_plugins()  # what `tier3` does at start: the stages' commands join the app
    return typer.main.get_command(cli.app)


CLI = _cli()


def _command_variables(group: Any) -> set[str]:
    """Every environment variable a tier3 command option reads (typer's envvar=...)."""
    names = set()
    for param in group.params:
        envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
        names |= {e for e in envvars if e}
    for sub in getattr(group, "commands", {}).values():
        names |= _command_variables(sub)
    return names


def _source_variables() -> set[str]:
    """TIER3_* names read straight from os.environ (logging, the broker's port, ...)."""
    names = set()
    for folder in ("schemas", "streams", "consumers", "trainers"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"[\"'](TIER3_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


KNOWN = _settings_variables() | _command_variables(CLI) | _source_variables()


def test_the_design_services_are_all_there() -> None:
    assert {
        "kafka",
        "minio",
        "ollama",
        "topic-init",
        "sampler",
        "counter",
        "capture",
        "trainer",
    } <= set(SERVICES)


def test_kafka_runs_in_kraft_mode() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@kafka:")
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"  # tier3 creates them
    assert "zookeeper" not in (ROOT / "docker-compose.yml").read_text().lower()
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_every_tier3_service_reaches_kafka_where_it_advertises() -> None:
    for name, service in TIER3_SERVICES.items():
        assert service["environment"]["TIER3_BOOTSTRAP_SERVERS"] == "kafka:9092", name


def test_capture_is_a_scalable_group_and_the_trainer_has_a_gpu() -> None:
    assert SERVICES["capture"]["deploy"]["replicas"] >= 2
    assert "container_name" not in SERVICES["capture"]  # a fixed name would forbid scaling
    devices = SERVICES["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


def test_images_are_pinned_or_official() -> None:
    assert SERVICES["kafka"]["image"] == "apache/kafka:4.1.1"  # the version tests run against
    assert SERVICES["minio"]["image"].startswith("minio/minio")
    assert SERVICES["ollama"]["image"].startswith("ollama/ollama")


@pytest.mark.parametrize("name", sorted(TIER3_SERVICES))
def test_each_tier3_service_runs_a_real_tier3_command(name: str) -> None:
    args = list(TIER3_SERVICES[name]["command"])
    command: Any = CLI
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    # typer vendors its own click, so a group is told apart by having subcommands.
    assert not hasattr(command, "commands"), f"{name}: {TIER3_SERVICES[name]['command']}"
    options = {o for p in command.params for o in p.opts}
    for arg in args:
        if arg.startswith("--"):
            assert arg in options, f"{name}: {command.name} has no option {arg}"


@pytest.mark.parametrize("name", sorted(TIER3_SERVICES))
def test_every_tier3_variable_is_one_tier3_reads(name: str) -> None:
    env = TIER3_SERVICES[name]["environment"]
    unknown = {k for k in env if k.startswith("TIER3_") and k not in KNOWN}
    assert not unknown, f"{name} sets variables no tier3 setting reads: {sorted(unknown)}"


def test_the_known_variables_are_found() -> None:
    # The check above means something only if the discovery finds the real names.
    assert {
        "TIER3_BOOTSTRAP_SERVERS",
        "TIER3_SASL_PASSWORD_FILE",
        "TIER3_OBJECT_STORE_URL",
        "TIER3_OLLAMA_HOST",
        "TIER3_SAMPLE_RATE",
        "TIER3_MIN_TRACES",
        "TIER3_LOG_JSON",
        "TIER3_TRAIN_BASE_MODEL",
        "ENABLE_TIER3_CAPTURE",
    } <= KNOWN
    assert "TIER3_BOOTSTRAP_SERVER" not in KNOWN


def test_start_order_goes_through_health_checks() -> None:
    for name, service in SERVICES.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{dependency} has no healthcheck"
            else:
                assert condition == "service_completed_successfully"
                assert SERVICES[dependency].get("restart") == "no", f"{dependency} is a one-shot"
    for name in ("sampler", "counter", "capture", "trainer"):
        needs = SERVICES[name]["depends_on"]
        assert needs["topic-init"]["condition"] == "service_completed_successfully", name
        assert needs["kafka"]["condition"] == "service_healthy", name
    assert SERVICES["topic-init"]["command"] == ["topics", "create"]


def test_long_running_stages_serve_metrics_and_are_health_checked_on_them() -> None:
    for name in ("sampler", "counter", "capture"):
        service = SERVICES[name]
        assert "--metrics-port" in service["command"]
        port = service["command"][service["command"].index("--metrics-port") + 1]
        assert f":{port}/metrics" in " ".join(service["healthcheck"]["test"])


def test_each_image_is_built_with_the_extras_its_stage_needs() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    needs = {"sampler": "streams", "counter": "streams", "capture": "capture", "trainer": "train"}
    for name, service in TIER3_SERVICES.items():
        chosen = set(service["build"]["args"]["EXTRAS"].split(","))
        assert chosen <= extras, f"{name}: unknown extras {chosen - extras}"
        if name in needs:
            assert needs[name] in chosen, f"{name} needs the {needs[name]} extra"
    s3_users = [
        n
        for n, s in TIER3_SERVICES.items()
        if str(s["environment"].get("TIER3_OBJECT_STORE_URL", "")).startswith("s3://")
    ]
    assert s3_users and all(
        "s3" in TIER3_SERVICES[n]["build"]["args"]["EXTRAS"].split(",") for n in s3_users
    )


def test_the_dockerfile_installs_the_chosen_extras_and_runs_tier3_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.M)
    assert '".[${EXTRAS}]"' in dockerfile
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    assert 'ENTRYPOINT ["tier3"]' in dockerfile
    for package in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        assert f"COPY {package} " in dockerfile, f"the image lacks the {package} package"


def test_secrets_are_not_written_into_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "sk-ant-" not in text
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "TOKEN")):
                # From the host's environment (pass-through or ${VAR:-default}), never a literal.
                assert value is None or str(value).startswith("${") or "$$" in str(value), (
                    f"{name}.{key} holds a literal secret"
                )


def test_host_ports_stay_on_loopback() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"
