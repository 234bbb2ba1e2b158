#!/usr/bin/env bash
# The chaos suite (`make chaos`): faults injected into a running fnlet —
# manager SIGKILLs, containerd SIGKILLs, a kube-apiserver outage, 1000 mixed
# calls for leaks, bad input, nodes lost among three managers — and a table
# of what users would see: calls lost, run twice, leaked objects, wrong
# statuses (all must be 0).
#
# It starts what it needs like hack/test.sh does, but its containerd is its
# own: FNLET_RUN=/run/fnlet-chaos and FNLET_STATE=/var/lib/fnlet-chaos, and
# calls run in containerd namespace fnlet-chaos (fnlet-chaos-n1..3 for the
# three nodes of the node-lost test). The tests SIGKILL that
# daemon by its PID file; nothing another test or the demo uses is touched.
# A chaos containerd left by an interrupted run is wiped first, so every
# run starts from zero objects. The kube-apiserver + etcd are envtest's,
# private to the test process.
#
# Usage: hack/chaos.sh [go test flags, e.g. -run TestManagerCrashes]
# Bounded: about 10-15 minutes on 2 cores; go test's -timeout is 40m.
# Prints the table at the end (also in $FNLET_LOGS/chaos-report.txt).
set -euo pipefail
export FNLET_RUN=${FNLET_CHAOS_RUN:-/run/fnlet-chaos}
export FNLET_STATE=${FNLET_CHAOS_STATE:-/var/lib/fnlet-chaos}
export FNLET_CONTAINERD=2
. "$(dirname "$0")/lib.sh"
cd "$FNLET_ROOT"
export FNLET_REQUIRE_DAEMONS=1
T0=$SECONDS
step() { log "== $* ($((SECONDS - T0))s)"; }

REPORT=$FNLET_LOGS/chaos-report.txt
TESTLOG=$FNLET_LOGS/chaos-test.log
mkdir -p "$FNLET_LOGS"
rm -f "$REPORT"

# reap_leftovers kills what containerd itself leaked and no longer knows
# (the tests count these as leaks first): shims started by the chaos
# containerd (its socket is in their command line) and processes left in
# the cgroups of the chaos namespaces; then removes those cgroups.
reap_leftovers() {
	local p cmd n=0 d ns
	for p in /proc/[0-9]*; do
		cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
		case $cmd in
		*containerd-shim*"-address $CTRD_SOCK "*) kill -9 "${p#/proc/}" 2>/dev/null && n=$((n + 1)) ;;
		esac
	done
	for ns in "$CHAOS_NS" "${CHAOS_NODE_NS[@]}"; do
		for d in /sys/fs/cgroup/*/"$ns"/* /sys/fs/cgroup/"$ns"/*; do
			[ -f "$d/cgroup.procs" ] || continue
			for p in $(cat "$d/cgroup.procs"); do kill -9 "$p" 2>/dev/null && n=$((n + 1)); done
		done
	done
	sleep 0.5
	for ns in "$CHAOS_NS" "${CHAOS_NODE_NS[@]}"; do
		for d in /sys/fs/cgroup/*/"$ns"/* /sys/fs/cgroup/*/"$ns" /sys/fs/cgroup/"$ns"/* /sys/fs/cgroup/"$ns"; do
			[ -d "$d" ] && rmdir "$d" 2>/dev/null
		done
	done
	[ "$n" -eq 0 ] || log "killed $n leftover shim/container processes containerd had lost track of"
}

CHAOS_NS=fnlet-chaos
# The containerd namespaces of TestNodeLost's three nodes (one each, as on
# real nodes: a node's orphan collector sees only its own containers).
CHAOS_NODE_NS=(fnlet-chaos-n1 fnlet-chaos-n2 fnlet-chaos-n3)
started=false
cleanup() {
	local rc=$?
	if $started; then
		"$FNLET_ROOT/hack/containerd-down.sh" --wipe || true
		reap_leftovers
	fi
	if [ -s "$REPORT" ]; then
		cat "$REPORT" >&2
	fi
	if [ "$rc" -eq 0 ]; then
		log "CHAOS PASSED in $((SECONDS - T0))s"
	else
		log "CHAOS FAILED (exit $rc) after $((SECONDS - T0))s; test output: $TESTLOG"
	fi
}
trap cleanup EXIT

step "dependencies"
"$FNLET_ROOT/hack/install-deps.sh"
"$FNLET_ROOT/hack/build-containerd.sh"

step "build kube-apiserver + etcd (cached after the first run)"
KUBEBUILDER_ASSETS=$("$FNLET_ROOT/hack/build-k8s.sh" --apiserver-only --print-assets | tail -1)
export KUBEBUILDER_ASSETS

step "private containerd for chaos ($FNLET_RUN) + test images"
if pid_alive "$CTRD_PID"; then
	log "wiping the chaos containerd left by an earlier run"
	"$FNLET_ROOT/hack/containerd-down.sh" --wipe
fi
reap_leftovers
started=true
FNLET_CONTAINERD_ADDRESS=$("$FNLET_ROOT/hack/containerd-up.sh")
export FNLET_CONTAINERD_ADDRESS
export FNLET_CHAOS_NAMESPACE=$CHAOS_NS
for ns in "$FNLET_CHAOS_NAMESPACE" "${CHAOS_NODE_NS[@]}"; do
	IMPORT_NAMESPACE=$ns "$FNLET_ROOT/hack/build-images.sh" >/dev/null
done
export FNLET_CHAOS_CONTAINERD_PIDFILE=$CTRD_PID
export FNLET_CHAOS_REPORT=$REPORT
# Manager logs of failed tests.
export FNLET_CHAOS_ARTIFACTS=$FNLET_LOGS/chaos-artifacts
rm -rf "$FNLET_CHAOS_ARTIFACTS"

step "go vet + chaos tests"
go vet ./test/chaos/
set +e
go test -count=1 -timeout 40m -v ./test/chaos/ "$@" 2>&1 | tee "$TESTLOG"
rc=${PIPESTATUS[0]}
set -e
step "chaos tests done (exit $rc)"
exit "$rc"
