#!/usr/bin/env bash
# Build the Go etcd naming peer offline, in GOPATH mode, from Debian's packaged sources (golang-go and
# golang-etcd-server-dev, installed by scripts/install-system.sh): no module download, no network.
#
# Usage: tests/interop/etcd_go/build.sh [OUTPUT]   (default: .artifacts/bin/etcdpeer in the repository)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
OUT=${1:-$REPO/.artifacts/bin/etcdpeer}
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d /tmp/etcdpeer-gopath.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local
export GOPATH="$WORK:/usr/share/gocode" GOCACHE=${GOCACHE:-$REPO/.artifacts/go-cache}
cd "$HERE"
go build -o "$OUT" .
echo "$OUT"
