#!/usr/bin/env bash
# The whole test suite — the README's test command (`make test`) and what CI
# runs. On a fresh machine it installs and starts everything it needs (Debian
# packages, a private containerd 2.x and Debian's 1.6, kube-apiserver + etcd
# built from Go modules, a local registry) and stops what it started.
#
# Every test that needs a daemon runs here with FNLET_REQUIRE_DAEMONS=1, so a
# missing daemon fails instead of skipping.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FNLET_ROOT"
export FNLET_REQUIRE_DAEMONS=1
T0=$SECONDS
step() { log "== $* ($(( SECONDS - T0 ))s)"; }

started=()
cleanup() {
	local rc=$?
	for s in "${started[@]}"; do
		case $s in
		containerd-*) FNLET_CONTAINERD=${s#containerd-} "$FNLET_ROOT/hack/containerd-down.sh" --wipe || true ;;
		registry) "$FNLET_ROOT/hack/registry-down.sh" || true ;;
		esac
	done
	if [ "$rc" -eq 0 ]; then log "ALL TESTS PASSED in $(( SECONDS - T0 ))s"; else log "TESTS FAILED (exit $rc) after $(( SECONDS - T0 ))s"; fi
}
trap cleanup EXIT

step "dependencies"
"$FNLET_ROOT/hack/install-deps.sh"

step "static checks: gofmt, go vet, generated files"
unformatted=$(gofmt -l $(git ls-files '*.go'))
[ -z "$unformatted" ] || die "gofmt needed: $unformatted"
go vet ./...
make --no-print-directory verify-generated

step "build kube-apiserver + etcd (cached after the first run)"
KUBEBUILDER_ASSETS=$("$FNLET_ROOT/hack/build-k8s.sh" --apiserver-only --print-assets | tail -1)
export KUBEBUILDER_ASSETS

# start_containerd VERSION: a private daemon with the test images imported
# into the namespaces the tests use.
# start_containerd V prints the socket, so it runs in $(...): the caller
# records what it starts (a subshell's started+= would be lost).
note_started() { pid_alive "$FNLET_RUN/containerd-$1/pid" || started+=("containerd-$1"); }
start_containerd() {
	local v=$1
	FNLET_CONTAINERD=$v "$FNLET_ROOT/hack/containerd-up.sh" >/dev/null
	FNLET_CONTAINERD=$v "$FNLET_ROOT/hack/build-images.sh" >/dev/null
	for ns in fnlet-test fnlet-it fnlet-it-n1 fnlet-it-n2 fnlet-it-n3; do
		FNLET_CONTAINERD=$v IMPORT_NAMESPACE=$ns "$FNLET_ROOT/hack/build-images.sh" >/dev/null
	done
	echo "$FNLET_RUN/containerd-$v/containerd.sock"
}

step "containerd 2.x (built from Go modules) + test images"
note_started 2
FNLET_CONTAINERD_ADDRESS=$(start_containerd 2)
export FNLET_CONTAINERD_ADDRESS

step "local registry (TLS + htpasswd) for pull tests"
pid_alive "$FNLET_RUN/registry/pid" || started+=(registry)
"$FNLET_ROOT/hack/registry-up.sh" >/dev/null

step "all Go tests on containerd 2.x: unit, runtime, API admission, integration"
# test/e2e needs the real cluster: it runs last, through hack/e2e.sh.
go test -count=1 -timeout 30m $(go list ./... | grep -v /test/e2e)

step "runtime tests on Debian's containerd 1.6 (compatibility)"
note_started 1.6
FNLET_CONTAINERD_ADDRESS=$(start_containerd 1.6) go test -count=1 -timeout 15m ./internal/ctrd/...

step "e2e: real single-node cluster, fnlet as a DaemonSet, kubectl like a user"
"$FNLET_ROOT/hack/e2e.sh"

step "chaos: faults injected, with its own containerd (make chaos)"
"$FNLET_ROOT/hack/chaos.sh"
