#!/usr/bin/env bash
# Start a local control plane: etcd (plain HTTP on 127.0.0.1) and
# kube-apiserver (https://127.0.0.1:$FNLET_APISERVER_PORT, default 6443), with
# PKI from hack/gen-pki.sh. Idempotent: running processes are reused.
# Prints the admin kubeconfig path as the last stdout line:
#   export KUBECONFIG=$(hack/control-plane-up.sh)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"

ETCD=$ETCD_BIN/etcd
APISERVER=$K8S_BIN/kube-apiserver
ETCD_PID=$CP_RUN/etcd.pid
APISERVER_PID=$CP_RUN/kube-apiserver.pid

mkdir -p "$CP_RUN" "$CP_STATE" "$FNLET_LOGS"
# Serialize concurrent callers (parallel test packages all calling up).
exec 9>"$CP_RUN/lock"
flock 9

start=$SECONDS
if [ ! -x "$ETCD" ] || [ ! -x "$APISERVER" ]; then
	"$FNLET_ROOT/hack/build-k8s.sh" --apiserver-only >&2
fi
"$FNLET_ROOT/hack/gen-pki.sh"

etcd_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

if our_pid "$ETCD_PID" "$ETCD"; then
	log "reusing etcd (pid $(cat "$ETCD_PID"))"
else
	for p in "$ETCD_PORT" "$ETCD_PEER_PORT"; do
		port_busy "$p" && die "port $p is taken by another process; set FNLET_ETCD_PORT/FNLET_ETCD_PEER_PORT"
	done
	start_daemon etcd "$ETCD_PID" "$ETCD" \
		--name=fnlet-dev \
		--data-dir="$CP_STATE/etcd" \
		--listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster="fnlet-dev=http://127.0.0.1:$ETCD_PEER_PORT" \
		--log-level=warn
fi
if ! WAIT_SECS=30 wait_for etcd_healthy; then
	tail -20 "$FNLET_LOGS/etcd.log" >&2
	die "etcd not healthy on 127.0.0.1:$ETCD_PORT (log: $FNLET_LOGS/etcd.log)"
fi

# An apiserver started by an older version of this script lacks the
# aggregation layer (the log API needs it): restart it once.
if our_pid "$APISERVER_PID" "$APISERVER" && ! tr '\0' ' ' <"/proc/$(cat "$APISERVER_PID")/cmdline" | grep -q -- --proxy-client-cert-file; then
	log "restarting kube-apiserver (pid $(cat "$APISERVER_PID")): started without the aggregation layer"
	stop_daemon kube-apiserver "$APISERVER_PID" "$APISERVER"
fi
if our_pid "$APISERVER_PID" "$APISERVER"; then
	log "reusing kube-apiserver (pid $(cat "$APISERVER_PID"))"
else
	port_busy "$APISERVER_PORT" && die "port $APISERVER_PORT is taken by another process; set FNLET_APISERVER_PORT"
	# The kubelet-client cert and Node authorizer are configured even for a
	# bare control plane so cluster-up.sh can reuse this apiserver unchanged.
	# --advertise-address must be the node IP: it becomes the endpoint of the
	# kubernetes Service, which pods reach through kube-proxy's DNAT.
	# --requestheader-*/--proxy-client-*: the aggregation layer, as kubeadm
	# sets it up (fnlet's log API is an APIService); aggregator routing
	# sends to an APIService's endpoints, so it works on a bare control
	# plane without kube-proxy too.
	start_daemon kube-apiserver "$APISERVER_PID" "$APISERVER" \
		--bind-address="$APISERVER_BIND" \
		--secure-port="$APISERVER_PORT" \
		--advertise-address="$NODE_IP" \
		--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
		--tls-cert-file="$PKI_DIR/apiserver.crt" \
		--tls-private-key-file="$PKI_DIR/apiserver.key" \
		--client-ca-file="$PKI_DIR/ca.crt" \
		--kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI_DIR/sa.pub" \
		--service-account-signing-key-file="$PKI_DIR/sa.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction \
		--allow-privileged=true \
		--requestheader-client-ca-file="$PKI_DIR/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$PKI_DIR/front-proxy-client.crt" \
		--proxy-client-key-file="$PKI_DIR/front-proxy-client.key" \
		--enable-aggregator-routing=true \
		--profiling=false
fi
if ! WAIT_SECS=90 wait_for apiserver_ready; then
	tail -30 "$FNLET_LOGS/kube-apiserver.log" >&2
	die "kube-apiserver not ready on 127.0.0.1:$APISERVER_PORT (log: $FNLET_LOGS/kube-apiserver.log)"
fi
log "control plane ready in $((SECONDS - start))s: kube-apiserver https://127.0.0.1:$APISERVER_PORT, etcd http://127.0.0.1:$ETCD_PORT"
echo "$ADMIN_KUBECONFIG"
