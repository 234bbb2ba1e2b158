# Settings and helpers shared by the control-plane and cluster scripts.
# Source it (it sources lib.sh); do not run it.
# shellcheck shell=bash source-path=SCRIPTDIR
# Variables are used by the scripts that source this file:
# shellcheck disable=SC2034

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Control plane: etcd + kube-apiserver. State survives restarts; PID files
# live under /run so a reboot cannot make us trust a recycled PID.
CP_STATE=$FNLET_STATE/control-plane
CP_RUN=$FNLET_RUN/control-plane
PKI_DIR=$CP_STATE/pki
ADMIN_KUBECONFIG=$CP_STATE/admin.kubeconfig
APISERVER_PORT=${FNLET_APISERVER_PORT:-6443}
# 0.0.0.0, not 127.0.0.1: pods reach the apiserver through the kubernetes
# Service, which kube-proxy DNATs to NODE_IP:APISERVER_PORT. Kubeconfigs on
# the host still use 127.0.0.1.
APISERVER_BIND=${FNLET_APISERVER_BIND:-0.0.0.0}
ETCD_PORT=${FNLET_ETCD_PORT:-2379}
ETCD_PEER_PORT=${FNLET_ETCD_PEER_PORT:-2380}
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1 # first address of SERVICE_CIDR: the kubernetes Service
CLUSTER_DNS=10.96.0.10 # nothing serves it; kubelet just needs a value

# Single-node cluster on top of the control plane: its own containerd
# (socket, root, state, runc root), kubelet dirs, CNI config and IPAM state.
CLUSTER_STATE=$FNLET_STATE/cluster
CLUSTER_RUN=$FNLET_RUN/cluster
CLUSTER_CTRD_DIR=$CLUSTER_RUN/containerd
CLUSTER_CTRD_SOCK=$CLUSTER_CTRD_DIR/containerd.sock
CLUSTER_CTRD_STATE=$CLUSTER_CTRD_DIR/state
CLUSTER_CTRD_ROOT=$CLUSTER_STATE/containerd
RUNC_ROOT=$CLUSTER_RUN/runc
KUBELET_DIR=$CLUSTER_STATE/kubelet
POD_LOGS_DIR=$CLUSTER_STATE/pod-logs
CNI_CONF_DIR=$CLUSTER_STATE/cni/net.d
CNI_IPAM_DIR=$CLUSTER_STATE/cni/ipam
SYSCTL_ORIG=$CLUSTER_STATE/sysctl-orig.conf
POD_CIDR=10.244.0.0/24
CNI_BRIDGE=fnlet0
CNI_NETWORK=fnlet-dev # the conflist's name; CNI tags its iptables rules with it
SANDBOX_IMAGE=localhost/fnlet/pause:v1
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
CRICTL_BIN=$FNLET_CACHE/cri-tools-$CRICTL_VERSION/bin

NODE_NAME=${FNLET_NODE_NAME:-$(hostname)}
# NODE_IP is the source address of the default route: what pods and the
# kubernetes Service endpoint use. Loopback would not work from a pod netns.
NODE_IP=${FNLET_NODE_IP:-$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}
NODE_IP=${NODE_IP:-127.0.0.1}

# our_pid PIDFILE BINARY succeeds if PIDFILE names a live process running
# BINARY. Stricter than pid_alive: a stale file must not make us signal or
# trust an unrelated process that reused the PID.
our_pid() {
	local pid
	[ -f "$1" ] || return 1
	pid=$(cat "$1")
	[ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$2" ]
}

# start_daemon NAME PIDFILE CMD... starts CMD in its own session (it must
# outlive the calling shell), logging to $FNLET_LOGS/NAME.log.
start_daemon() {
	local name=$1 pidfile=$2
	shift 2
	mkdir -p "$(dirname "$pidfile")" "$FNLET_LOGS"
	printf '\n==== %s starting %s\n' "$(date -Is)" "$*" >>"$FNLET_LOGS/$name.log"
	# 8>&- 9>&-: the scripts' flocks (9: up/down, 8: bench.sh); a daemon
	# inheriting one would hold that lock for its whole life.
	setsid "$@" >>"$FNLET_LOGS/$name.log" 2>&1 </dev/null 8>&- 9>&- &
	echo $! >"$pidfile"
	log "started $name (pid $!, log $FNLET_LOGS/$name.log)"
}

# stop_daemon NAME PIDFILE BINARY: SIGTERM, up to 15 s grace, then SIGKILL.
stop_daemon() {
	local name=$1 pidfile=$2 bin=$3 pid i
	if ! our_pid "$pidfile" "$bin"; then
		rm -f "$pidfile"
		return 0
	fi
	pid=$(cat "$pidfile")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 75; i++)); do
		[ -d "/proc/$pid" ] || break
		sleep 0.2
	done
	if [ -d "/proc/$pid" ]; then
		log "$name (pid $pid) ignored SIGTERM for 15s; killing"
		kill -KILL "$pid" 2>/dev/null || true
		sleep 0.2
	fi
	rm -f "$pidfile"
	log "stopped $name (pid $pid)"
}

# cluster_running succeeds if any node-side daemon of cluster-up.sh is alive.
cluster_running() {
	local f
	for f in "$CLUSTER_RUN"/*.pid; do
		pid_alive "$f" && return 0
	done
	return 1
}

# port_busy PORT succeeds if something listens on TCP PORT.
port_busy() { ss -Htln "sport = :$1" | grep -q .; }

# apiserver_ready succeeds once /readyz answers ok over the admin identity.
apiserver_ready() {
	[ "$(curl -sf --max-time 2 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
		"https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null)" = ok ]
}

# cluster_ctr runs containerd 2.x's ctr against the cluster's containerd,
# without its "cgroup v1 is deprecated" warning on every call.
cluster_ctr() {
	"$CONTAINERD_BIN/ctr" --address "$CLUSTER_CTRD_SOCK" "$@" 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
}

# kubectl_admin runs kubectl as cluster admin: ours (same version as the
# server) once build-k8s.sh made it, else the machine's.
kubectl_admin() {
	local kubectl=$K8S_BIN/kubectl
	[ -x "$kubectl" ] || kubectl=kubectl
	"$kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"
}
