#!/usr/bin/env bash
# `make kind-e2e`: the e2e suite of `make e2e` (test/e2e, the same Go tests,
# unchanged) on a single-node kind cluster:
#   1. Docker: the engine at DOCKER_HOST if one answers, else Debian's
#      docker.io started by hand (hack/docker-up.sh), stopped at the end;
#   2. the node image: kind's default where a registry is reachable, else
#      (or with KIND_NODE_IMAGE=local) one built offline from the project's
#      own builds (hack/kind-node-image.sh); KIND_NODE_IMAGE=<ref> picks one;
#   3. kind create cluster (reused if a cluster of that name exists), its
#      API server on a random 127.0.0.1 port: no clash with `make e2e`;
#   4. the manager and test images loaded with `kind load image-archive`
#      (namespace k8s.io, the manager pod's); the test image also into
#      namespace `fnlet` on every node (the calls'), with ctr on the node;
#   5. kubectl apply -k config/kind (config/default + the log API), rollout;
#   6. go test ./test/e2e/..., reaching the nodes through `docker exec`;
#      then, as `make e2e` does, again with config/components/pod-network
#      for the tests that need it;
#   7. kind delete cluster (if this script created it, unless
#      FNLET_KEEP_CLUSTER=1), Docker stopped by PID if this script started
#      it, and the host settings the node changed put back (sysctls written
#      by its kubelet and systemd, Docker's bridges; see docker-lib.sh).
# Nothing is pulled with the local node image: every image is preloaded.
# Prints the time of each step.
#
# Environment: KIND_CLUSTER_NAME (default fnlet-kind), KIND_NODE_IMAGE
# (local | <ref>; unset: kind's default if a registry answers, else local),
# KIND (kind binary), KUBECTL (kubectl binary), FNLET_KEEP_CLUSTER=1,
# E2E_RUN=<regexp> (go test -run), E2E_POD_NETWORK=0 (skip the second
# pass), FNLET_KIND_DEPLOY (the kustomization, default config/kind).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/docker-lib.sh"

CLUSTER=${KIND_CLUSTER_NAME:-fnlet-kind}
KUBECTL=${KUBECTL:-}
TESTFN_TAR=$FNLET_CACHE/images/testfn-v1.tar # what hack/build-images.sh writes
BUSYBOX_TAR=$FNLET_CACHE/images/busybox-v1.tar # the volume sample's image
DEPLOY=${FNLET_KIND_DEPLOY:-config/kind}     # the kustomization applied
KIND_RUN=$FNLET_RUN/kind-e2e                 # kubeconfig, generated overlay, test log
T0=$SECONDS
timings=()
created=false
started_docker=false
saved_host=false
manager_tar=

k() { "$KUBECTL" --kubeconfig "$KIND_RUN/kubeconfig" "$@"; }

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
	local rc=$? t
	if [ "$rc" -ne 0 ] && [ -s "$KIND_RUN/kubeconfig" ] && $created; then
		k -n fnlet-system get pods -o wide >&2 || true
		k -n fnlet-system logs -l app.kubernetes.io/component=manager --tail=60 --prefix >&2 || true
	fi
	t=$(now)
	if $created; then
		if [ "${FNLET_KEEP_CLUSTER:-}" = 1 ]; then
			log "FNLET_KEEP_CLUSTER=1: kind cluster $CLUSTER stays up (kubeconfig: $KIND_RUN/kubeconfig; DOCKER_HOST=$DOCKER_HOST)"
			started_docker=false saved_host=false
		else
			"$KIND" delete cluster --name "$CLUSTER" || log "warning: kind delete cluster failed"
		fi
	fi
	if $started_docker; then
		"$FNLET_ROOT/hack/docker-down.sh" || log "warning: docker-down.sh failed"
	fi
	if $saved_host; then
		host_state_restore "$HOST_STATE_DIR"
	fi
	timings+=("teardown $(since "$t")s")
	log "timings: ${timings[*]}"
	if [ "$rc" -eq 0 ]; then log "KIND E2E PASSED in $((SECONDS - T0))s"; else log "KIND E2E FAILED (exit $rc) after $((SECONDS - T0))s"; fi
}

# docker_up: reuse a working engine, else start ours.
docker_up() {
	if [ "${DOCKER_HOST:-}" != "unix://$DOCKER_SOCK" ] && docker info >/dev/null 2>&1; then
		log "using the Docker engine already running (${DOCKER_HOST:-default socket})"
		return 0
	fi
	use_our_docker
	our_pid "$DOCKERD_PID" /usr/sbin/dockerd || started_docker=true
	"$FNLET_ROOT/hack/docker-up.sh" >/dev/null
}

ensure_kind() {
	if [ -n "${KIND:-}" ]; then return 0; fi
	if [ ! -x "$KIND_BIN" ]; then
		log "building kind $KIND_VERSION"
		mkdir -p "$(dirname "$KIND_BIN")"
		GOBIN=$(dirname "$KIND_BIN") go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
	fi
	KIND=$KIND_BIN
}

# registry_reachable: one HTTPS request to the Docker engine's index
# server (the registry of kind's default node image), 5 s at most.
registry_reachable() {
	local index
	index=$(docker info -f '{{.IndexServerAddress}}' 2>/dev/null) || return 1
	[ -n "$index" ] && curl -sS -o /dev/null --max-time 5 "$index" 2>/dev/null
}

# node_image: sets node_image (empty: kind's default) and local_image.
node_image() {
	local_image=false
	node_image=${KIND_NODE_IMAGE:-}
	if [ -z "$node_image" ]; then
		if registry_reachable; then
			log "a registry is reachable: kind's default node image"
			return 0
		fi
		log "no registry reachable: building the node image offline (KIND_NODE_IMAGE=local)"
		node_image=local
	fi
	if [ "$node_image" = local ]; then
		local_image=true
		node_image=$("$FNLET_ROOT/hack/kind-node-image.sh" | tail -1)
	fi
}

# kind_config: the cluster's kind config. On cgroup v1 hosts kubelet needs
# failCgroupV1: false; without CAP_SYS_RESOURCE the node's containerd must
# not ask for negative OOM scores. Both are baked into the local image too;
# here they also make kind's default image work on such hosts. The local
# image has no kindnetd: its static bridge CNI stands in for one node.
kind_config() {
	cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: 127.0.0.1
  disableDefaultCNI: $local_image
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
containerdConfigPatches:
- |
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
  # What README asks of every fnlet node (docs/runtime.md, "Abandoned creates").
  [timeouts]
    "io.containerd.timeout.shim.cleanup" = "15s"
EOF
}

cluster_up() {
	local reused=yes
	if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		reused=no
		created=true
		kind_config >"$KIND_RUN/kind.yaml"
		"$KIND" create cluster --name "$CLUSTER" --config "$KIND_RUN/kind.yaml" --wait 180s \
			--kubeconfig "$KIND_RUN/kubeconfig" ${node_image:+--image "$node_image"}
	fi
	"$KIND" get kubeconfig --name "$CLUSTER" >"$KIND_RUN/kubeconfig"
	cluster_reused=$reused
}

# build_images: the manager and test image tarballs (OCI, Go tooling
# only). Sets manager_tar.
build_images() {
	manager_tar=$("$FNLET_ROOT/hack/build-manager-image.sh" | tail -1)
	"$FNLET_ROOT/hack/build-images.sh" --build-only >/dev/null
	if [ ! -s "$manager_tar" ] || [ ! -s "$TESTFN_TAR" ] || [ ! -s "$BUSYBOX_TAR" ]; then
		die "image tarballs missing: $manager_tar $TESTFN_TAR $BUSYBOX_TAR"
	fi
}

load_images() {
	local node nodes tar
	"$KIND" load image-archive "$manager_tar" --name "$CLUSTER"
	"$KIND" load image-archive "$TESTFN_TAR" --name "$CLUSTER"
	# The calls run in fnlet's own containerd namespace, which kind does
	# not load into: the test function and the samples' busybox go there.
	mapfile -t nodes < <("$KIND" get nodes --name "$CLUSTER")
	for node in "${nodes[@]}"; do
		docker exec "$node" containerd config dump | grep -q 'io.containerd.timeout.shim.cleanup.*15s' ||
			die "kind node $node: containerd did not take the shim cleanup timeout of the cluster config"
		for tar in "$TESTFN_TAR" "$BUSYBOX_TAR"; do
			docker exec -i "$node" ctr -n fnlet images import - <"$tar" >/dev/null
		done
	done
}

# deploy [pod-network]: kubectl apply -k, then the rollout. pod-network
# goes through an overlay generated under $KIND_RUN (kustomize refuses
# absolute paths, hence the relative ones). kind's nodes keep CNI where the
# component expects it (/etc/cni/net.d, /opt/cni/bin).
deploy() {
	local dir=$DEPLOY
	if [ "${1:-}" = pod-network ]; then
		dir=$KIND_RUN/overlay-pod-network
		mkdir -p "$dir"
		cat >"$dir/kustomization.yaml" <<EOF
# Generated by hack/kind-e2e.sh: $DEPLOY with network: pod.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$dir" "$FNLET_ROOT/$DEPLOY")
components:
- $(realpath --relative-to="$dir" "$FNLET_ROOT/config/components/pod-network")
EOF
	fi
	k apply -k "$dir" >&2
	k wait --for condition=established --timeout=60s crd/functioncalls.fnlet.dev >/dev/null
	# Same tag, maybe a new image: a reused cluster gets fresh manager pods.
	[ "$cluster_reused" = no ] || [ -n "${1:-}" ] || k -n fnlet-system rollout restart ds/fnlet-manager >&2
	if ! k -n fnlet-system rollout status ds/fnlet-manager --timeout=180s >&2; then
		k -n fnlet-system describe pods -l app.kubernetes.io/component=manager >&2 || true
		die "the fnlet-manager DaemonSet did not roll out"
	fi
}

# suite [go test args]: the shared suite; kind nodes are containers named
# after the nodes.
suite() {
	local rc
	set +e
	KUBECONFIG=$KIND_RUN/kubeconfig FNLET_REQUIRE_DAEMONS=1 KUBECTL=$KUBECTL \
		FNLET_E2E_NODE_EXEC="docker exec {node}" FNLET_E2E_CTR=ctr \
		FNLET_E2E_CONTAINERD_SOCK=/run/containerd/containerd.sock \
		go test -count=1 -v -timeout 30m "$@" ./test/e2e/... 2>&1 | tee -a "$KIND_RUN/go-test.log"
	rc=${PIPESTATUS[0]}
	set -e
	return "$rc"
}

# timed NAME CMD...: run CMD, record how long it took.
timed() {
	local name=$1 t rc=0
	shift
	t=$(now)
	"$@" || rc=$?
	timings+=("$name $(since "$t")s")
	log "$name: $(since "$t")s"
	return "$rc"
}

main() {
	cd "$FNLET_ROOT"
	local rc=0 run_args=()
	mkdir -p "$KIND_RUN" "$FNLET_LOGS"
	rm -f "$KIND_RUN/go-test.log"
	trap cleanup EXIT
	if [ -z "$KUBECTL" ]; then
		"$FNLET_ROOT/hack/build-k8s.sh" >&2 # kubectl of the server's version
		KUBECTL=$K8S_BIN/kubectl
	fi
	# Before anything can change them.
	host_state_save "$HOST_STATE_DIR"
	saved_host=true

	# Images first: a build failure should not cost a cluster.
	timed image-build build_images
	timed docker-up docker_up
	ensure_kind
	timed node-image node_image
	timed cluster-up cluster_up
	log "cluster $CLUSTER up (reused: $cluster_reused, node image: ${node_image:-the kind default})"
	timed image-load load_images
	timed deploy deploy

	[ -z "${E2E_RUN:-}" ] || run_args=(-run "$E2E_RUN")
	timed e2e-suite suite "${run_args[@]}" || rc=$?
	if [ -z "${E2E_RUN:-}" ] && [ "${E2E_POD_NETWORK:-1}" = 1 ]; then
		timed deploy-pod-network deploy pod-network
		timed e2e-pod-network suite -run PodNetwork || rc=$?
	fi
	grep -E '^(--- (PASS|FAIL|SKIP)|ok |FAIL)' "$KIND_RUN/go-test.log" >&2 || true
	return "$rc"
}

# Called last so bash has parsed the whole file first: editing this script
# while it runs cannot change what it executes.
main "$@"
exit
