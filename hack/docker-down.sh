#!/usr/bin/env bash
# Stop what hack/docker-up.sh started, by PID: dockerd (its containers go
# first: docker-down is for when nothing of ours runs on it any more), then
# its containerd. Removes the networks of stopped containers and docker0,
# so no bridge stays on the host. The data root (the images) stays.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/docker-lib.sh"

main() {
	local t net
	t=$(now)
	use_our_docker
	if our_pid "$DOCKERD_PID" /usr/sbin/dockerd; then
		# A container left running would keep its bridge and shim.
		docker ps -aq | xargs -r docker rm -f -v >/dev/null || true
		for net in $(docker network ls --filter type=custom -q); do
			docker network rm "$net" >/dev/null || log "warning: docker network rm $net failed"
		done
	fi
	stop_daemon dockerd "$DOCKERD_PID" /usr/sbin/dockerd
	stop_daemon docker-containerd "$DOCKER_CTRD_PID" /usr/bin/containerd
	# dockerd leaves its default bridge behind.
	if ip link show docker0 >/dev/null 2>&1 && ! grep -qx docker0 "$HOST_STATE_DIR/bridges" 2>/dev/null; then
		ip link delete docker0 && log "deleted bridge docker0"
	fi
	log "docker down in $(since "$t")s"
}

main "$@"
exit
