"""Operators' errors: every broker, network, credential and window failure is one line on stderr
with a documented exit code and no traceback, against a real stopped broker (a port nothing
listens on) and the real SASL broker with wrong credentials; no secret on any command line."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.local.sasl_broker import ScramUser

from tests.support.ports import free_port, free_port_pair
from tests.support.sasl_broker import SaslBroker

TIER3 = str(Path(sys.executable).with_name("tier3"))

# The exit codes docs/operations.md documents (tier3.streams.kafka.errors).
USAGE, UNREACHABLE, AUTHENTICATION, NOT_AUTHORIZED, TOPIC_MISSING = 2, 3, 5, 6, 7


def tier3(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIER3_")}
    environment.update(env)
    return subprocess.run(
        [TIER3, *args], env=environment, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """It exited with ``code`` and said one line on stderr, no traceback, with ``words``."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- a broker that is down ---------------------------------------------------------------------

LISTING_AND_ACTING = [
    ["topics", "create"],
    ["topics", "describe"],
    ["groups", "list"],
    ["groups", "describe", "some-group"],
    ["groups", "lag"],
    ["replay", "recapture"],
    ["traces", "delete", "--query-id", "q-1"],
]


@pytest.mark.parametrize("command", LISTING_AND_ACTING, ids=" ".join)
def test_a_stopped_broker_is_one_line_naming_the_setting(command: list[str]) -> None:
    stopped = f"127.0.0.1:{free_port()}"
    done = tier3(*command, TIER3_BOOTSTRAP_SERVERS=stopped)
    assert_one_line(done, UNREACHABLE, "not reachable", stopped, "TIER3_BOOTSTRAP_SERVERS")
    assert done.stdout == ""  # never an empty table that reads as "none"


def test_groups_list_never_reads_an_unasked_broker_as_no_groups() -> None:
    # The listing used to exit 0 with an empty table when librdkafka's timeout fired first.
    for _ in range(3):
        done = tier3("groups", "list", "--json", TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
        assert done.returncode == UNREACHABLE and done.stdout == ""


def test_status_says_the_broker_is_down_and_exits_3() -> None:
    done = tier3("status", TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    assert done.returncode == UNREACHABLE and "not reachable" in done.stdout
    assert "Traceback" not in done.stderr


def _kafka_clients() -> set[int]:
    gc.collect()
    kinds = (Producer, Consumer, AdminClient)
    return {id(o) for o in gc.get_objects() if isinstance(o, kinds)}


def test_a_failed_status_leaves_no_kafka_client_alive() -> None:
    # A client still alive at exit runs its threads while the interpreter tears down: `tier3
    # status` with a wrong password once died of SIGSEGV in CI, after printing its last line.
    # Reading the error ran a Kafka call inside collect's except block, and confluent-kafka then
    # kept the handled exception for good, with the frames and the admin client it refers to.
    from tier3.streams.ops.status import collect

    before = _kafka_clients()
    status = collect(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    assert status.exit_code == UNREACHABLE and "not reachable" in status.errors[0]
    assert _kafka_clients() - before == set()


def test_debug_shows_the_traceback() -> None:
    done = tier3(
        "--log-level", "DEBUG", "topics", "create",
        TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    assert done.returncode != 0 and "Traceback" in done.stderr


# -- windows -----------------------------------------------------------------------------------


def test_a_reversed_time_window_is_refused() -> None:
    done = tier3(
        "replay", "resample", "--since", "2026-03-01T00:00:00", "--until", "2026-01-01T00:00:00",
        TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    assert_one_line(done, USAGE, "--since", "--until")


def test_a_reversed_offset_window_is_refused() -> None:
    done = tier3(
        "replay", "recapture", "--from-offset", "50", "--to-offset", "10",
        TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    assert_one_line(done, USAGE, "--from-offset 50", "--to-offset 10")


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["replay", "resample", "--since", "yesterday"], "--since 'yesterday'"),
        (["replay", "recapture", "--until", "2026-13-45"], "--until '2026-13-45'"),
        (["groups", "reset", "g-1", "--to-datetime", "noon"], "--to-datetime 'noon'"),
        (["groups", "reset", "g-1", "--by-duration", "a while"], "--by-duration 'a while'"),
    ],
    ids=lambda c: " ".join(c) if isinstance(c, list) else "",
)
def test_a_time_that_cannot_be_read_names_its_flag(command: list[str], flag: str) -> None:
    done = tier3(*command, TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    assert_one_line(done, USAGE, flag)


@pytest.mark.parametrize(
    "strategies",
    [
        ["--to-datetime", "2026-01-01T00:00:00", "--by-duration", "PT1H"],
        ["--to-earliest", "--to-latest"],
        ["--from-file", "offsets.json", "--to-earliest"],
    ],
    ids=" ".join,
)
def test_groups_reset_wants_exactly_one_strategy(strategies: list[str]) -> None:
    done = tier3("groups", "reset", "g-1", *strategies,
                 TIER3_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")  # fmt: skip
    assert_one_line(done, USAGE, "one" if "--from-file" not in strategies else "--from-file")


def test_an_unknown_partition_is_named(kafka: KafkaSettings) -> None:
    done = tier3(
        "replay", "recapture", "--partition", "1", "--partition", "42",
        TIER3_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        TIER3_TOPIC_PREFIX=kafka.topic_prefix,
    )
    line = assert_one_line(done, USAGE, "no partition 42")
    assert "1," not in line.split("no partition")[1]  # partition 1 exists: only 42 is named


def test_a_bad_setting_names_its_variable() -> None:
    done = tier3("run", "sampler", "--sample-rate", "7")
    assert_one_line(done, USAGE, "TIER3_SAMPLE_RATE")


# -- topics that were never created ------------------------------------------------------------

NEEDS_A_TOPIC = [
    (["replay", "recapture"], "capture-jobs"),
    (["replay", "resample"], "experiences"),
    (["replay", "dead-letters", "traces"], "traces.dlq"),
    (["traces", "delete", "--query-id", "q-1"], "traces"),
    (["groups", "reset", "g-1", "--topic", "traces", "--to-earliest"], "traces"),
    (["groups", "list"], ""),
    (["groups", "lag"], ""),
]


@pytest.mark.parametrize(("command", "topic"), NEEDS_A_TOPIC, ids=lambda c: " ".join(c))
def test_a_topic_never_created_is_named_with_the_command_that_creates_it(
    kafka: KafkaSettings, command: list[str], topic: str
) -> None:
    prefix = f"never-{kafka.topic_prefix}"
    env = {"TIER3_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "TIER3_TOPIC_PREFIX": prefix}
    done = tier3(*command, **env)
    line = assert_one_line(done, TOPIC_MISSING, prefix + topic, "tier3 topics create")
    assert "TIER3_TOPIC_PREFIX" in line and done.stdout == ""


# -- SASL --------------------------------------------------------------------------------------


def _sasl_env(sasl: SaslBroker, **overrides: str) -> dict[str, str]:
    return {
        "TIER3_BOOTSTRAP_SERVERS": sasl.broker.bootstrap,
        "TIER3_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TIER3_SASL_USERNAME": sasl.client.name,
        "TIER3_SASL_PASSWORD": sasl.client.password,
        "TIER3_TOPIC_PREFIX": "clierrors.",
        **overrides,
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", [["topics", "create"], ["groups", "list"]], ids=" ".join)
def test_a_wrong_password_says_authentication_failed(
    sasl: SaslBroker, command: list[str]
) -> None:
    done = tier3(*command, **_sasl_env(sasl, TIER3_SASL_PASSWORD="not-the-password"))
    line = assert_one_line(done, AUTHENTICATION, "authentication failed", "TIER3_SASL_PASSWORD")
    assert "not-the-password" not in line


@pytest.mark.slow
def test_status_with_a_wrong_password_says_authentication_failed(sasl: SaslBroker) -> None:
    done = tier3("status", **_sasl_env(sasl, TIER3_SASL_PASSWORD="not-the-password"))
    assert done.returncode == AUTHENTICATION, done.stdout + done.stderr
    assert "authentication failed" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.slow
def test_sasl_without_a_user_names_the_variables(sasl: SaslBroker) -> None:
    env = _sasl_env(sasl)
    del env["TIER3_SASL_USERNAME"], env["TIER3_SASL_PASSWORD"]
    done = tier3("topics", "create", **env)
    assert_one_line(done, USAGE, "TIER3_SASL_USERNAME", "TIER3_SASL_PASSWORD")


@pytest.fixture(scope="module")
def created_prefix(sasl: SaslBroker) -> str:
    """A prefix whose topics the application user created: they exist, hidden by ACLs."""
    done = tier3("topics", "create", **_sasl_env(sasl, TIER3_TOPIC_PREFIX="acls."))
    assert done.returncode == 0, done.stderr
    return "acls."


REFUSED = [
    ["topics", "create"],
    ["topics", "describe"],
    ["status"],
    ["groups", "list"],
    ["groups", "lag"],
    ["replay", "recapture"],
    ["traces", "delete", "--query-id", "q-1"],
]


@pytest.mark.slow
@pytest.mark.parametrize("command", REFUSED, ids=" ".join)
def test_a_user_without_acls_is_told_it_is_not_authorized(
    sasl: SaslBroker, created_prefix: str, command: list[str]
) -> None:
    """Kafka hides what a principal may not describe; that must not read as "missing" or
    "none"."""
    env = _sasl_env(
        sasl,
        TIER3_SASL_USERNAME=sasl.stranger.name,
        TIER3_SASL_PASSWORD=sasl.stranger.password,
        TIER3_TOPIC_PREFIX=created_prefix,
    )
    done = tier3(*command, **env)
    assert_one_line(done, NOT_AUTHORIZED, "not authorized", "ACLs", "TIER3_SASL_USERNAME")
    assert done.stdout == ""


@pytest.mark.slow
def test_groups_list_without_describe_on_the_cluster_is_not_read_as_no_groups(
    sasl: SaslBroker, created_prefix: str
) -> None:
    """A user that may see the topics but no group: the broker lists it no group at all."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    from tests.support.sasl_broker import ADMIN_PASSWORD

    admin = AdminClient(
        sasl.settings(sasl_username="admin", sasl_password=ADMIN_PASSWORD).client_config()
    )
    reader = ScramUser("tier3-topic-reader", "pw-reader-1")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    for future in admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(reader.name, info, reader.password.encode())]
    ).values():
        future.result(timeout=30)
    describe = AclBinding(
        ResourceType.TOPIC, created_prefix, ResourcePatternType.PREFIXED, f"User:{reader.name}",
        "*", AclOperation.DESCRIBE, AclPermissionType.ALLOW,
    )
    for future in admin.create_acls([describe]).values():
        future.result(timeout=30)
    env = _sasl_env(
        sasl,
        TIER3_SASL_USERNAME=reader.name,
        TIER3_SASL_PASSWORD=reader.password,
        TIER3_TOPIC_PREFIX=created_prefix,
    )
    done = tier3("groups", "list", **env)
    assert_one_line(done, NOT_AUTHORIZED, "no consumer group is visible", "Describe on the cluster")
    assert done.stdout == ""


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_process_the_broker_commands_start_has_a_secret_in_its_arguments() -> None:
    """Every process ``tier3 broker start-sasl`` and ``tier3 broker stop`` start, as Python's
    audit hook sees it being created, carries no password; server.properties is 0600."""
    from tier3.streams.cli import main as cli
    from typer.testing import CliRunner

    started: list[list[str]] = []
    recording = [True]

    def hook(event: str, args: tuple) -> None:
        if recording[0] and event == "subprocess.Popen":
            started.append([str(a) for a in (args[1] or [])])

    sys.addaudithook(hook)  # an audit hook cannot be removed: it stops recording at the end
    home = Path(tempfile.mkdtemp(prefix="tier3-secrets-"))
    (home / "admin").write_text("adm1n-s3cret\n")
    (home / "app").write_text("app-s3cret\n")
    env = {
        "TIER3_BROKER_ADMIN_PASSWORD_FILE": str(home / "admin"),
        "TIER3_SASL_USERNAME": "app",
        "TIER3_SASL_PASSWORD_FILE": str(home / "app"),
    }
    cli._load_plugins()
    runner = CliRunner()
    port = free_port_pair()
    try:
        started_broker = runner.invoke(
            cli.app, ["broker", "start-sasl", "--home", str(home), "--port", str(port)], env=env
        )
        assert started_broker.exit_code == 0, started_broker.output
        config = home / f"kafka-{port}" / "server.properties"
        config = config if config.exists() else next(home.rglob("server.properties"))
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert not list(home.rglob("*.args"))  # the argument file is gone
    finally:
        stopped = runner.invoke(
            cli.app, ["broker", "stop", "--home", str(home), "--port", str(port)], env=env
        )
        recording[0] = False
    assert stopped.exit_code == 0, stopped.output
    assert any("kafka.Kafka" in args for args in started)
    assert any(any(a.startswith("@") for a in args) for args in started)  # the storage format
    for args in started:
        line = " ".join(args)
        assert "s3cret" not in line, line
