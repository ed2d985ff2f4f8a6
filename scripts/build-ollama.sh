#!/usr/bin/env bash
# Build a real Ollama server from the Go module proxy and cache the binary.
#
# Why build: the deploy tests talk to a real `ollama serve` (create-from-GGUF with quantize,
# generate), not a stand-in. Ollama's Go module builds with plain `go install` and cgo (its
# CPU backend of ggml is compiled from the vendored C sources), which takes minutes on two
# cores, so the binary is cached under ~/.cache/tier3/ollama-<version>/ and reused.
#
# Usage: scripts/build-ollama.sh [version]     prints the binary's path on stdout.
set -euo pipefail

version="${1:-${TIER3_OLLAMA_VERSION:-v0.17.4}}"
# ggml's CPU kernels pick their SIMD paths at compile time (__AVX2__, __FMA__, __F16C__), and
# cgo's default flags (-O2 -g) target plain x86-64: the served model then runs scalar code, about
# 10x slower (measured: 2 tokens/s for SmolLM2-135M on one core). x86-64-v3 (AVX2, FMA, F16C:
# every x86 server since 2015) turns them on; no -g saves compile time. The flags name the cache
# folder, so a binary built with other flags is never reused; streams/demo/ollama_server.py
# (FLAVOUR) finds the folder by the same name.
case "$(uname -m)" in
    x86_64) flavour=x86-64-v3; simd="-march=x86-64-v3" ;;
    *) flavour=native; simd="-mcpu=native" ;;
esac
cache="${TIER3_OLLAMA_CACHE:-$HOME/.cache/tier3}/ollama-${version}-${flavour}"
binary="$cache/bin/ollama"
mkdir -p "$cache"
# One build at a time per cache folder: scripts/test.sh starts it in the background while the
# tests run, and a test that needs the binary runs this script too, which waits here for that
# build to finish and then finds the binary cached.
exec 9>"$cache.lock"
flock 9

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

# The module zip leaves out llama.cpp's vendored headers (Go drops vendor/ folders from module
# zips): nlohmann/json and stb come from Debian's packages, miniaudio (one header) from the
# sources of the `miniaudio` package on PyPI, which ship the same header.
packages=()
[[ -f /usr/include/nlohmann/json_fwd.hpp ]] || packages+=(nlohmann-json3-dev)
[[ -f /usr/include/stb/stb_image.h ]] || packages+=(libstb-dev)
if (( ${#packages[@]} )); then
    if [[ $(id -u) -eq 0 ]]; then
        (apt-get update -qq && apt-get install -y -qq "${packages[@]}") >&2
    else
        echo "install ${packages[*]} (Debian) first: ollama's C++ code needs them" >&2
        exit 1
    fi
fi
include="$cache/include"
if [[ ! -f "$include/miniaudio/miniaudio.h" ]]; then
    python="${PYTHON:-python3}"  # any Python with pip
    work=$(mktemp -d)
    "$python" -m pip download -q --no-binary :all: --no-deps "miniaudio==1.71" -d "$work" >&2
    tar -xzf "$work"/miniaudio-*.tar.gz -C "$work"
    mkdir -p "$include/miniaudio"
    cp "$work"/miniaudio-*/miniaudio/miniaudio.h "$include/miniaudio/"
    rm -rf "$work"
fi

start=$(date +%s)
# GOBIN puts the binary in the cache; the module cache is the user's, so a rebuild reuses it.
GOFLAGS=-mod=mod CGO_ENABLED=1 GOBIN="$cache/bin.partial" \
    CGO_CPPFLAGS="-I$include" CGO_CFLAGS="-O3 $simd" CGO_CXXFLAGS="-O3 $simd" \
    go install -trimpath -ldflags="-s -w" "github.com/ollama/ollama@${version}" >&2
mv "$cache/bin.partial" "$cache/bin"
echo "built ollama ${version} in $(( $(date +%s) - start ))s" >&2
echo "$(( $(date +%s) - start ))" > "$cache/build-seconds"
echo "$binary"
