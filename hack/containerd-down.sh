#!/usr/bin/env bash
# Stop the private test containerd started by containerd-up.sh, by PID.
# Shims of our containers keep running by design; --wipe also kills the tasks
# in our namespace first and removes the root.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
wipe=false
[ "${1:-}" = --wipe ] && wipe=true
if pid_alive "$CTRD_PID"; then
	if $wipe; then
		for ns in $(ctr_cmd namespaces ls -q 2>/dev/null); do
			for t in $(CTRD_NS=$ns ctr_cmd tasks ls -q 2>/dev/null); do
				CTRD_NS=$ns ctr_cmd tasks kill -s KILL "$t" >/dev/null 2>&1 || true
				CTRD_NS=$ns ctr_cmd tasks rm -f "$t" >/dev/null 2>&1 || true
			done
			for c in $(CTRD_NS=$ns ctr_cmd containers ls -q 2>/dev/null); do
				CTRD_NS=$ns ctr_cmd containers rm "$c" >/dev/null 2>&1 || true
			done
		done
	fi
	pid=$(cat "$CTRD_PID")
	kill "$pid"
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
	log "containerd $FNLET_CONTAINERD (pid $pid) stopped"
fi
rm -f "$CTRD_PID"
if $wipe; then
	grep " $CTRD_ROOT" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	rm -rf "$CTRD_ROOT" "$CTRD_DIR"
fi
