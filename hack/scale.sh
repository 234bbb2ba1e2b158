#!/usr/bin/env bash
# The scale harness (make scale): N hollow fnlet managers in one process
# (the real reconciler, Lease and NodeLost code of internal/node, over a
# hollow runtime) against envtest's real kube-apiserver + etcd, fed calls
# at a fixed rate, one fresh control plane per (protocol, N). Prints one
# table row per run; the table is also saved in scale-results/.
# Not part of `make test`: it measures, it does not assert.
#
#   SCALE_NODES=1,10,100,500  numbers of hollow managers
#   SCALE_PROTOCOLS=old,new   old: every fitting node races for a call
#                             (--claim-stagger -1); new: ranked, staggered
#   SCALE_RATE=20             calls created per second
#   SCALE_DURATION=45s        generator time per run
# Extra arguments go to the program (go run ./test/scale -h lists them),
# e.g. hack/scale.sh -mean-run 1s -kill-fraction 0.2
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FNLET_ROOT"

assets=$(hack/build-k8s.sh --apiserver-only --print-assets | tail -1)
export KUBEBUILDER_ASSETS=$assets
mkdir -p scale-results
bin=$(mktemp -d)/scale
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./test/scale
out=scale-results/scale-$(date +%Y%m%d-%H%M%S).txt
log "results also in $out"
"$bin" -nodes "${SCALE_NODES:-1,10,100,500}" -protocols "${SCALE_PROTOCOLS:-old,new}" \
	-rate "${SCALE_RATE:-20}" -duration "${SCALE_DURATION:-45s}" "$@" | tee "$out"
