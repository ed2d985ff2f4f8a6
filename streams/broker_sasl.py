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

TLS is not set up here: the listener is bound to 127.0.0.1 only. Deployments that leave the host
use ``SASL_SSL`` (``TIER3_SECURITY_PROTOCOL=SASL_SSL`` and ``TIER3_SSL_CA_LOCATION`` on the
clients), see docs/security.md.
"""

from __future__ import annotations

from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"


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


def sasl_server_config(
    port: int, controller_port: int, admin_password: str, users: list[ScramUser] | None = None
) -> dict[str, str]:
    """Extra server properties for ``LocalBroker(extra_config=...)``: a SCRAM client listener."""
    admin = ScramUser(ADMIN, admin_password)
    every_user = [admin, *(users or [])]
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{admin.name}" password="{admin.password}";'
    )
    return {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "super.users": f"User:{ADMIN}",
        # Read by LocalBroker: the users to create at format time, and how its probe logs in.
        "tier3.scram.users": ";".join(
            f"{MECHANISM}=[name={u.name},password={u.password}]" for u in every_user
        ),
        "tier3.probe.username": admin.name,
        "tier3.probe.password": admin.password,
        "tier3.probe.mechanism": MECHANISM,
    }
