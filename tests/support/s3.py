"""The S3 fixtures: a real SeaweedFS S3 server per session and a fresh bucket per test.

The server is the project's own (``tier3.streams.local.s3_server``), its ``weed`` binary built
from the Go module proxy by ``scripts/build-seaweedfs.sh`` and cached. If it cannot be built
here, every test that needs it skips and says why. Clients reach it the way they reach a
company's S3: the standard AWS variables (endpoint, key, secret), which botocore reads for s3fs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tier3.streams.local.s3_server import LocalS3Server, S3ServerError, default_binary

from tests.support.broker import TEST_HOME

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-seaweedfs.sh"


def weed_binary() -> Path:
    """The cached ``weed`` binary, built on first use; skips the test if it cannot be built."""
    binary = default_binary()
    if binary.is_file():
        return binary
    if not shutil.which("go"):
        pytest.skip("no Go toolchain: cannot build SeaweedFS (scripts/build-seaweedfs.sh)")
    timeout = float(os.environ.get("TIER3_SEAWEEDFS_BUILD_TIMEOUT", "2400"))
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"building SeaweedFS took more than {timeout:.0f}s (build-seaweedfs.sh)")
    if done.returncode != 0:
        pytest.skip(f"SeaweedFS could not be built here: {done.stderr.strip()[-800:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """The session's real S3 server (stopped at the end of the session)."""
    # Two tries, each on fresh free ports: with tests in several processes, a port found free
    # can be taken by another process's server before weed binds it (seen once in CI).
    for attempt in (1, 2):
        server = LocalS3Server(home=TEST_HOME / f"s3-{uuid.uuid4().hex[:8]}", binary=weed_binary())
        try:
            server.start()
            break
        except S3ServerError as exc:
            shutil.rmtree(server.home, ignore_errors=True)
            if attempt == 2:
                pytest.fail(f"the local S3 server did not start: {exc}")
    yield server
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


def point_at(server: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the AWS variables of ``server`` for this process and the processes it starts."""
    for name, value in server.client_env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def make_bucket(server: LocalS3Server) -> str:
    """A new empty bucket on ``server``; its ``s3://`` URL."""
    import s3fs

    name = f"t-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(
        key=server.access_key,
        secret=server.secret_key.get_secret_value(),
        endpoint_url=server.endpoint_url,
        skip_instance_cache=True,
    )
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's server, with the AWS variables pointing at it."""
    pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
    point_at(s3_server, monkeypatch)
    return make_bucket(s3_server)
