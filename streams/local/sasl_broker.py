"""SASL/SCRAM for the local broker: the server settings that make its client listener ask for a
user name and password, and the users it knows.

The local broker (``LocalBroker``) takes extra server properties; this module computes them, so
the broker runner itself stays one code path for plain and secured brokers:

* the client listener becomes ``SASL_PLAINTEXT`` with ``SCRAM-SHA-512`` (SCRAM rather than PLAIN:
  the broker stores salted hashes, and the password never crosses the wire);
* the broker talks to itself over the same listener as the ``admin`` super user; the controller
  listener (loopback only) stays PLAINTEXT, as in Kafka's own KRaft examples;
* SCRAM users are written into the metadata log when the storage is formatted, the only way a
  KRaft broker can know its inter-broker user before it is up. Users added later go through
  ``AdminClient.alter_user_scram_credentials``.

With ``authorizer``, the broker runs KRaft's ``StandardAuthorizer``: the ``admin`` super user may
do anything, every other user only what an ACL grants it (``grant_everything`` grants the
application user all, through ACLs an operator can list and narrow; a user with none is refused,
which is how "not authorized" is tested). KRaft also authorizes the broker's own requests to its
controller, so the controller listener then asks for a login too: ``SASL_PLAINTEXT`` with
``PLAIN`` as ``admin`` (SCRAM credentials live in the metadata log the controller serves, so a
controller cannot check them; Kafka's KRaft docs use PLAIN there). A PLAINTEXT controller listener
would make its principal ``User:ANONYMOUS`` a super user, and so every local process that can
reach the port.

With ``tls``, a second client listener speaks ``SASL_SSL`` (TLS, then SCRAM) on its own port,
with the server's key and certificate chain from one PEM file (Kafka's PEM key store, so no Java
keystore tooling is needed). Clients then set ``TIER3_SECURITY_PROTOCOL=SASL_SSL`` and
``TIER3_SSL_CA_LOCATION``. The plain SASL listener stays, on loopback, because the broker's
readiness probe and its own inter-broker traffic use it.
"""

from __future__ import annotations

from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class ScramUser:
    name: str
    password: str

    def __post_init__(self) -> None:
        # The format tool's syntax and the JAAS line both break on these characters.
        for text, what in ((self.name, "user name"), (self.password, "password")):
            if not text or any(c in text for c in '",;=[]\n\\'):
                raise ValueError(f'a SCRAM {what} must be non-empty and free of " , ; = [ ] \\')

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"ScramUser(name={self.name!r}, password='**********')"


@dataclass(frozen=True)
class TlsListener:
    """A ``SASL_SSL`` listener: its port and the PEM file with the server's key and chain."""

    port: int
    keystore_pem: str


def sasl_server_config(
    port: int,
    controller_port: int,
    admin_password: str,
    users: list[ScramUser] | None = None,
    tls: TlsListener | None = None,
    authorizer: bool = False,
) -> dict[str, str]:
    """Extra server properties for ``LocalBroker(extra_config=...)``: a SCRAM client listener
    (and, with ``tls``, a TLS one beside it; with ``authorizer``, ACLs enforced)."""
    admin = ScramUser(ADMIN, admin_password)
    every_user = [admin, *(users or [])]
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{admin.name}" password="{admin.password}";'
    )
    listeners = [f"SASL_PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["SASL_PLAINTEXT:SASL_PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    tls_config = {}
    if tls is not None:
        listeners.append(f"SASL_SSL://127.0.0.1:{tls.port}")
        protocols.append("SASL_SSL:SASL_SSL")
        tls_config = {
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": tls.keystore_pem,
        }
    acl_config = {}
    if authorizer:
        protocols[1] = "CONTROLLER:SASL_PLAINTEXT"
        acl_config = {
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            # The server's one PLAIN user and the login the broker itself uses, in one line.
            "listener.name.controller.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{admin.name}" password="{admin.password}" '
                f'user_{admin.name}="{admin.password}";'
            ),
        }
    return {
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "listener.security.protocol.map": ",".join(protocols),
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        **tls_config,
        **acl_config,
        "super.users": f"User:{ADMIN}",
        # Read by LocalBroker: the users to create at format time, and how its probe logs in.
        "tier3.scram.users": ";".join(
            f"{MECHANISM}=[name={u.name},password={u.password}]" for u in every_user
        ),
        "tier3.probe.username": admin.name,
        "tier3.probe.password": admin.password,
        "tier3.probe.mechanism": MECHANISM,
    }


def grant_everything(bootstrap: str, admin_password: str, user: str) -> None:
    """Allow ``user`` every operation on every topic, group and transactional id and on the
    cluster, as ACLs (``kafka-acls --list`` shows them; narrow them there). Run as ``admin``;
    granting again is harmless."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": MECHANISM,
            "sasl.username": ADMIN,
            "sasl.password": admin_password,
            "log_level": 0,
        }
    )
    resources = [
        (ResourceType.TOPIC, "*"),
        (ResourceType.GROUP, "*"),
        (ResourceType.TRANSACTIONAL_ID, "*"),
        (ResourceType.BROKER, "kafka-cluster"),  # the cluster resource
    ]
    bindings = [
        AclBinding(
            kind,
            name,
            ResourcePatternType.LITERAL,
            f"User:{user}",
            "*",
            AclOperation.ALL,
            AclPermissionType.ALLOW,
        )
        for kind, name in resources
    ]
    for future in admin.create_acls(bindings, request_timeout=30).values():
        future.result(timeout=40)
