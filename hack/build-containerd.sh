#!/usr/bin/env bash
# Build containerd 2.x (daemon, runc shim, ctr) from the Go module proxy into
# the cache, once per version. ~1-2 min cold on a 2-core machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if [ -x "$CONTAINERD_BIN/containerd" ] && [ -x "$CONTAINERD_BIN/containerd-shim-runc-v2" ] && [ -x "$CONTAINERD_BIN/ctr" ]; then
	exit 0
fi
mkdir -p "$CONTAINERD_BIN"
start=$(date +%s)
log "building containerd $CONTAINERD_VERSION into $CONTAINERD_BIN"
GOBIN=$CONTAINERD_BIN GOFLAGS=-mod=mod go install -trimpath \
	-ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
	"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
	"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
log "containerd $CONTAINERD_VERSION built in $(( $(date +%s) - start ))s"
