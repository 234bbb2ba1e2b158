#!/usr/bin/env bash
# Tear down the single-node cluster from hack/cluster-up.sh and the control
# plane under it, and undo what they changed on the host:
#   kube-proxy (+ its iptables rules), kubelet, every pod through CRI (CNI DEL
#   frees IPs, veths and masquerade rules), containers of other containerd
#   namespaces, containerd, leftover shims/containers of OUR containerd,
#   scheduler, controller-manager, apiserver, etcd; then our mounts, iptables
#   chains, the fnlet0 bridge, empty kubepods cgroups, /var/log/containers
#   links and the saved sysctls.
# Processes are stopped by their PID files (SIGTERM, wait, SIGKILL); leftovers
# are found by our unique socket and runc root paths, never by name alone.
#   --wipe  also delete all cluster and control-plane state
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

export PATH=$CONTAINERD_BIN:$PATH:/usr/local/sbin:/usr/sbin:/sbin
CONTAINERD=$CONTAINERD_BIN/containerd

# remove_pods deletes every pod sandbox through CRI, so the CNI plugins run
# their DEL, then kills and deletes containers other clients (e.g. fnlet's
# controller) made in other namespaces of the same containerd.
remove_pods() {
	local pods ns id
	if [ -x "$CRICTL_BIN/crictl" ]; then
		local crictl=("$CRICTL_BIN/crictl" --config "$CLUSTER_STATE/crictl.yaml")
		pods=$("${crictl[@]}" pods -q 2>/dev/null || true)
		if [ -n "$pods" ]; then
			# shellcheck disable=SC2086 # one argument per pod ID
			"${crictl[@]}" stopp $pods >/dev/null || true
			# shellcheck disable=SC2086
			"${crictl[@]}" rmp -f $pods >/dev/null || true
			log "removed $(wc -w <<<"$pods") pod sandbox(es) through CRI"
		fi
	else
		log "warning: no crictl ($CRICTL_BIN); pods are cleaned up without CNI DEL"
	fi
	for ns in $(cluster_ctr namespaces ls -q 2>/dev/null); do
		[ "$ns" = k8s.io ] && continue
		for id in $(cluster_ctr -n "$ns" containers ls -q 2>/dev/null); do
			cluster_ctr -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
			cluster_ctr -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
			cluster_ctr -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
		done
	done
}

# kill_leftovers handles a containerd that died before it could clean up:
# shims serving OUR socket, then containers in OUR runc root.
kill_leftovers() {
	local p cmd root id
	for p in /proc/[0-9]*; do
		cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		case "$cmd" in
		*containerd-shim*"-address $CLUSTER_CTRD_SOCK "*)
			log "killing leftover shim ${p#/proc/}"
			kill -KILL "${p#/proc/}" 2>/dev/null || true
			;;
		esac
	done
	for root in "$RUNC_ROOT"/*/; do
		[ -d "$root" ] || continue
		for id in $(runc --root "$root" list -q 2>/dev/null); do
			log "removing leftover runc container $id"
			runc --root "$root" kill "$id" KILL >/dev/null 2>&1 || true
			runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
		done
	done
}

# unmount_ours unmounts everything below our dirs, deepest first: pod netns,
# SA token tmpfs, container rootfs overlays.
unmount_ours() {
	local m
	awk -v a="$CLUSTER_RUN/" -v b="$CLUSTER_STATE/" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/self/mounts |
		sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
	done
}

# drop_chain IPTABLES TABLE CHAIN flushes and deletes CHAIN if it exists.
drop_chain() {
	"$1" -t "$2" -F "$3" 2>/dev/null || return 0
	"$1" -t "$2" -X "$3" 2>/dev/null || true
}

# clean_iptables removes what kube-proxy --cleanup does not: kubelet's own
# chains and CNI masquerade rules of our network left by a crashed runtime.
clean_iptables() {
	local ipt t n
	for ipt in iptables ip6tables; do
		command -v "$ipt" >/dev/null || continue
		while "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
		while "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
		drop_chain "$ipt" filter KUBE-FIREWALL
		for t in mangle nat filter; do
			drop_chain "$ipt" "$t" KUBE-KUBELET-CANARY
		done
		"$ipt" -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
	done
	# The bridge plugin tags its rules 'name: "<network>" id: "<container>"'
	# and jumps to a per-container CNI-... chain; delete rule, then chain.
	local chains num
	chains=$(iptables -t nat -S POSTROUTING 2>/dev/null | grep -F "name: \\\"$CNI_NETWORK\\\"" | grep -o -- 'CNI-[0-9a-f]*' || true)
	for n in $chains; do
		# Rule numbers shift after each delete: look the rule up each time.
		num=$(iptables -t nat -L POSTROUTING --line-numbers -n | awk -v c="$n" '$2 == c { print $1; exit }')
		[ -z "$num" ] || iptables -t nat -D POSTROUTING "$num"
		drop_chain iptables nat "$n"
		log "removed leftover CNI chain $n"
	done
}

main() {
	mkdir -p "$CLUSTER_RUN"
	exec 9>"$CLUSTER_RUN/lock"
	flock 9

	# The PID file outlives a crashed kube-proxy, so it also says whether
	# our rules may be left over; --cleanup would remove anyone's.
	if [ -f "$CLUSTER_RUN/kube-proxy.pid" ]; then
		stop_daemon kube-proxy "$CLUSTER_RUN/kube-proxy.pid" "$K8S_BIN/kube-proxy"
		"$K8S_BIN/kube-proxy" --cleanup >>"$FNLET_LOGS/kube-proxy.log" 2>&1 || log "warning: kube-proxy --cleanup failed"
	fi
	stop_daemon kubelet "$CLUSTER_RUN/kubelet.pid" "$K8S_BIN/kubelet"
	if our_pid "$CLUSTER_RUN/containerd.pid" "$CONTAINERD"; then
		remove_pods
	fi
	stop_daemon containerd "$CLUSTER_RUN/containerd.pid" "$CONTAINERD"
	kill_leftovers
	# No pod of ours runs any more: drop IP reservations a crash may have
	# left, or they would pile up in the /24 across restarts.
	rm -rf "${CNI_IPAM_DIR:?}/$CNI_NETWORK"
	stop_daemon kube-scheduler "$CLUSTER_RUN/kube-scheduler.pid" "$K8S_BIN/kube-scheduler"
	stop_daemon kube-controller-manager "$CLUSTER_RUN/kube-controller-manager.pid" "$K8S_BIN/kube-controller-manager"
	"$FNLET_ROOT/hack/control-plane-down.sh" "$@"

	unmount_ours
	clean_iptables
	if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
		ip link del "$CNI_BRIDGE" && log "deleted bridge $CNI_BRIDGE"
	fi
	# kubelet's cgroups (cgroupfs driver): rmdir only succeeds on empty ones.
	local h l
	for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
	done
	# kubelet hardcodes /var/log/containers; remove the links into our logs.
	for l in /var/log/containers/*.log; do
		[ -L "$l" ] && case "$(readlink "$l")" in "$POD_LOGS_DIR"/*) rm -f "$l" ;; esac
	done
	if [ -f "$CLUSTER_STATE/made-netns-shared" ]; then
		umount -l /run/fnlet/netns 2>/dev/null || true
		rm -f "$CLUSTER_STATE/made-netns-shared"
	fi
	if [ -f "$SYSCTL_ORIG" ]; then
		sysctl -q -e -p "$SYSCTL_ORIG" >/dev/null 2>&1 || log "warning: could not restore every sysctl in $SYSCTL_ORIG"
		rm -f "$SYSCTL_ORIG"
		log "restored sysctls"
	fi

	if $wipe; then
		if [ -f "$CLUSTER_STATE/created-var-lib-kubelet" ]; then
			rm -rf /var/lib/kubelet
		fi
		rm -rf "$CLUSTER_STATE" "$CLUSTER_RUN"
		log "wiped $CLUSTER_STATE and $CLUSTER_RUN"
	fi
	log "cluster down"
}

main "$@"
exit
