#!/usr/bin/env bash
# Generate the PKI and kubeconfigs for the local control plane and node into
# $FNLET_STATE/control-plane/pki (openssl, ECDSA P-256: fast to generate).
# Idempotent: existing files are kept; the apiserver serving cert is reissued
# only when its SANs change (e.g. a new node IP).
#
#   ca                        cluster CA, also signs kubelet CSRs (KCM)
#   apiserver                 serving cert: 127.0.0.1, localhost, SERVICE_IP, NODE_IP, kubernetes.default...
#   admin                     O=system:masters, for admin.kubeconfig
#   apiserver-kubelet-client  O=system:masters, apiserver -> kubelet (logs/exec)
#   kube-controller-manager, kube-scheduler, kube-proxy, node-NODE_NAME (O=system:nodes)
#   sa.key / sa.pub           service account token signing pair
#   front-proxy-ca            the aggregation layer's own CA (as kubeadm's): it signs
#   front-proxy-client        the apiserver's client cert towards aggregated APIs
#                             (fnlet's log API); a separate CA so that no user
#                             cert of the cluster CA can pass as the front proxy
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"

umask 077
mkdir -p "$PKI_DIR"
cd "$PKI_DIR"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.crt ]; then
	newkey ca.key
	openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=fnlet-dev-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out ca.crt 2>/dev/null
	# New CA: everything signed by an old one is useless now.
	rm -f ./*.sans apiserver.crt admin.crt apiserver-kubelet-client.crt kube-*.crt node-*.crt ./*.kubeconfig
fi

# issue NAME SUBJECT EXTENSIONS signs NAME.crt with the CA unless present.
issue() {
	local name=$1 subj=$2 ext=$3
	[ -f "$name.crt" ] && return 0
	[ -f "$name.key" ] || newkey "$name.key"
	openssl req -new -key "$name.key" -subj "$subj" 2>/dev/null |
		openssl x509 -req -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
			-extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext") \
			-out "$name.crt" 2>/dev/null
}
client() { issue "$1" "$2" "extendedKeyUsage=clientAuth"; }

sans="IP:127.0.0.1,IP:$SERVICE_IP,IP:$NODE_IP,DNS:localhost,DNS:$NODE_NAME,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
if [ "$(cat apiserver.sans 2>/dev/null)" != "$sans" ]; then
	rm -f apiserver.crt
	issue apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=$sans"
	echo "$sans" >apiserver.sans
fi
client admin "/O=system:masters/CN=fnlet-admin"
client apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
client kube-controller-manager "/CN=system:kube-controller-manager"
client kube-scheduler "/CN=system:kube-scheduler"
# The default system:node-proxier ClusterRoleBinding names this user.
client kube-proxy "/CN=system:kube-proxy"
# The Node authorizer and NodeRestriction only accept this exact identity.
client "node-$NODE_NAME" "/O=system:nodes/CN=system:node:$NODE_NAME"

if [ ! -f front-proxy-ca.crt ]; then
	newkey front-proxy-ca.key
	openssl req -x509 -new -key front-proxy-ca.key -sha256 -days 3650 -subj "/CN=fnlet-dev-front-proxy-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out front-proxy-ca.crt 2>/dev/null
	rm -f front-proxy-client.crt
fi
if [ ! -f front-proxy-client.crt ]; then
	[ -f front-proxy-client.key ] || newkey front-proxy-client.key
	openssl req -new -key front-proxy-client.key -subj "/CN=front-proxy-client" 2>/dev/null |
		openssl x509 -req -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -sha256 -days 3650 \
			-extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
			-out front-proxy-client.crt 2>/dev/null
fi

if [ ! -f sa.key ]; then
	newkey sa.key
	openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
fi

# kubeconfig FILE CERT writes a self-contained kubeconfig (certs embedded, so
# it keeps working when copied or mounted elsewhere) unless already current.
kubeconfig() {
	local file=$1 cert=$2
	[ -f "$file" ] && [ "$file" -nt "$cert.crt" ] && grep -q "127.0.0.1:$APISERVER_PORT\$" "$file" && return 0
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fnlet-dev
  cluster:
    certificate-authority-data: $(base64 -w0 ca.crt)
    server: https://127.0.0.1:$APISERVER_PORT
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$cert.crt")
    client-key-data: $(base64 -w0 "$cert.key")
contexts:
- name: fnlet-dev
  context:
    cluster: fnlet-dev
    user: $cert
current-context: fnlet-dev
EOF
}
kubeconfig "$ADMIN_KUBECONFIG" admin
kubeconfig kube-controller-manager.kubeconfig kube-controller-manager
kubeconfig kube-scheduler.kubeconfig kube-scheduler
kubeconfig kube-proxy.kubeconfig kube-proxy
kubeconfig "kubelet-$NODE_NAME.kubeconfig" "node-$NODE_NAME"
