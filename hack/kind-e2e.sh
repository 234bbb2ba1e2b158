#!/usr/bin/env bash
# `make kind-e2e`: the e2e suite of `make e2e` (test/e2e, the same Go tests)
# on a kind cluster, for machines with a Docker engine and kind on PATH:
#   1. kind create cluster (reused if a cluster of that name exists);
#   2. the manager image (hack/build-manager-image.sh, an OCI tarball built
#      with Go tooling only) loaded with `kind load image-archive`
#      (containerd namespace k8s.io on the nodes: the manager pod's); the
#      test image imported into namespace `fnlet` on every node (the
#      calls'), with `docker exec <node> ctr -n fnlet images import -`;
#   3. kubectl apply -k config/default, unchanged: kind's node containerd
#      socket is the default /run/containerd/containerd.sock; rollout;
#   4. go test ./test/e2e/..., reaching the nodes through `docker exec`;
#   5. kind delete cluster, if this script created it, unless
#      FNLET_KEEP_CLUSTER=1.
# The CI machines have no Docker engine: this script is kept correct by
# review there; `make e2e` runs the same suite on a local cluster instead.
#
# Environment: KIND_CLUSTER_NAME (default fnlet-e2e), KIND_NODE_IMAGE (kind's
# --image, default kind's own), KIND (kind binary), KUBECTL (kubectl binary),
# FNLET_KEEP_CLUSTER=1, E2E_RUN=<regexp> (go test -run),
# FNLET_E2E_LATENCY_RUNS (20), FNLET_KIND_DEPLOY (the kustomization to apply,
# default config/default).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

CLUSTER=${KIND_CLUSTER_NAME:-fnlet-e2e}
KIND=${KIND:-kind}
KUBECTL=${KUBECTL:-kubectl}
TESTFN_TAR=$FNLET_CACHE/images/testfn-v1.tar # what hack/build-images.sh writes
DEPLOY=${FNLET_KIND_DEPLOY:-config/default}    # the kustomization applied
T0=$SECONDS
timings=()
created=false
work=

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
k() { "$KUBECTL" --kubeconfig "$work/kubeconfig" "$@"; }

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
	local rc=$?
	if [ "$rc" -ne 0 ] && [ -s "$work/kubeconfig" ]; then
		k -n fnlet-system get pods -o wide >&2 || true
		k -n fnlet-system logs -l app.kubernetes.io/component=manager --tail=60 --prefix >&2 || true
	fi
	if $created; then
		if [ "${FNLET_KEEP_CLUSTER:-}" = 1 ]; then
			log "FNLET_KEEP_CLUSTER=1: kind cluster $CLUSTER stays up (kubeconfig: $KIND get kubeconfig --name $CLUSTER)"
		else
			"$KIND" delete cluster --name "$CLUSTER" || log "warning: kind delete cluster failed"
		fi
	fi
	[ -z "$work" ] || rm -rf "$work"
	log "timings: ${timings[*]}"
	if [ "$rc" -eq 0 ]; then log "KIND E2E PASSED in $((SECONDS - T0))s"; else log "KIND E2E FAILED (exit $rc) after $((SECONDS - T0))s"; fi
}

main() {
	cd "$FNLET_ROOT"
	local t node nodes manager_tar kubectl_path run_args=() reused=yes
	command -v "$KIND" >/dev/null || die "kind not found (set KIND or install it); without Docker use: make e2e"
	if ! docker info >/dev/null 2>&1; then
		die "no usable Docker engine (docker info failed); without Docker use: make e2e"
	fi
	kubectl_path=$(command -v "$KUBECTL") || die "kubectl not found (set KUBECTL)"
	work=$(mktemp -d)
	trap cleanup EXIT

	# Images first: a build failure should not cost a cluster.
	t=$(now)
	manager_tar=$("$FNLET_ROOT/hack/build-manager-image.sh" | tail -1)
	"$FNLET_ROOT/hack/build-images.sh" --build-only >/dev/null
	if [ ! -s "$manager_tar" ] || [ ! -s "$TESTFN_TAR" ]; then
		die "image tarballs missing: $manager_tar $TESTFN_TAR"
	fi
	timings+=("images $(since "$t")s")

	t=$(now)
	if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		reused=no
		created=true
		"$KIND" create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
	fi
	"$KIND" get kubeconfig --name "$CLUSTER" >"$work/kubeconfig"
	timings+=("cluster-up $(since "$t")s (reused: $reused)")

	t=$(now)
	"$KIND" load image-archive "$manager_tar" --name "$CLUSTER"
	mapfile -t nodes < <("$KIND" get nodes --name "$CLUSTER")
	for node in "${nodes[@]}"; do
		docker exec -i "$node" ctr -n fnlet images import - <"$TESTFN_TAR" >/dev/null
	done
	timings+=("image-load $(since "$t")s")
	log "images loaded into ${nodes[*]} in $(since "$t")s"

	t=$(now)
	k apply -k "$DEPLOY"
	k wait --for condition=established --timeout=60s crd/functioncalls.fnlet.dev >/dev/null
	# Same tag, maybe a new image: a reused cluster gets fresh manager pods.
	[ "$reused" = no ] || k -n fnlet-system rollout restart ds/fnlet-manager
	k -n fnlet-system rollout status ds/fnlet-manager --timeout=180s
	timings+=("DaemonSet-ready $(since "$t")s")
	log "DaemonSet ready $(since "$t")s after kubectl apply -k"

	# The shared suite; kind nodes are containers named after the nodes.
	[ -z "${E2E_RUN:-}" ] || run_args=(-run "$E2E_RUN")
	t=$(now)
	set +e
	KUBECONFIG=$work/kubeconfig FNLET_REQUIRE_DAEMONS=1 KUBECTL=$kubectl_path \
		FNLET_E2E_NODE_EXEC="docker exec {node}" FNLET_E2E_CTR=ctr \
		FNLET_E2E_CONTAINERD_SOCK=/run/containerd/containerd.sock \
		go test -count=1 -v -timeout 30m "${run_args[@]}" ./test/e2e/...
	local rc=$?
	set -e
	timings+=("e2e-suite $(since "$t")s")
	return "$rc"
}

# Called last so bash has parsed the whole file first.
main "$@"
exit
