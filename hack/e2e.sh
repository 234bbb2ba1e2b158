#!/usr/bin/env bash
# `make e2e`: fnlet deployed the way users deploy it, on the real single-node
# cluster of hack/cluster-up.sh, and tested with kubectl (test/e2e):
#   1. cluster up (reused if it is already up; built from Go modules first
#      if needed);
#   2. the manager image (hack/build-manager-image.sh) imported into the
#      cluster containerd's k8s.io namespace (kubelet's), the test images
#      into its `fnlet` namespace (the calls');
#   3. kubectl apply -k of config/e2e (= config/default with the local
#      containerd socket dir), through an overlay generated under
#      $FNLET_RUN/e2e that also stamps the manager image digest on the pod
#      template, so a rebuilt image rolls the DaemonSet out;
#   4. DaemonSet rollout, then go test ./test/e2e/... with KUBECONFIG set;
#   5. cluster down if this script brought it up, unless FNLET_KEEP_CLUSTER=1.
# Prints the time of each step. Logs: $FNLET_LOGS (the go test output in
# e2e-go-test.log).
#
# `hack/e2e.sh --deploy-only` stops after step 4's rollout and leaves the
# cluster up: that is how `make demo` deploys fnlet.
#
# Environment: FNLET_KEEP_CLUSTER=1 keeps a cluster this script started up;
# E2E_RUN=<regexp> is passed to go test -run. Latency next to a plain Pod is
# `make bench`'s (its pod way, when this cluster is up).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"

MANAGER_REF=${FNLET_MANAGER_IMAGE:-localhost/fnlet/manager:dev}
E2E_RUN_DIR=$FNLET_RUN/e2e
T0=$SECONDS
timings=()
brought_up=false

# now and since: sub-second wall clock for the timings.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
	local rc=$? t
	if [ "$rc" -ne 0 ] && [ -n "${KUBECONFIG:-}" ]; then
		log "manager pods and logs (last 60 lines):"
		kubectl_admin -n fnlet-system get pods -o wide >&2 || true
		kubectl_admin -n fnlet-system logs -l app.kubernetes.io/component=manager --tail=60 --prefix >&2 || true
	fi
	if $brought_up; then
		if [ "${FNLET_KEEP_CLUSTER:-}" = 1 ]; then
			log "FNLET_KEEP_CLUSTER=1: the cluster stays up (use it: eval \"\$(hack/cluster-up.sh)\"; stop it: hack/cluster-down.sh)"
		else
			t=$(now)
			"$FNLET_ROOT/hack/cluster-down.sh" || log "warning: cluster-down.sh failed"
			timings+=("cluster-down $(since "$t")s")
		fi
	fi
	log "timings: ${timings[*]}"
	if [ "$rc" -eq 0 ]; then log "E2E PASSED in $((SECONDS - T0))s"; else log "E2E FAILED (exit $rc) after $((SECONDS - T0))s"; fi
}

# cluster: up, or reused. Only a cluster this script started is stopped at
# the end; cluster-down.sh also stops the control plane, so if one was
# already running without the node (e.g. hack/demo.sh's), all stays up.
cluster() {
	local t f reused=yes cp_running=false
	for f in "$CP_RUN"/*.pid; do pid_alive "$f" && cp_running=true; done
	if ! cluster_running; then
		reused=no
		if $cp_running; then
			log "a control plane is already running without the node: the cluster stays up afterwards"
		else
			brought_up=true
		fi
	fi
	t=$(now)
	eval "$("$FNLET_ROOT/hack/cluster-up.sh")"
	export KUBECONFIG FNLET_CLUSTER_CONTAINERD_SOCK
	timings+=("cluster-up $(since "$t")s (reused: $reused)")
	log "cluster up in $(since "$t")s (reused: $reused)"
}

# images: the manager image into k8s.io, the test images into fnlet. Sets
# manager_digest.
images() {
	local t ns
	t=$(now)
	IMPORT_ADDRESS=$FNLET_CLUSTER_CONTAINERD_SOCK FNLET_MANAGER_IMAGE=$MANAGER_REF "$FNLET_ROOT/hack/build-manager-image.sh" >/dev/null
	manager_digest=$(cluster_ctr -n k8s.io images ls "name==$MANAGER_REF" | awk -v r="$MANAGER_REF" '$1 == r { print $3 }')
	[ -n "$manager_digest" ] || die "$MANAGER_REF is not in $FNLET_CLUSTER_CONTAINERD_SOCK namespace k8s.io after the import"
	IMPORT_ADDRESS=$FNLET_CLUSTER_CONTAINERD_SOCK IMPORT_NAMESPACE=fnlet "$FNLET_ROOT/hack/build-images.sh" >/dev/null
	timings+=("images $(since "$t")s")
	log "images built and imported in $(since "$t")s (manager $manager_digest)"
}

# deploy: kubectl apply -k of a generated overlay of config/e2e (kustomize
# refuses absolute paths, hence the relative one), then the rollout. With
# "pod-network" the overlay also takes config/components/pod-network, its
# host paths pointed at this cluster's CNI configuration, plugins and IPAM.
deploy() {
	local t components="" netpatch=""
	mkdir -p "$E2E_RUN_DIR"
	if [ "${1:-}" = pod-network ]; then
		components="components:
- $(realpath --relative-to="$E2E_RUN_DIR" "$FNLET_ROOT/config/components/pod-network")"
		netpatch="- target: {group: apps, version: v1, kind: DaemonSet, name: fnlet-manager}
  patch: |-
    apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: fnlet-manager, namespace: fnlet-system}
    spec:
      template:
        spec:
          containers:
          - name: manager
            volumeMounts:
            - {name: cni-ipam, mountPath: $CNI_IPAM_DIR}
          volumes:
          - {name: cni-conf, hostPath: {path: $CNI_CONF_DIR, type: Directory}}
          - {name: cni-bin, hostPath: {path: /usr/lib/cni, type: Directory}}
          - {name: cni-ipam, hostPath: {path: $CNI_IPAM_DIR, type: DirectoryOrCreate}}"
	fi
	cat >"$E2E_RUN_DIR/kustomization.yaml" <<EOF
# Generated by hack/e2e.sh: config/e2e with this cluster's containerd socket
# dir and the manager image digest (a new image rolls the DaemonSet out).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$E2E_RUN_DIR" "$FNLET_ROOT/config/e2e")
$components
patches:
- target: {group: apps, version: v1, kind: DaemonSet, name: fnlet-manager}
  patch: |-
    - op: test
      path: /spec/template/spec/volumes/0/name
      value: containerd-socket-dir
    - op: replace
      path: /spec/template/spec/volumes/0/hostPath/path
      value: $CLUSTER_CTRD_DIR
    - op: add
      path: /spec/template/metadata/annotations
      value: {fnlet.dev/manager-image-digest: "$manager_digest"}
$netpatch
EOF
	t=$(now)
	kubectl_admin apply -k "$E2E_RUN_DIR" >&2
	kubectl_admin wait --for condition=established --timeout=60s crd/functioncalls.fnlet.dev >/dev/null
	if ! kubectl_admin -n fnlet-system rollout status ds/fnlet-manager --timeout=180s >&2; then
		kubectl_admin -n fnlet-system describe pods -l app.kubernetes.io/component=manager >&2 || true
		die "the fnlet-manager DaemonSet did not roll out"
	fi
	timings+=("DaemonSet-ready $(since "$t")s")
	log "DaemonSet ready $(since "$t")s after kubectl apply -k"
}

# suite: go test ./test/e2e/...; FNLET_REQUIRE_DAEMONS makes a missing
# cluster a failure, not a skip.
suite() {
	local t rc kubectl=$K8S_BIN/kubectl run_args=()
	[ -x "$kubectl" ] || kubectl=$(command -v kubectl)
	[ -z "${E2E_RUN:-}" ] || run_args=(-run "$E2E_RUN")
	t=$(now)
	set +e
	FNLET_REQUIRE_DAEMONS=1 KUBECTL=$kubectl FNLET_E2E_CTR=$CONTAINERD_BIN/ctr \
		FNLET_E2E_CONTAINERD_SOCK=$FNLET_CLUSTER_CONTAINERD_SOCK \
		go test -count=1 -v -timeout 30m "${run_args[@]}" ./test/e2e/... 2>&1 | tee "$FNLET_LOGS/e2e-go-test.log"
	rc=${PIPESTATUS[0]}
	set -e
	timings+=("e2e-suite $(since "$t")s")
	log "e2e suite: exit $rc in $(since "$t")s (output in $FNLET_LOGS/e2e-go-test.log)"
	grep -E '^ *latency_test.go:[0-9]+: ' "$FNLET_LOGS/e2e-go-test.log" | sed 's/^ *latency_test.go:[0-9]*: */  /' >&2 || true
	return "$rc"
}

main() {
	cd "$FNLET_ROOT"
	trap cleanup EXIT
	mkdir -p "$FNLET_LOGS"
	"$FNLET_ROOT/hack/install-deps.sh"
	cluster
	images
	deploy
	if [ "${1:-}" = --deploy-only ]; then
		brought_up=false # a deployment is meant to stay
		return
	fi
	suite || rc=$?
	# network: pod needs the opt-in component: the same cluster, redeployed
	# with it, for the tests that need it (they skip without it).
	if [ -z "${E2E_RUN:-}" ] && [ "${E2E_POD_NETWORK:-1}" = 1 ]; then
		deploy pod-network
		E2E_RUN='PodNetwork' suite || rc=$?
	fi
	return "${rc:-0}"
}

# Called last so bash has parsed the whole file first: editing this script
# while it runs cannot change what it executes.
main "$@"
exit
