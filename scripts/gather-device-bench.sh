#!/usr/bin/env bash
# Gather what the lent device machine lacks to run the CPU-bound benches there:
# bench/bench_service.py (issue 13: FastAPI under uvicorn, vegeta, a Kafka broker) and
# bench/bench_sampler.py (issue 18: Faust workers, a Kafka broker). That machine has 16 cores
# but no Java, no package index and no network; its python3 is CPython 3.12.
#
# Everything goes into .devbench/ (ignored by git, named in the device call's `carry`), packed
# small enough to travel in one call (at most 64 MiB with the working tree):
#   jre17.txz         a Java 17 runtime made with jlink from this machine's JDK (modules kept
#                     uncompressed and the whole xz'd: 18 MB instead of 34 for a gzipped
#                     --compress=2 image)
#   kafka-4.1.1.txz   Kafka's jars (kafka-4.1.1/libs, what LocalBroker reads from
#                     ~/.cache/tier3), native libraries of other platforms dropped, re-zipped
#                     stored and the whole xz'd (41 MB -> about 18)
#   vegeta.xz         vegeta, built here with CGO_ENABLED=0 and stripped
#   whl/              the wheels (CPython 3.12, manylinux x86-64) of what the benches import
#                     and the image lacks, at this checkout's .venv versions
# docs/gpu.md ("The CPU benches on the device") has the calls that use them.
#
# Usage: scripts/gather-device-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
out=.devbench
kafka_libs=${TIER3_KAFKA_LIBS:-$HOME/.cache/tier3/kafka-4.1.1/libs}
vegeta_version=v12.13.0
grep -qxF "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >> .git/info/exclude
rm -rf "$out" && mkdir -p "$out/whl"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# -- Java: the modules the prepared Kafka runtime was seen to run with ---------------------------
modules=java.base,java.datatransfer,java.xml,java.prefs,java.desktop,java.instrument,java.logging
modules+=,java.management,java.security.sasl,java.naming,java.rmi,java.management.rmi
modules+=,java.net.http,java.scripting,java.security.jgss,java.transaction.xa,java.sql
modules+=,jdk.crypto.ec,jdk.jfr,jdk.management,jdk.naming.dns,jdk.net,jdk.security.auth
modules+=,jdk.security.jgss,jdk.unsupported,jdk.zipfs
jlink --add-modules "$modules" --compress=0 --strip-debug --no-header-files --no-man-pages \
    --output "$scratch/jre17"
tar -C "$scratch" -cf - jre17 | xz -9 -T2 > "$out/jre17.txz"

# -- Kafka's jars ---------------------------------------------------------------------------------
# zstd-jni and snappy-java carry native libraries for every platform; the device needs Linux
# x86-64's only. Stored (uncompressed) jars let xz compress across all the classes at once.
mkdir -p "$scratch/kafka-4.1.1/libs"
for jar in "$kafka_libs"/*.jar; do
    name=$(basename "$jar")
    mkdir "$scratch/x"
    (cd "$scratch/x" && unzip -q "$jar")
    case "$name" in
        zstd-jni-*) find "$scratch/x" -path '*/linux/amd64' -prune -o -name '*.so' -print \
            -o -name '*.dll' -print -o -name '*.dylib' -print | xargs -r rm -f ;;
        snappy-java-*) find "$scratch/x/org/xerial/snappy/native" -mindepth 1 -maxdepth 1 \
            ! -name Linux -exec rm -rf {} + ;;
    esac
    (cd "$scratch/x" && zip -q -0 -r -X "$scratch/kafka-4.1.1/libs/$name" .)
    rm -rf "$scratch/x"
done
tar -C "$scratch" -cf - kafka-4.1.1 | xz -9 -T2 > "$out/kafka-4.1.1.txz"

# -- vegeta ---------------------------------------------------------------------------------------
CGO_ENABLED=0 GOBIN="$scratch/bin" go install -ldflags='-s -w' \
    "github.com/tsenart/vegeta/v12@$vegeta_version"
xz -9 -c "$scratch/bin/vegeta" > "$out/vegeta.xz"

# -- wheels ---------------------------------------------------------------------------------------
# What the benches import (tier3's own dependencies, the service extra, the streams extra),
# walked through their requirements in .venv, less what the image already holds (KINDS.md's
# list, 2026-11-17). click is carried anyway: faust-streaming pins click<8.4.
requirements=$("$python" - <<'EOF'
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

roots = ["tier3", "fastapi", "uvicorn", "httptools", "anthropic", "httpx-aiohttp", "ollama",
         "faust-streaming", "cramjam", "click"]
on_device = set("""aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
    frozenlist h11 httpcore httpx idna markdown-it-py mdurl multidict mypy-extensions packaging
    prometheus-client propcache psutil pygments python-dateutil rich shellingham six
    sortedcontainers typer typing-extensions uvloop yarl""".split())
marker_env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "extra": ""}
seen: dict[str, str] = {}
todo = list(roots)
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    dist = distribution(name)
    seen[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(marker_env):
            todo.append(req.name)
wanted = sorted(n for n in seen if n not in on_device and n != "tier3")
print(" ".join(f"{n}=={seen[n]}" for n in wanted))
EOF
)
echo "downloading $requirements" >&2
# shellcheck disable=SC2086
PYTHON="$python" scripts/download-device-wheels.sh "$out/whl" $requirements
# -- the machine's side: `bash .devbench/setup.sh && . ~/devbench/env` there, in the repo root --
# It unpacks Java, Kafka's jars and vegeta where tier3 and bench/bench_service.py look for them
# (~/.cache/tier3), and installs the wheels and tier3 (editable, so the `tier3` command sits
# beside the python that runs the benches) into a venv at /tmp/v that also sees the image's own
# packages: the image's python3 is itself a venv (torch's), which --system-site-packages alone
# would skip. ~/devbench/env puts Java on PATH and names that python as $PY.
cat > "$out/setup.sh" <<'SETUP'
set -euo pipefail
cache=$HOME/.cache/tier3
mkdir -p "$HOME/devbench" "$cache/vegeta-v12.13.0/bin"
tar -C "$HOME/devbench" -xJf .devbench/jre17.txz
tar -C "$cache" -xJf .devbench/kafka-4.1.1.txz
xz -dc .devbench/vegeta.xz > "$cache/vegeta-v12.13.0/bin/vegeta"
chmod +x "$cache/vegeta-v12.13.0/bin/vegeta"
py=python3
if python3 -m venv --without-pip --system-site-packages /tmp/v; then
    image_site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    venv_site=$(/tmp/v/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$image_site" > "$venv_site/zz-image.pth"  # after the venv's own: the wheels win
    py=/tmp/v/bin/python
fi
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .devbench/whl/*.whl
"$py" -m pip install -q --no-index --no-deps --no-build-isolation -e .
echo "export PATH=$HOME/devbench/jre17/bin:\$PATH PY=$py" > "$HOME/devbench/env"
"$HOME/devbench/jre17/bin/java" -version 2>&1 | head -1
"$cache/vegeta-v12.13.0/bin/vegeta" -version | head -1
"$py" -c 'import fastapi, uvicorn, httptools, anthropic, httpx_aiohttp, ollama, faust, tier3.streams.backend.publisher; print("imports ok")'
"$(dirname "$py")/tier3" --help > /dev/null && echo "tier3 ok"
echo "$(nproc) cores"
SETUP
du -sh "$out"/* >&2
