#!/usr/bin/env bash
# `make demo`: on a fresh machine, bring up a local containerd and control
# plane, install the CRD, run the fnlet manager, apply the sample
# FunctionCalls and print their results. Everything is left running so you
# can play with kubectl; `make demo-down` stops it (by PID).
set -euo pipefail
. "$(dirname "$0")/k8s-lib.sh"
cd "$FNLET_ROOT"
DEMO_RUN=$FNLET_RUN/demo
MANAGER_PID=$DEMO_RUN/manager.pid
NODE=${FNLET_NODE_NAME:-$(hostname)}

if [ "${1:-}" = down ]; then
	if pid_alive "$MANAGER_PID"; then
		kill "$(cat "$MANAGER_PID")" && log "manager stopped"
	fi
	rm -f "$MANAGER_PID"
	"$FNLET_ROOT/hack/control-plane-down.sh"
	FNLET_CONTAINERD=2 "$FNLET_ROOT/hack/containerd-down.sh" --wipe
	exit 0
fi

"$FNLET_ROOT/hack/install-deps.sh"
SOCK=$(FNLET_CONTAINERD=2 "$FNLET_ROOT/hack/containerd-up.sh")
FNLET_CONTAINERD=2 "$FNLET_ROOT/hack/build-images.sh" >/dev/null
KUBECONFIG=$("$FNLET_ROOT/hack/control-plane-up.sh" | tail -1)
export KUBECONFIG
kubectl apply -f config/crd/bases >/dev/null
kubectl wait --for condition=established --timeout=60s crd/functioncalls.fnlet.dev >/dev/null

mkdir -p "$DEMO_RUN" "$FNLET_STATE/calls"
go build -o bin/manager ./cmd/manager
if pid_alive "$MANAGER_PID"; then
	kill "$(cat "$MANAGER_PID")"
	while pid_alive "$MANAGER_PID"; do sleep 0.2; done
fi
setsid bin/manager --node-name "$NODE" --containerd-address "$SOCK" --containerd-namespace fnlet \
	--log-dir "$FNLET_STATE/calls" --metrics-bind-address 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18081 \
	>>"$FNLET_LOGS/manager.log" 2>&1 </dev/null &
echo $! >"$MANAGER_PID"
WAIT_SECS=30 wait_for curl -sf http://127.0.0.1:18081/readyz || die "manager not ready; see $FNLET_LOGS/manager.log"
log "manager running: pid $(cat "$MANAGER_PID"), node $NODE, log $FNLET_LOGS/manager.log"

# A fresh run every time: samples from a previous demo are replaced.
kubectl delete -k config/samples --ignore-not-found --wait=true >/dev/null
kubectl apply -k config/samples
names=$(kubectl get -k config/samples -o jsonpath='{.items[*].metadata.name}')
for n in $names; do
	for _ in $(seq 300); do
		phase=$(kubectl get fc "$n" -o jsonpath='{.status.phase}')
		case $phase in Succeeded | Failed) break ;; esac
		sleep 0.1
	done
done
echo
kubectl get fc -o wide
for n in $names; do
	echo
	echo "--- $n: $(kubectl get fc "$n" -o jsonpath='{.status.phase}/{.status.reason}: {.status.message}')"
	echo "stdout: $(kubectl get fc "$n" -o jsonpath='{.status.stdout}')"
	echo "stderr: $(kubectl get fc "$n" -o jsonpath='{.status.stderr}' | head -c 200)"
done
cat <<EOM

fnlet is running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl get fc; kubectl describe fc hello
  kubectl apply -f config/samples/fnlet_v1alpha1_functioncall_hello.yaml
Stop everything with: make demo-down
EOM
