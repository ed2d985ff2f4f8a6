#!/usr/bin/env bash
# Download wheels for the lent device machine's python3 (CPython 3.12 on manylinux x86-64; it
# has no package index), without their dependencies: each caller names exactly what the
# machine's image lacks (scripts/gather-gpu-wheels.sh, scripts/gather-device-bench.sh).
#
# Usage: scripts/download-device-wheels.sh <folder> <name==version>...
set -euo pipefail
folder=$1
shift
"${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_39_x86_64 \
    -d "$folder" "$@"
