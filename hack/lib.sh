# Shared settings for fnlet's hack/ scripts. Source it; do not run it.
# Everything built is cached outside the repo (keyed by version); everything
# started keeps its PID, socket, root and state under FNLET_RUN / FNLET_STATE.

FNLET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FNLET_CACHE=${FNLET_CACHE:-${HOME:-/root}/.cache/fnlet}
FNLET_STATE=${FNLET_STATE:-/var/lib/fnlet-dev}
FNLET_RUN=${FNLET_RUN:-/run/fnlet-dev}
FNLET_LOGS=${FNLET_LOGS:-$FNLET_STATE/logs}

CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
# FNLET_CONTAINERD selects the daemon the tests run against: "2" (built from
# Go modules, the primary target) or "1.6" (Debian's package, compatibility).
FNLET_CONTAINERD=${FNLET_CONTAINERD:-2}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}

CONTAINERD_BIN=$FNLET_CACHE/containerd-$CONTAINERD_VERSION/bin
K8S_BIN=$FNLET_CACHE/kubernetes-$K8S_VERSION/bin
ETCD_BIN=$FNLET_CACHE/etcd-$ETCD_VERSION/bin

# The private test containerd.
CTRD_DIR=$FNLET_RUN/containerd-$FNLET_CONTAINERD
CTRD_SOCK=$CTRD_DIR/containerd.sock
CTRD_PID=$CTRD_DIR/pid
CTRD_ROOT=$FNLET_STATE/containerd-$FNLET_CONTAINERD/root
CTRD_NS=${CTRD_NS:-fnlet}

export CGO_ENABLED=0

log() { printf '%s [%s] %s\n' "$(date +%T)" "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ctr_cmd runs the ctr matching the selected daemon.
ctr_cmd() {
	local ctr=ctr
	[ "$FNLET_CONTAINERD" = 2 ] && ctr=$CONTAINERD_BIN/ctr
	"$ctr" --address "$CTRD_SOCK" --namespace "$CTRD_NS" "$@"
}

# wait_for CMD... retries CMD every 0.2s for up to WAIT_SECS (default 30).
wait_for() {
	local i n=$(( ${WAIT_SECS:-30} * 5 ))
	for ((i = 0; i < n; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
