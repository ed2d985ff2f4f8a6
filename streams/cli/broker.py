"""``tier3 broker start|start-sasl|stop|status``: the local single-node Kafka broker (KRaft).

Parse, call ``tier3.streams.local.kafka_broker``, print the bootstrap address on stdout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from tier3.streams.cli.output import console, fail, out
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.local.kafka_broker import LocalBroker

broker_app = typer.Typer(
    help="Run a local single-node Kafka broker (KRaft) for development and tests.",
    no_args_is_help=True,
)

HomeOpt = Annotated[
    Path | None, typer.Option(help="Local state folder [env: TIER3_HOME; default .tier3].")
]
PortOpt = Annotated[
    int,
    typer.Option(
        help="Broker port on 127.0.0.1 [env: TIER3_BROKER_PORT].", envvar="TIER3_BROKER_PORT"
    ),
]


def local_broker(home: Path | None, port: int) -> LocalBroker:
    return LocalBroker(home=home or LocalSettings().home, port=port)


@broker_app.command("start")
def broker_start(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Start the local broker (idempotent); wait until it answers; print its bootstrap address."""
    broker = local_broker(home, port)
    if broker.is_running():
        console.print(f"broker already running (pid {broker.pid()})")
    else:
        console.print(f"starting Kafka in {broker.root} ...")
    bootstrap = broker.start()
    out.print(bootstrap)


@broker_app.command("stop")
def broker_stop(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Stop the local broker cleanly."""
    stopped = local_broker(home, port).stop()
    console.print("broker stopped" if stopped else "broker was not running")


@broker_app.command("status")
def broker_status(home: HomeOpt = None, port: PortOpt = 9092) -> None:
    """Say whether the local broker runs (exit code 0) or not (exit code 3)."""
    broker = local_broker(home, port)
    if broker.is_running():
        out.print(f"running (pid {broker.pid()}) at {broker.bootstrap}, data in {broker.root}")
        return
    out.print("not running")
    raise typer.Exit(3)


def _secret(value: str | None, file: Path | None, what: str) -> str:
    if value:
        return value
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read the {what} from {file}: {exc}") from exc
    raise fail(f"no {what}: set it in the environment or give a file")


def broker_start_sasl(
    home: Annotated[
        Path | None, typer.Option(help="Local state folder (default: $TIER3_HOME or .tier3).")
    ] = None,
    port: Annotated[
        int, typer.Option(help="Client (SASL) port on 127.0.0.1.", envvar="TIER3_BROKER_PORT")
    ] = 9092,
    admin_password_file: Annotated[
        Path | None,
        typer.Option(
            envvar="TIER3_BROKER_ADMIN_PASSWORD_FILE",
            help="File holding the broker's own super user's password; or set "
            "TIER3_BROKER_ADMIN_PASSWORD. There is no flag for the password itself: a command "
            "line is visible to every local user.",
        ),
    ] = None,
    acls: Annotated[
        bool,
        typer.Option(
            "--acls",
            help="Enforce ACLs (KRaft's StandardAuthorizer): the application user is granted "
            "everything through ACLs; any other user only what kafka-acls grants it.",
        ),
    ] = False,
) -> None:
    """Start the local broker with SASL/SCRAM-SHA-512 on its client listener.

    The application user is TIER3_SASL_USERNAME with TIER3_SASL_PASSWORD(_FILE), the same
    variables every tier3 client reads, so the broker and the clients agree by construction.
    Users are written when the broker's storage is first formatted: start a new --home to change
    them. Clients then need TIER3_SECURITY_PROTOCOL=SASL_PLAINTEXT.
    """
    from tier3.streams.local.sasl_broker import ScramUser, grant_everything, sasl_server_config

    # Read here, not by a flag: a secret must never be on a command line.
    admin_password = os.environ.get("TIER3_BROKER_ADMIN_PASSWORD")
    admin = _secret(admin_password, admin_password_file, "broker admin password")
    client = KafkaSettings()
    password = client.password()
    if not client.sasl_username or password is None:
        raise fail(
            "set TIER3_SASL_USERNAME and TIER3_SASL_PASSWORD (or _FILE) for the application user"
        )
    user = ScramUser(client.sasl_username, password.get_secret_value())
    broker = LocalBroker(
        home=home or LocalSettings().home,
        port=port,
        extra_config=sasl_server_config(port, port + 1, admin, [user], authorizer=acls),
    )
    console.print(f"starting Kafka with SASL/SCRAM in {broker.root} ...")
    bootstrap = broker.start()
    if acls:
        grant_everything(bootstrap, admin, user.name)
    out.print(bootstrap)
    console.print(
        f"clients: TIER3_BOOTSTRAP_SERVERS={bootstrap} "
        "TIER3_SECURITY_PROTOCOL=SASL_PLAINTEXT "
        f"TIER3_SASL_USERNAME={user.name} TIER3_SASL_PASSWORD_FILE=<file>",
        highlight=False,
    )


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Add ``tier3 broker`` to the command line."""
    broker_app.command("start-sasl")(broker_start_sasl)
    app.add_typer(broker_app, name="broker")
