#!/usr/bin/env bash
# Benchmark one full cold call (image present, /testfn exiting 0 at once)
# three ways, interleaved round-robin in one run: through internal/ctrd, with
# the raw containerd Go client, and with `ctr run --rm`. Prints p50/p95/mean,
# the ratios to raw and a per-phase breakdown; writes the samples as JSON to
# bench-results/ (git-ignored). The goal is ctrd <= 1.15x raw.
#
#   BENCH_N=30            calls per way
#   BENCH_RUNTIME=runc    OCI runtime (runc or crun)
#   FNLET_CONTAINERD=2    daemon to use (2 or 1.6, see hack/lib.sh); or set
#                         FNLET_CONTAINERD_ADDRESS to a socket
#   BENCH_NAMESPACE=fnlet-bench  containerd namespace (the test images are
#                         imported into it)
# Extra arguments go to the program (test/bench, which hack/bench.sh runs
# with the fnlet and pod ways too), e.g.
#   hack/bench-runtime.sh -cpuprofile /tmp/cpu.pprof
#   hack/bench-runtime.sh -- -stdout-text hi     (args for /testfn)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FNLET_ROOT"

addr=${FNLET_CONTAINERD_ADDRESS:-$CTRD_SOCK}
[ -S "$addr" ] || die "no containerd socket at $addr: run hack/containerd-up.sh and hack/build-images.sh (make images)"
# The program picks the ctr matching the daemon's version from this cache.
export FNLET_CACHE

# Its own namespace: managers and tests sharing the daemon (whose orphan GC
# removes fnlet containers it does not know) leave the benchmark alone.
ns=${BENCH_NAMESPACE:-fnlet-bench}
if [ "$addr" = "$CTRD_SOCK" ]; then
	IMPORT_NAMESPACE=$ns hack/build-images.sh >/dev/null
else
	IMPORT_ADDRESS=$addr IMPORT_NAMESPACE=$ns hack/build-images.sh >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/runtime-bench" ./test/bench
hack/build-init.sh "$tmp/fnlet-init" # the runtime runs calls under it, as the manager does

"$tmp/runtime-bench" -address "$addr" -namespace "$ns" \
	-n "${BENCH_N:-30}" -runtime "${BENCH_RUNTIME:-runc}" -init "$tmp/fnlet-init" \
	-out "$FNLET_ROOT/bench-results" "$@"
