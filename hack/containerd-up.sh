#!/usr/bin/env bash
# Start a private containerd for fnlet's tests: own socket, root, state and PID
# file. Idempotent: a running instance is reused. FNLET_CONTAINERD=2 (default,
# built from Go modules) or 1.6 (Debian's package).
# Prints the socket path on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if pid_alive "$CTRD_PID"; then
	echo "$CTRD_SOCK"
	exit 0
fi
case "$FNLET_CONTAINERD" in
2)
	"$FNLET_ROOT/hack/build-containerd.sh"
	bin=$CONTAINERD_BIN/containerd
	# The daemon execs the shim from PATH: ours must win over Debian's 1.6 shim.
	export PATH=$CONTAINERD_BIN:$PATH
	cfgver=3
	cri='"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim"'
	;;
1.6)
	command -v containerd >/dev/null || die "Debian containerd missing: run hack/install-deps.sh"
	bin=$(command -v containerd)
	cfgver=2
	cri='"io.containerd.grpc.v1.cri"'
	;;
*) die "FNLET_CONTAINERD must be 2 or 1.6, got $FNLET_CONTAINERD" ;;
esac

mkdir -p "$CTRD_DIR" "$CTRD_ROOT" "$FNLET_LOGS"
cat >"$CTRD_DIR/config.toml" <<CFG
version = $cfgver
root = "$CTRD_ROOT"
state = "$CTRD_DIR/state"
# No CRI: the test daemon serves only fnlet's own namespace.
disabled_plugins = [$cri]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  level = "info"
# A create cut short (the client died) makes containerd delete the new task
# within this timeout (and shut its shim down within as much again), but
# the runc shim waits up to 10 s for the IO of a created, never started
# process to drain before it deletes it. At the default 5 s containerd
# gives up and forgets the shim, which then holds "runc init" for ever
# (docs/runtime.md, "Abandoned creates"). Not much more: the runtime waits
# 40 s (2 x 15 s + 10) for that cleanup to remove the bundle in the way of
# a retried create (staleBundleWait).
[timeouts]
  "io.containerd.timeout.shim.cleanup" = "15s"
CFG
logf=$FNLET_LOGS/containerd-$FNLET_CONTAINERD.log
# setsid: the daemon must not die with the shell that started it.
# 8>&- 9>&-: never inherit a caller's flock (bench.sh, build-images.sh).
setsid "$bin" --config "$CTRD_DIR/config.toml" >>"$logf" 2>&1 </dev/null 8>&- 9>&- &
echo $! >"$CTRD_PID"
if ! WAIT_SECS=30 wait_for ctr_cmd version; then
	tail -20 "$logf" >&2
	die "containerd did not come up on $CTRD_SOCK (log: $logf)"
fi
log "containerd $FNLET_CONTAINERD up: pid $(cat "$CTRD_PID"), socket $CTRD_SOCK, log $logf"
echo "$CTRD_SOCK"
