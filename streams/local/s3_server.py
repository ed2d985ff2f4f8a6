"""A real S3-compatible object store (SeaweedFS's ``weed mini``), run locally.

tier3 writes traces and model artifacts through fsspec, so in production they go to a company's
S3 through s3fs. To test that path against a real S3 server rather than fsspec's in-memory
filesystem, the project starts SeaweedFS (Apache-2.0), built from the Go module proxy by
``scripts/build-seaweedfs.sh`` and cached under ``~/.cache/tier3/seaweedfs-<version>/``.

``weed mini`` runs master, volume server, filer and the S3 gateway in one process. Every port it
listens on is chosen free on 127.0.0.1 and bound there only (so several servers can run at once);
WebDAV, the admin UI, the Iceberg and Lance endpoints and the telemetry report are switched off.
Data lives under ``<home>/s3/data``, so a stopped server started again with the same home keeps
its objects.

Credentials: one S3 identity with an access key and a secret, written into an identity file
(mode 0600) that ``weed`` reads with ``-s3.config``; the secret is never on a command line.
Clients get the same values as the standard AWS variables (:meth:`LocalS3Server.client_env`),
which is how s3fs (through botocore) is configured everywhere tier3 opens an ``s3://`` URL.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"


class S3ServerError(RuntimeError):
    """The local S3 server could not be started or stopped; the message says why."""


def default_binary() -> Path:
    """Where ``scripts/build-seaweedfs.sh`` caches ``weed`` (``TIER3_WEED_BIN`` overrides)."""
    given = os.environ.get("TIER3_WEED_BIN")
    if given:
        return Path(given)
    root = os.environ.get("TIER3_SEAWEEDFS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tier3"
    )
    return Path(root) / f"seaweedfs-{SEAWEEDFS_VERSION}" / "bin" / "weed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: 403 from S3 counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@dataclass
class LocalS3Server:
    """One local SeaweedFS S3 server, identified by its home folder and S3 port."""

    home: Path
    port: int = field(default_factory=_free_port)
    access_key: str = "tier3-local"
    secret_key: SecretStr = field(default_factory=lambda: SecretStr(secrets.token_hex(20)))
    region: str = "us-east-1"
    binary: Path = field(default_factory=default_binary)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    # Picked once: a restarted server keeps its internal ports, as its stored state expects.
    _ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def root(self) -> Path:
        return self.home.resolve() / "s3"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def client_env(self) -> dict[str, str]:
        """The standard AWS variables that point botocore (and so s3fs) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key.get_secret_value(),
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe on a dev box
        }

    def _identity_file(self) -> Path:
        """The S3 identity config: one admin identity with this server's key and secret."""
        path = self.root / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": "tier3",
                    "credentials": [
                        {
                            "accessKey": self.access_key,
                            "secretKey": self.secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(identities, out)
        return path

    def _command(self) -> list[str]:
        if not self._ports:
            names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                     "s3.grpc", "admin", "admin.grpc")
            self._ports = {name: _free_port() for name in names}
        ports = self._ports
        args = {
            "dir": str(self.root / "data"),
            "ip": "127.0.0.1",
            "ip.bind": "127.0.0.1",
            "master.port": ports["master"],
            "master.port.grpc": ports["master.grpc"],
            "master.telemetry": "false",
            "volume.port": ports["volume"],
            "volume.port.grpc": ports["volume.grpc"],
            "filer.port": ports["filer"],
            "filer.port.grpc": ports["filer.grpc"],
            "s3.port": self.port,
            "s3.port.grpc": ports["s3.grpc"],
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "s3.config": str(self._identity_file()),
            "webdav": "false",
            "admin.ui": "false",
            "admin.port": ports["admin"],  # mini starts its admin server all the same
            "admin.port.grpc": ports["admin.grpc"],
            "admin.port.legacy": 0,
        }
        return [str(self.binary), "mini", *(f"-{k}={v}" for k, v in args.items())]

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 90.0) -> LocalS3Server:
        """Start the server and wait until the S3 gateway and a volume server are up."""
        if self.is_running():
            return self
        if not self.binary.is_file():
            raise S3ServerError(
                f"no SeaweedFS binary at {self.binary}: run scripts/build-seaweedfs.sh"
            )
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        command = self._command()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3ServerError(
                    f"weed exited with {self.process.returncode}: {self._log_tail()}"
                )
            if self._ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise S3ServerError(f"weed did not get ready in {timeout:.0f}s: {self._log_tail()}")

    def _ready(self) -> bool:
        """The S3 port answers and the master can place a write (a volume server joined)."""
        if not _answers(self.endpoint_url):
            return False
        try:
            url = f"http://127.0.0.1:{self._ports['master']}/dir/status"
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                status = json.loads(reply.read())
        except (OSError, ValueError):
            return False
        return '"Url"' in json.dumps(status.get("Topology", {}))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); its data stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def _log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
