# Settings and helpers shared by the Docker and kind scripts (docker-up.sh,
# docker-down.sh, kind-node-image.sh, kind-e2e.sh). Source it (it sources
# k8s-lib.sh); do not run it.
# shellcheck shell=bash source-path=SCRIPTDIR
# Variables are used by the scripts that source this file:
# shellcheck disable=SC2034

. "$(dirname "${BASH_SOURCE[0]}")/k8s-lib.sh"

# Our own Docker engine: Debian's docker.io, started by hand, with its own
# socket, exec root, data root and containerd, so it shares nothing with a
# system Docker or with the containerds of the other scripts. The data root
# survives docker-down.sh: it is the cache of the node image.
DOCKER_RUN=$FNLET_RUN/docker
DOCKER_STATE=$FNLET_STATE/docker
DOCKER_SOCK=$DOCKER_RUN/docker.sock
DOCKERD_PID=$DOCKER_RUN/dockerd.pid
DOCKER_CTRD_PID=$DOCKER_RUN/containerd.pid
DOCKER_CTRD_SOCK=$DOCKER_RUN/containerd/containerd.sock
# The host settings docker-up.sh found, restored by docker-down.sh.
HOST_STATE_DIR=$DOCKER_RUN/host-orig

KIND_VERSION=${KIND_VERSION:-v0.33.0}
KIND_BIN=$FNLET_CACHE/kind-$KIND_VERSION/bin/kind

# Debian's client, the same version as the daemon: a newer client on PATH
# would negotiate down, but its `docker build` wants BuildKit, which
# Debian's daemon lacks. kind runs `docker` from PATH, hence the directory.
DOCKER_CLI_DIR=$DOCKER_RUN/bin
use_our_docker() {
	mkdir -p "$DOCKER_CLI_DIR"
	ln -sfn /usr/bin/docker "$DOCKER_CLI_DIR/docker"
	export PATH=$DOCKER_CLI_DIR:$PATH
	export DOCKER_HOST=unix://$DOCKER_SOCK
}

# now and since: sub-second wall clock for the timings.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The host-global settings a privileged kind node changes from inside (its
# kubelet and systemd write /proc/sys, which is not namespaced for these)
# and the host networking a Docker engine touches.
HOST_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops
	fs.protected_hardlinks fs.protected_symlinks fs.protected_fifos fs.protected_regular
	net.ipv4.ip_forward)

# host_state_save DIR: the sysctls above, the iptables rules (filter, nat)
# and which of docker0 and Docker's bridges exist, once: a second save
# would record what an earlier run changed.
host_state_save() {
	local dir=$1 k
	[ -s "$dir/sysctl.conf" ] && return 0
	mkdir -p "$dir"
	for k in "${HOST_SYSCTLS[@]}"; do
		echo "$k = $(sysctl -n "$k")"
	done >"$dir/sysctl.conf.tmp"
	mv "$dir/sysctl.conf.tmp" "$dir/sysctl.conf"
	iptables -S >"$dir/iptables-filter.rules" 2>/dev/null || true
	iptables -t nat -S >"$dir/iptables-nat.rules" 2>/dev/null || true
	ip -o link show type bridge | awk -F': ' '{ print $2 }' >"$dir/bridges"
}

# host_state_restore DIR puts back what host_state_save recorded. iptables
# is not restored wholesale: other scripts (a cluster's kube-proxy and CNI)
# may have added rules since, so only the chains and rules Docker adds go,
# and the FORWARD policy is put back. Bridges that did not exist before and
# belong to Docker (docker0, br-<network id>) are deleted.
host_state_restore() {
	local dir=$1 line k v table chain br
	[ -s "$dir/sysctl.conf" ] || return 0
	while IFS=' =' read -r k v; do
		[ -n "$k" ] || continue
		if [ "$(sysctl -n "$k")" != "$v" ]; then
			sysctl -qw "$k=$v"
			log "restored $k = $v"
		fi
	done <"$dir/sysctl.conf"
	for table in filter nat; do
		# Rules jumping to Docker's chains first, then the chains.
		{ iptables -t "$table" -S 2>/dev/null || true; } | { grep -E '^-A .*-j DOCKER' || true; } | while read -r line; do
			grep -qxF -- "$line" "$dir/iptables-$table.rules" && continue
			# shellcheck disable=SC2086 # a rule is words
			iptables -t "$table" ${line/-A/-D} && log "removed iptables -t $table rule: $line"
		done
		{ iptables -t "$table" -S 2>/dev/null || true; } | awk '$1 == "-N" && $2 ~ /^DOCKER/ { print $2 }' | while read -r chain; do
			grep -qx -- "-N $chain" "$dir/iptables-$table.rules" && continue
			iptables -t "$table" -F "$chain" && iptables -t "$table" -X "$chain" && log "removed iptables -t $table chain $chain"
		done
	done
	line=$(grep -E '^-P FORWARD ' "$dir/iptables-filter.rules" || true)
	if [ -n "$line" ] && ! iptables -S FORWARD | grep -qxF -- "$line"; then
		# shellcheck disable=SC2086
		iptables ${line} && log "restored iptables FORWARD policy: $line"
	fi
	for br in $(ip -o link show type bridge | awk -F': ' '{ print $2 }'); do
		case "$br" in docker0 | br-*) ;; *) continue ;; esac
		grep -qx -- "$br" "$dir/bridges" && continue
		ip link delete "$br" && log "deleted bridge $br"
	done
	rm -rf "$dir"
}
