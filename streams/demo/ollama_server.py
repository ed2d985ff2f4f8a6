"""The demo's own Ollama server: found in the cache, built when missing, started and stopped here.

``tier3 demo`` deploys to a real Ollama, so it needs one without asking the user to install it:

1. an ``OLLAMA_HOST`` that already answers is used as it is (the user's own server);
2. otherwise the binary is ``TIER3_OLLAMA_BIN``, the one ``scripts/build-ollama.sh`` cached
   (``~/.cache/tier3/ollama-<version>/bin/ollama``), or ``ollama`` on PATH;
3. with none of those and Go installed, the script builds it (minutes on two cores, once; its
   output is shown as it goes, with the elapsed time, so a long build is visibly alive);
4. the binary is started as ``ollama serve`` on a free loopback port with its own model store
   under the demo's home, so the demo never touches the user's models, and stopped at the end.

Without Go, or with ``--no-ollama``, the demo runs without a server and says so.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VERSION = os.environ.get("TIER3_OLLAMA_VERSION", "v0.17.4")
# The compile flags scripts/build-ollama.sh uses, which name its cache folder (its comment: ggml
# built without them runs scalar code, about 10x slower).
FLAVOUR = "x86-64-v3" if platform.machine() in ("x86_64", "AMD64") else "native"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-ollama.sh"


def answers(host: str) -> bool:
    """Whether an Ollama server answers at ``host``."""
    url = host if "://" in host else f"http://{host}"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/version", timeout=2):
            return True
    except OSError:
        return False


def cached_binary() -> Path | None:
    """The Ollama binary to run, if one is here already."""
    given = os.environ.get("TIER3_OLLAMA_BIN")
    if given and Path(given).is_file():
        return Path(given)
    cache = Path(os.environ.get("TIER3_OLLAMA_CACHE") or Path.home() / ".cache" / "tier3")
    built = cache / f"ollama-{VERSION}-{FLAVOUR}" / "bin" / "ollama"
    if built.is_file():
        return built
    found = shutil.which("ollama")
    return Path(found) if found else None


def build(say: Callable[[str], None]) -> Path | None:
    """Build Ollama with ``scripts/build-ollama.sh`` (needs Go), showing its progress."""
    if shutil.which("go") is None or not BUILD_SCRIPT.is_file():
        return None
    started = time.monotonic()
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), VERSION],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        last = line.strip() or last
        if last:
            say(f"[{time.monotonic() - started:5.0f}s] {last[-150:]}")
    if proc.wait() != 0:
        say(f"the Ollama build failed (exit {proc.returncode}): {last}")
        return None
    path = Path(last)
    return path if path.is_file() else cached_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OllamaServer:
    """A running ``ollama serve`` that the demo started (stop it with ``stop``)."""

    url: str
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, binary: Path, home: Path, *, parallel: int = 4) -> OllamaServer:
        """Start ``binary serve`` with its own state under ``home``; wait until it answers."""
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = {
            **os.environ,
            "HOME": str(home),  # its keys and state, not the user's
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(home / "models"),
            "OLLAMA_NUM_PARALLEL": str(parallel),
            "OLLAMA_MAX_LOADED_MODELS": "3",  # the base, the candidate and the deployed model
            "OLLAMA_KEEP_ALIVE": "30m",
        }
        log = home / "serve.log"
        process = subprocess.Popen(
            [str(binary), "serve"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its model runners are its children: stopped with it
        )
        server = cls(f"http://127.0.0.1:{port}", process, log)
        deadline = time.monotonic() + 60
        while not answers(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"ollama serve did not start; see {log}")
            time.sleep(0.3)
        return server

    def stop(self) -> None:
        """Stop the server and its model runners (one process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a runner that outlived its server


def serve_for_demo(
    home: Path, say: Callable[[str], None]
) -> tuple[str | None, OllamaServer | None, str]:
    """An Ollama to deploy to: the user's, the cached build, or one built now with Go."""
    user = os.environ.get("OLLAMA_HOST")
    if user and answers(user):
        return user if "://" in user else f"http://{user}", None, f"the server at {user}"
    binary = cached_binary()
    if binary is None:
        say("no Ollama binary cached: building one with scripts/build-ollama.sh (once; "
            "minutes on two cores)")
        binary = build(say)
    if binary is None:
        return None, None, "none (no Ollama binary and no Go to build one)"
    server = OllamaServer.start(binary, home / "ollama")
    return server.url, server, f"{binary} serving at {server.url} (log {server.log})"
