#!/usr/bin/env bash
# Build a real SeaweedFS server (`weed`, Apache-2.0) from the Go module proxy and cache it.
#
# Why build: the object-store tests talk to a real S3 server through s3fs, not fsspec's memory
# filesystem. SeaweedFS's releases are not tagged as Go semver, so the module proxy serves it
# only as a pseudo-version, which is pinned here. The build is pure Go (CGO off) but large:
# minutes on two cores, so the binary is cached under ~/.cache/tier3/seaweedfs-<version>/ and
# reused; -s -w strips the symbol tables (faster link, smaller binary).
#
# Usage: scripts/build-seaweedfs.sh [version]     prints the binary's path on stdout.
set -euo pipefail

version="${1:-${TIER3_SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}}"
cache="${TIER3_SEAWEEDFS_CACHE:-$HOME/.cache/tier3}/seaweedfs-${version}"
binary="$cache/bin/weed"
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

start=$(date +%s)
rm -rf "$cache/bin.partial"
# `go install weed@version` refuses the module (its go.mod has replace directives), so the
# module's source is fetched into the user's module cache and built there as the main module,
# replaces honoured; -mod=readonly because that source tree is read-only.
GOFLAGS=-mod=mod go mod download "github.com/seaweedfs/seaweedfs@${version}" >&2
source_dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@${version}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
(cd "$source_dir" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -p 2 -trimpath -ldflags="-s -w" -o "$cache/bin.partial/weed" ./weed) >&2
mv "$cache/bin.partial" "$cache/bin"
echo "built seaweedfs ${version} in $(( $(date +%s) - start ))s" >&2
echo "$(( $(date +%s) - start ))" > "$cache/build-seconds"
echo "$binary"
