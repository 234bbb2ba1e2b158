#!/usr/bin/env bash
# Start a Docker engine for kind: Debian's docker.io (installed if missing),
# dockerd and its containerd started by hand in the background (no systemd
# here), with their own socket, exec root and data root:
#   socket     $FNLET_RUN/docker/docker.sock   (DOCKER_HOST=unix://...)
#   data root  $FNLET_STATE/docker              (kept: it caches images)
# Idempotent: an engine already running from these paths is reused.
# Prints `export DOCKER_HOST=...` on stdout, for eval.
#
# Host settings: dockerd runs with --iptables=false and --ip-forward=false,
# so it adds no NAT or filter rules and leaves net.ipv4.ip_forward alone:
# kind needs neither (nothing leaves this machine; the API server's port
# is published by docker-proxy on 127.0.0.1). docker0 and kind's bridge
# are still made; docker-down.sh deletes them.
#
# Where root's capability bounding set lacks CAP_SYS_RESOURCE (containers
# in some sandboxes), every privileged container fails at start ("unable
# to apply caps: operation not permitted"), kind's nodes included. Then
# dockerd's default runtime is a wrapper that drops that capability from
# the spec and runs runc; elsewhere it is plain runc.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/docker-lib.sh"

# needs_nosysres: CAP_SYS_RESOURCE (bit 24) missing from our bounding set.
needs_nosysres() {
	local bnd
	bnd=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
	(((0x$bnd >> 24 & 1) == 0))
}

# write_wrapper FILE: a runc that removes CAP_SYS_RESOURCE from what it is
# asked to run: the bundle's config.json (create, run) and the process file
# of `runc exec --process` (docker exec).
write_wrapper() {
	cat >"$1.tmp" <<'EOF'
#!/bin/bash
# Written by hack/docker-up.sh: runc without CAP_SYS_RESOURCE (this host's
# bounding set lacks it, so asking for it fails every privileged container).
set -euo pipefail
drop='del(.[]? | select(. == "CAP_SYS_RESOURCE"))'
strip() { # strip FILE JQPATH
	local tmp
	tmp=$(mktemp "$1.XXXXXX")
	jq "$2.bounding |= ($drop) | $2.effective |= ($drop) | $2.permitted |= ($drop) | $2.inheritable |= ($drop) | $2.ambient |= ($drop)" "$1" >"$tmp"
	chmod --reference="$1" "$tmp"
	mv "$tmp" "$1"
}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
	case "${args[i]}" in
	--bundle | -b) [ -f "${args[i + 1]}/config.json" ] && strip "${args[i + 1]}/config.json" .process.capabilities ;;
	--bundle=*) [ -f "${args[i]#--bundle=}/config.json" ] && strip "${args[i]#--bundle=}/config.json" .process.capabilities ;;
	--process | -p) [ -f "${args[i + 1]}" ] && strip "${args[i + 1]}" .capabilities ;;
	--process=*) [ -f "${args[i]#--process=}" ] && strip "${args[i]#--process=}" .capabilities ;;
	esac
done
exec runc "$@"
EOF
	chmod 0755 "$1.tmp"
	mv "$1.tmp" "$1"
}

install_docker() {
	local missing=() p
	for p in docker.io jq; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

main() {
	local t runtime_args=()
	t=$(now)
	install_docker
	use_our_docker
	if our_pid "$DOCKERD_PID" /usr/sbin/dockerd && docker info >/dev/null 2>&1; then
		log "dockerd already running (pid $(cat "$DOCKERD_PID"))"
		echo "export DOCKER_HOST=$DOCKER_HOST"
		return 0
	fi
	mkdir -p "$DOCKER_RUN/containerd" "$DOCKER_STATE"
	# Its own containerd: dockerd would otherwise attach to whatever
	# containerd listens on /run/containerd/containerd.sock.
	if ! our_pid "$DOCKER_CTRD_PID" /usr/bin/containerd; then
		cat >"$DOCKER_RUN/containerd.toml" <<EOF
version = 2
root = "$DOCKER_STATE/containerd"
state = "$DOCKER_RUN/containerd/state"
[grpc]
  address = "$DOCKER_CTRD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  disable = true
EOF
		start_daemon docker-containerd "$DOCKER_CTRD_PID" /usr/bin/containerd --config "$DOCKER_RUN/containerd.toml"
		WAIT_SECS=30 wait_for test -S "$DOCKER_CTRD_SOCK" || die "containerd for dockerd did not start: $FNLET_LOGS/docker-containerd.log"
	fi
	if needs_nosysres; then
		write_wrapper "$DOCKER_RUN/runc-nosysres"
		runtime_args=(--add-runtime "nosysres=$DOCKER_RUN/runc-nosysres" --default-runtime nosysres)
		log "CAP_SYS_RESOURCE is not in the bounding set: default runtime is the runc wrapper $DOCKER_RUN/runc-nosysres"
	fi
	start_daemon dockerd "$DOCKERD_PID" /usr/sbin/dockerd \
		--host "$DOCKER_HOST" --pidfile "$DOCKER_RUN/dockerd.own.pid" \
		--exec-root "$DOCKER_RUN/exec" --data-root "$DOCKER_STATE/data" \
		--containerd "$DOCKER_CTRD_SOCK" --containerd-namespace fnlet-docker \
		--containerd-plugins-namespace fnlet-docker-plugins \
		--storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
		--iptables=false --ip-forward=false --ip-masq=false \
		"${runtime_args[@]}"
	WAIT_SECS=60 wait_for docker info || die "dockerd did not answer within 60s: $FNLET_LOGS/dockerd.log"
	log "dockerd up in $(since "$t")s (pid $(cat "$DOCKERD_PID"), $DOCKER_HOST)"
	echo "export DOCKER_HOST=$DOCKER_HOST"
}

main "$@"
exit
