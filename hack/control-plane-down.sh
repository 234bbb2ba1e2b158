#!/usr/bin/env bash
# Stop the control plane started by control-plane-up.sh, by PID: SIGTERM,
# wait, then SIGKILL. If cluster-up.sh's node is running on top, it is torn
# down first (via cluster-down.sh), since it cannot live without the apiserver.
#   --wipe  also delete etcd data, PKI and kubeconfigs ($FNLET_STATE/control-plane)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"

wipe=false
for arg in "$@"; do
	case "$arg" in
	--wipe) wipe=true ;;
	*) die "unknown argument: $arg (usage: $0 [--wipe])" ;;
	esac
done

if cluster_running && [ -x "$FNLET_ROOT/hack/cluster-down.sh" ]; then
	log "cluster node components are running; stopping them with cluster-down.sh"
	exec "$FNLET_ROOT/hack/cluster-down.sh" "$@"
fi

mkdir -p "$CP_RUN"
exec 9>"$CP_RUN/lock"
flock 9

# apiserver before etcd: the reverse would make it log storage errors.
stop_daemon kube-apiserver "$CP_RUN/kube-apiserver.pid" "$K8S_BIN/kube-apiserver"
stop_daemon etcd "$CP_RUN/etcd.pid" "$ETCD_BIN/etcd"

if $wipe; then
	rm -rf "$CP_STATE"
	log "wiped $CP_STATE"
fi
