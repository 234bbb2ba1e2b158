#!/usr/bin/env bash
# Stop the test registry started by hack/registry-up.sh, by its PID file, and
# remove its env file. The state ($FNLET_STATE/registry: CA, certificates,
# pushed blobs) is kept for the next start unless --purge is given.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

REG_STATE=$FNLET_STATE/registry
REG_RUN=$FNLET_RUN/registry
REG_PID=$REG_RUN/pid
purge=false
case "${1:-}" in
"") ;;
--purge) purge=true ;;
*) die "usage: $0 [--purge]" ;;
esac

if pid_alive "$REG_PID"; then
	pid=$(cat "$REG_PID")
	# Only signal the PID if it still is our registry (PIDs get reused).
	if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q docker-registry; then
		kill "$pid"
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
		log "registry (pid $pid) stopped"
	else
		log "PID $pid in $REG_PID is not a docker-registry; not signalling it"
	fi
fi
rm -f "$REG_PID" "$REG_RUN/env"
if $purge; then
	rm -rf "$REG_STATE"
	log "removed $REG_STATE"
fi
