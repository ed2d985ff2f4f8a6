"""A real single-node Apache Kafka broker (KRaft, combined broker + controller), run locally.

There is no Docker engine on the machines tier3 is developed and tested on, so the project starts
Kafka itself: Maven copies the pinned Apache Kafka jars (and the log4j binding Kafka's POM leaves
out) from Maven Central into a cache folder once; the machine's Java 17 runs ``kafka.Kafka``.
Data and logs live under ``<home>/broker``. The same code serves ``tier3 broker``, the tests and CI.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tier3.streams.kafka.errors import OperatorError

KAFKA_VERSION = "4.1.1"
_ASSETS = resources.files("tier3.streams.local").joinpath("broker_config")


class BrokerError(OperatorError, RuntimeError):
    """The local broker could not be set up, started or stopped; the message says what to do."""


def default_cache() -> Path:
    root = os.environ.get("TIER3_KAFKA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tier3"
    )
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def _require(tool: str, advice: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` was not found on PATH: {advice}")
    return path


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise BrokerError(f"could not read the Java version from: {out.strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by this user only (mode 0600), also
    when the file already exists with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_jars(cache: Path | None = None) -> Path:
    """The folder of Kafka's jars, fetched with Maven on first use."""
    libs = (cache or default_cache()) / "libs"
    if any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        return libs
    mvn = _require("mvn", "install Apache Maven (Debian: apt-get install maven) to fetch Kafka")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    with resources.as_file(_ASSETS.joinpath("pom.xml")) as pom:
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven could not fetch Apache Kafka {KAFKA_VERSION}:\n"
            + (result.stdout + result.stderr)[-2000:]
        )
    staging.rename(libs)  # atomic: a half-fetched folder is never taken for a complete one
    return libs


@dataclass
class LocalBroker:
    """One local broker, identified by its home folder."""

    home: Path = field(default_factory=lambda: Path(".tier3"))
    port: int = 9092
    controller_port: int | None = None
    heap: str = field(default_factory=lambda: os.environ.get("TIER3_BROKER_HEAP", "1g"))
    extra_config: dict[str, str] = field(default_factory=dict)
    cache: Path | None = None

    @property
    def root(self) -> Path:
        return self.home.resolve() / "broker"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def _controller_port(self) -> int:
        return self.controller_port or self.port + 1

    def pid(self) -> int | None:
        """The broker's process id, if it is alive."""
        try:
            pid = int(self._pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None  # the pid was reused by another program
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None and self.answers()

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether the broker answers a metadata request."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout):
                pass
        except OSError:
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "log_level": 0, **self._client_auth()}
        )
        try:
            return bool(admin.list_topics(timeout=timeout).brokers)
        except Exception:
            return False

    def _client_auth(self) -> dict[str, str]:
        """Client settings the readiness probe needs when the listener asks for SASL."""
        if "sasl.enabled.mechanisms" not in self.extra_config:
            return {}
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": self.extra_config.get("tier3.probe.mechanism", "SCRAM-SHA-512"),
            "sasl.username": self.extra_config.get("tier3.probe.username", ""),
            "sasl.password": self.extra_config.get("tier3.probe.password", ""),
        }

    def _properties(self) -> str:
        data = self.root / "data"
        cfg = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self._controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self._controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.backoff.ms": "1000",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "auto.create.topics.enable": "false",
        }
        cfg.update({k: v for k, v in self.extra_config.items() if not k.startswith("tier3.")})
        return "".join(f"{k}={v}\n" for k, v in cfg.items())

    def _format_storage(self, classpath: str, java: str, config: Path) -> None:
        """Format the storage; SCRAM users are written into the metadata log now.

        The tool takes users only as arguments (``--add-scram name=...,password=...``), so its
        class and arguments go in a Java argument file (``java @file``) that only this user can
        read, deleted at once: on the command line, any local user could read the passwords
        with ``ps``.
        """
        if (self.root / "data" / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
        arguments = [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
            "--ignore-formatted",
            *self._format_extra_args(),
        ]
        argfile = self.root / f"format-{uuid.uuid4().hex[:8]}.args"
        try:
            write_private(argfile, "".join(f'"{a}"\n' for a in arguments))
            result = subprocess.run(
                [java, "-cp", classpath, f"@{argfile}"], capture_output=True, text=True
            )
        finally:
            argfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise BrokerError(
                f"formatting the broker's storage failed:\n{result.stdout}{result.stderr}"
            )

    def _format_extra_args(self) -> list[str]:
        """SCRAM users are written into the metadata log at format time."""
        return [
            arg
            for user in self.extra_config.get("tier3.scram.users", "").split(";")
            if user
            for arg in ("--add-scram", user)
        ]

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker unless it already runs; wait until it answers. Returns bootstrap.

        Safe to call from several processes at once (parallel test sessions, a CI script and a
        demo): a lock file serialises them, and the ones that wait find the broker running.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.is_running():
                return self.bootstrap
            return self._start_locked(timeout)

    def _start_locked(self, timeout: float) -> str:
        for port in (self.port, self._controller_port):
            if _listening(port):  # another broker (another home) or another program
                raise BrokerError(
                    f"port {port} on 127.0.0.1 is taken by a process that is not the broker "
                    f"under {self.root}: stop it, or choose another port (--port)"
                )
        java = _require(
            "java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
        )
        if (major := _java_major(java)) < 17:
            raise BrokerError(
                f"Kafka {KAFKA_VERSION} needs Java 17 or newer; `java` is Java {major}"
            )
        libs = ensure_jars(self.cache)
        classpath = f"{libs}/*"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        config = self.root / "server.properties"
        write_private(config, self._properties())  # may hold the admin's SCRAM password
        self._format_storage(classpath, java, config)
        with resources.as_file(_ASSETS.joinpath("log4j2.properties")) as log_config:
            log_config_path = str(log_config)
        out = open(self.root / "logs" / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={self.root / 'logs'}",
                f"-Dlog4j2.configurationFile={log_config_path}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the CLI that started it
        )
        out.close()
        self._pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with {process.returncode}:\n{self.log_tail()}"
                )
            if self.answers(timeout=1.0):
                return self.bootstrap
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the broker did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Shut the broker down cleanly (SIGTERM, then SIGKILL after ``timeout``)."""
        pid = self.pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)
        return True

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the broker (the fault tests pause it with SIGSTOP)."""
        pid = self.pid()
        if pid is None:
            raise BrokerError("the broker is not running")
        os.kill(pid, sig)

    def log_tail(self, lines: int = 30) -> str:
        texts = []
        for name in ("stdout.log", "server.log"):
            path = self.root / "logs" / name
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts[-lines:])
