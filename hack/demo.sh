#!/usr/bin/env bash
# `make demo`: what a user does, on this machine. Bring up a real single-node
# Kubernetes cluster (hack/cluster-up.sh: etcd, kube-apiserver, controller
# manager, scheduler, kubelet on containerd 2.x, kube-proxy — built from Go
# modules on the first run), deploy fnlet as a DaemonSet with
# `kubectl apply -k`, apply the sample FunctionCalls and print their results.
# The cluster stays up for you to play with; `make demo-down` stops it.
set -euo pipefail
. "$(dirname "$0")/k8s-lib.sh"
cd "$FNLET_ROOT"

if [ "${1:-}" = down ]; then
	exec "$FNLET_ROOT/hack/cluster-down.sh"
fi

"$FNLET_ROOT/hack/e2e.sh" --deploy-only
eval "$("$FNLET_ROOT/hack/cluster-up.sh")"
export KUBECONFIG
kubectl=$K8S_BIN/kubectl
[ -x "$kubectl" ] || kubectl=kubectl

# A fresh run every time: samples from a previous demo are replaced.
$kubectl delete -k config/samples --ignore-not-found --wait=true >/dev/null
$kubectl apply -k config/samples
names=$($kubectl get -k config/samples -o jsonpath='{.items[*].metadata.name}')
# Finished is True once a call is Succeeded or Failed. The results are
# printed either way; the demo fails if a call never finished.
rc=0
# shellcheck disable=SC2086 # one word per call
$kubectl wait fc $names --for=condition=Finished --timeout=120s >/dev/null || rc=$?
echo
$kubectl get fc -o wide
for n in $names; do
	echo
	echo "--- $n: $($kubectl get fc "$n" -o jsonpath='{.status.phase}/{.status.reason}: {.status.message}')"
	echo "stdout: $($kubectl get fc "$n" -o jsonpath='{.status.stdout}')"
	echo "stderr: $($kubectl get fc "$n" -o jsonpath='{.status.stderr}' | head -c 200)"
done
cat <<EOM

fnlet runs as a DaemonSet on a local single-node cluster. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl get fc; kubectl describe fc hello
  kubectl -n fnlet-system get ds,pods
  kubectl apply -f config/samples/fnlet_v1alpha1_functioncall_hello.yaml
Stop everything with: make demo-down
EOM
[ "$rc" = 0 ] || die "not every sample call finished within 120s (kubectl wait exited $rc)"
