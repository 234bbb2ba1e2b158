#!/usr/bin/env bash
# Bring up a real single-node Kubernetes cluster on this machine, on top of
# hack/control-plane-up.sh (reused if running):
#   kube-controller-manager, kube-scheduler,
#   containerd 2.x with CRI (own socket/root/state, bridge CNI fnlet0 10.244.0.0/24),
#   kubelet (cgroupfs, cgroup v1 allowed), kube-proxy (iptables),
#   a locally built pause image imported into containerd's k8s.io namespace.
# Waits for the node to be Ready. Idempotent: running components are reused.
# Builds what is missing first (hack/build-k8s.sh, hack/build-containerd.sh).
#
# stdout (for eval):
#   export KUBECONFIG=.../admin.kubeconfig
#   export FNLET_CLUSTER_CONTAINERD_SOCK=.../containerd.sock
# Logs: $FNLET_LOGS/<component>.log. Stop with hack/cluster-down.sh [--wipe].
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"

KCM=$K8S_BIN/kube-controller-manager
SCHEDULER=$K8S_BIN/kube-scheduler
KUBELET=$K8S_BIN/kubelet
KUBE_PROXY=$K8S_BIN/kube-proxy
CONTAINERD=$CONTAINERD_BIN/containerd
PAUSE_TAR=$FNLET_CACHE/cluster-images/pause-v1.tar

# The containerd shim is looked up in PATH (ours must beat Debian's 1.6 shim),
# and containerd's CNI plugins, kubelet and kube-proxy exec iptables/conntrack.
export PATH=$CONTAINERD_BIN:$PATH:/usr/local/sbin:/usr/sbin:/sbin

# render TEMPLATE OUT replaces each @NAME@ in hack/cluster/TEMPLATE with $NAME.
render() {
	local args=() name
	for name in CLUSTER_CTRD_ROOT CLUSTER_CTRD_STATE CLUSTER_CTRD_SOCK SANDBOX_IMAGE RUNC_ROOT CNI_CONF_DIR CNI_BRIDGE CNI_NETWORK \
		POD_CIDR CNI_IPAM_DIR PKI_DIR CLUSTER_DNS POD_LOGS_DIR KUBELET_DIR; do
		args+=(-e "s|@$name@|${!name}|g")
	done
	sed "${args[@]}" "$FNLET_ROOT/hack/cluster/$1" >"$2.tmp"
	if grep -n '@[A-Z_]*@' "$2.tmp" >&2; then
		die "unrendered placeholders in $2"
	fi
	mv "$2.tmp" "$2"
}

ensure_binaries() {
	local b missing=false
	for b in "$KCM" "$SCHEDULER" "$KUBELET" "$KUBE_PROXY" "$K8S_BIN/kubectl" "$CRICTL_BIN/crictl"; do
		[ -x "$b" ] || missing=true
	done
	if $missing; then
		"$FNLET_ROOT/hack/build-k8s.sh" >&2
	fi
	"$FNLET_ROOT/hack/build-containerd.sh" >&2
}

# ensure_free PORT...: a port held by something else means another cluster or
# daemon; starting ours anyway would fail later in a less obvious way.
ensure_free() {
	local p
	for p in "$@"; do
		port_busy "$p" && die "port $p is taken by another process (another cluster running?)"
	done
	return 0
}

start_kcm() {
	our_pid "$CLUSTER_RUN/kube-controller-manager.pid" "$KCM" && return 0
	ensure_free 10257
	# --use-service-account-credentials: each controller gets its own SA;
	# --root-ca-file: kube-root-ca.crt ConfigMaps, which SA token volumes need.
	start_daemon kube-controller-manager "$CLUSTER_RUN/kube-controller-manager.pid" "$KCM" \
		--kubeconfig="$PKI_DIR/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$PKI_DIR/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$PKI_DIR/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$PKI_DIR/sa.key" \
		--root-ca-file="$PKI_DIR/ca.crt" \
		--cluster-signing-cert-file="$PKI_DIR/ca.crt" \
		--cluster-signing-key-file="$PKI_DIR/ca.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--allocate-node-cidrs=false \
		--leader-elect=false
}

start_scheduler() {
	our_pid "$CLUSTER_RUN/kube-scheduler.pid" "$SCHEDULER" && return 0
	ensure_free 10259
	start_daemon kube-scheduler "$CLUSTER_RUN/kube-scheduler.pid" "$SCHEDULER" \
		--kubeconfig="$PKI_DIR/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$PKI_DIR/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$PKI_DIR/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 \
		--leader-elect=false
}

# prepare_host sets the sysctls pod networking needs, after saving the
# originals of those we and kubelet/kube-proxy change; cluster-down.sh
# restores them. Saved once, so a re-run does not record our own values.
prepare_host() {
	mkdir -p "$CLUSTER_STATE"
	# network: pod (config/components/pod-network) mounts /run/fnlet/netns
	# Bidirectional, which the runtime allows only on a shared mount. A
	# systemd host's / is shared; this one may not be: then the directory is
	# made a shared mount of its own (cluster-down.sh undoes it).
	mkdir -p /run/fnlet/netns
	if ! findmnt -n -o PROPAGATION --target /run/fnlet/netns | grep -q shared; then
		mountpoint -q /run/fnlet/netns || mount --bind /run/fnlet/netns /run/fnlet/netns
		mount --make-shared /run/fnlet/netns
		touch "$CLUSTER_STATE/made-netns-shared"
		log "made /run/fnlet/netns a shared mount (for config/components/pod-network)"
	fi
	[ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null ||
		log "warning: no br_netfilter; service IPs may not work from pods"
	if [ ! -f "$SYSCTL_ORIG" ]; then
		local k
		for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet \
			vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
			kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
			sysctl -e "$k"
		done >"$SYSCTL_ORIG.tmp"
		mv "$SYSCTL_ORIG.tmp" "$SYSCTL_ORIG"
	fi
	# Forwarding for pod traffic; bridge netfilter so kube-proxy's DNAT of
	# service IPs also applies between pods on the same bridge.
	sysctl -qw net.ipv4.ip_forward=1
	sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
	# kubelet's hardcoded /var/lib/kubelet/{device-plugins,...}: remember
	# whether we created it, so cluster-down.sh --wipe removes only ours.
	if [ ! -e /var/lib/kubelet ]; then
		mkdir -p /var/lib/kubelet
		touch "$CLUSTER_STATE/created-var-lib-kubelet"
	fi
}

start_containerd() {
	mkdir -p "$CLUSTER_CTRD_DIR" "$CLUSTER_CTRD_ROOT" "$RUNC_ROOT" "$CNI_CONF_DIR" "$CNI_IPAM_DIR" "$POD_LOGS_DIR" "$KUBELET_DIR"
	render containerd.toml "$CLUSTER_STATE/containerd.toml"
	render bridge.conflist "$CNI_CONF_DIR/10-fnlet-bridge.conflist"
	render crictl.yaml "$CLUSTER_STATE/crictl.yaml"
	if our_pid "$CLUSTER_RUN/containerd.pid" "$CONTAINERD"; then
		log "reusing containerd (pid $(cat "$CLUSTER_RUN/containerd.pid"))"
	else
		start_daemon containerd "$CLUSTER_RUN/containerd.pid" "$CONTAINERD" --config "$CLUSTER_STATE/containerd.toml"
	fi
	if ! WAIT_SECS=30 wait_for cluster_ctr version; then
		tail -20 "$FNLET_LOGS/containerd.log" >&2
		die "containerd did not come up on $CLUSTER_CTRD_SOCK"
	fi
}

# ensure_pause_image builds the sandbox image (a static Go program packed by
# hack/tools/mkimage; rebuilt only when its inputs change) and imports it into
# the k8s.io namespace unless that digest is already there.
ensure_pause_image() {
	local key digest have work
	mkdir -p "$(dirname "$PAUSE_TAR")"
	key=$( (
		cd "$FNLET_ROOT"
		cat hack/cluster/pause/*.go hack/tools/mkimage/*.go
		go version
	) | sha256sum | cut -d' ' -f1)
	if [ "$(cat "$PAUSE_TAR.key" 2>/dev/null)" != "$key" ] || [ ! -s "$PAUSE_TAR" ]; then
		work=$(mktemp -d "$(dirname "$PAUSE_TAR")/.work.XXXXXX")
		mkdir -p "$work/rootfs"
		go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -ldflags "-s -w" -o "$work/rootfs/pause" ./hack/cluster/pause
		go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -o "$work/mkimage" ./hack/tools/mkimage
		SOURCE_DATE_EPOCH=1704067200 "$work/mkimage" -rootfs "$work/rootfs" -ref "$SANDBOX_IMAGE" \
			-out "$work/pause.tar" -entrypoint /pause >"$work/digest"
		mv "$work/pause.tar" "$PAUSE_TAR"
		mv "$work/digest" "$PAUSE_TAR.digest"
		echo "$key" >"$PAUSE_TAR.key"
		rm -rf "$work"
		log "built $SANDBOX_IMAGE ($(cat "$PAUSE_TAR.digest"))"
	fi
	digest=$(cat "$PAUSE_TAR.digest")
	have=$(cluster_ctr -n k8s.io images ls "name==$SANDBOX_IMAGE" | awk -v r="$SANDBOX_IMAGE" '$1 == r { print $3 }')
	if [ "$have" != "$digest" ]; then
		cluster_ctr -n k8s.io images import "$PAUSE_TAR" >/dev/null
		log "imported $SANDBOX_IMAGE ($digest) into $CLUSTER_CTRD_SOCK namespace k8s.io"
	fi
}

start_kubelet() {
	render kubelet.yaml "$CLUSTER_STATE/kubelet.yaml"
	our_pid "$CLUSTER_RUN/kubelet.pid" "$KUBELET" && return 0
	ensure_free 10250 10248
	start_daemon kubelet "$CLUSTER_RUN/kubelet.pid" "$KUBELET" \
		--config="$CLUSTER_STATE/kubelet.yaml" \
		--kubeconfig="$PKI_DIR/kubelet-$NODE_NAME.kubeconfig" \
		--root-dir="$KUBELET_DIR" \
		--cert-dir="$KUBELET_DIR/pki" \
		--hostname-override="$NODE_NAME" \
		--node-ip="$NODE_IP" \
		--v=1
}

# kube-proxy makes the kubernetes Service (SERVICE_IP:443) reach the
# apiserver from pods. The conntrack flags keep it from changing host sysctls.
start_kube_proxy() {
	our_pid "$CLUSTER_RUN/kube-proxy.pid" "$KUBE_PROXY" && return 0
	ensure_free 10249 10256
	start_daemon kube-proxy "$CLUSTER_RUN/kube-proxy.pid" "$KUBE_PROXY" \
		--kubeconfig="$PKI_DIR/kube-proxy.kubeconfig" \
		--hostname-override="$NODE_NAME" \
		--cluster-cidr="$POD_CIDR" \
		--proxy-mode=iptables \
		--conntrack-max-per-core=0 \
		--conntrack-tcp-timeout-established=0 \
		--conntrack-tcp-timeout-close-wait=0 \
		--nodeport-addresses=primary \
		--metrics-bind-address=127.0.0.1:10249 \
		--healthz-bind-address=127.0.0.1:10256
}

# shellcheck disable=SC2317 # called through wait_for
kubelet_healthy() { [ "$(curl -sf --max-time 2 http://127.0.0.1:10248/healthz)" = ok ]; }

# shellcheck disable=SC2317 # called through wait_for
node_ready() {
	[ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

main() {
	mkdir -p "$CLUSTER_RUN" "$CLUSTER_STATE" "$FNLET_LOGS"
	exec 9>"$CLUSTER_RUN/lock"
	flock 9

	ensure_binaries
	local start=$SECONDS
	"$FNLET_ROOT/hack/control-plane-up.sh" >/dev/null
	start_kcm
	start_scheduler
	prepare_host
	start_containerd
	ensure_pause_image
	start_kubelet
	start_kube_proxy
	# Both: a kubelet restarted a moment ago still has a Ready node object.
	if ! WAIT_SECS=180 wait_for kubelet_healthy || ! WAIT_SECS=180 wait_for node_ready; then
		tail -30 "$FNLET_LOGS/kubelet.log" >&2
		die "node $NODE_NAME not Ready after 180s (logs in $FNLET_LOGS)"
	fi
	log "cluster up in $((SECONDS - start))s: node $NODE_NAME Ready, containerd $CLUSTER_CTRD_SOCK"
	echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
	echo "export FNLET_CLUSTER_CONTAINERD_SOCK=$CLUSTER_CTRD_SOCK"
}

# Called last so bash has parsed the whole file first: editing this script
# while it runs (builds can take minutes) cannot change what it executes.
main
exit
