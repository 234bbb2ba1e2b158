#!/usr/bin/env bash
# Start a private image registry for fnlet's pull tests and push the testfn
# image into it. Debian's docker-registry (distribution 2.8) on 127.0.0.1 with
# TLS from a self-signed CA and htpasswd (bcrypt) auth.
#
#   address   127.0.0.1:$FNLET_REGISTRY_PORT (default 5443), https only
#   login     fnlet / fnlet-secret
#   image     127.0.0.1:PORT/fnlet/testfn:v1 (hack/build-images.sh's tarball)
#   state     $FNLET_STATE/registry: tls/ (CA and server key pair), certs/
#             (ca.crt only: a --cert-dir for skopeo, or a CA file for Go),
#             htpasswd, config.yml, data/ (the blobs), policy.json
#   run       $FNLET_RUN/registry: pid, env
#   log       $FNLET_LOGS/registry.log
#
# $FNLET_RUN/registry/env has KEY=VALUE lines (shell-sourceable) for tests:
# FNLET_REGISTRY, FNLET_REGISTRY_CA, FNLET_REGISTRY_CERT_DIR,
# FNLET_REGISTRY_USER, FNLET_REGISTRY_PASSWORD, FNLET_REGISTRY_IMAGE,
# FNLET_REGISTRY_IMAGE_DIGEST.
#
# Idempotent: a running registry is reused, the CA and certificates are kept
# (regenerated only if missing, invalid or for another address), the image is
# pushed only if the registry lacks that digest. Prints the env file path.
# Stop with hack/registry-down.sh (--purge also deletes the state).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PORT=${FNLET_REGISTRY_PORT:-5443}
ADDR=127.0.0.1:$PORT
REG_USER=fnlet
REG_PASSWORD=fnlet-secret
REG_STATE=$FNLET_STATE/registry
REG_RUN=$FNLET_RUN/registry
REG_PID=$REG_RUN/pid
REG_ENV=$REG_RUN/env
REG_LOG=$FNLET_LOGS/registry.log
TLS=$REG_STATE/tls
CERTS=$REG_STATE/certs
IMAGE=$ADDR/fnlet/testfn:v1

for c in docker-registry skopeo htpasswd openssl curl; do
	command -v "$c" >/dev/null || die "$c missing: run hack/install-deps.sh"
done
mkdir -p "$REG_STATE/data" "$TLS" "$CERTS" "$REG_RUN" "$FNLET_LOGS"
chmod 0700 "$TLS"

# registry_alive: the PID file names a running docker-registry (not a reused PID).
registry_alive() {
	pid_alive "$REG_PID" && tr '\0' ' ' <"/proc/$(cat "$REG_PID")/cmdline" 2>/dev/null | grep -q docker-registry
}

# --- TLS: a CA, and a server certificate for 127.0.0.1 and localhost -------
if ! openssl x509 -in "$TLS/ca.crt" -noout -checkend 86400 >/dev/null 2>&1 || [ ! -s "$TLS/ca.key" ]; then
	log "creating the registry CA"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$TLS/ca.key" -out "$TLS/ca.crt" -days 3650 -subj "/CN=fnlet test registry CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	rm -f "$TLS/server.crt"
fi
server_cert_ok() {
	[ -s "$TLS/server.key" ] &&
		openssl verify -CAfile "$TLS/ca.crt" "$TLS/server.crt" >/dev/null 2>&1 &&
		openssl x509 -in "$TLS/server.crt" -noout -checkend 86400 >/dev/null 2>&1 &&
		openssl x509 -in "$TLS/server.crt" -noout -ext subjectAltName 2>/dev/null | grep -q 'IP Address:127.0.0.1' &&
		openssl x509 -in "$TLS/server.crt" -noout -ext subjectAltName 2>/dev/null | grep -q 'DNS:localhost'
}
if ! server_cert_ok; then
	log "creating the registry server certificate"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$TLS/server.key" -out "$TLS/server.csr" -subj "/CN=localhost" 2>/dev/null
	openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 825 -out "$TLS/server.crt" \
		-extfile <(printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
			"basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
			"extendedKeyUsage=serverAuth") 2>/dev/null
	rm -f "$TLS/server.csr"
	server_cert_ok || die "generated server certificate does not verify"
	# A running registry still serves the old certificate.
	registry_alive && "$FNLET_ROOT/hack/registry-down.sh"
fi
cmp -s "$TLS/ca.crt" "$CERTS/ca.crt" || install -m 0644 "$TLS/ca.crt" "$CERTS/ca.crt"

# --- auth, policy, config -----------------------------------------------------
htpasswd -vb "$REG_STATE/htpasswd" "$REG_USER" "$REG_PASSWORD" >/dev/null 2>&1 ||
	htpasswd -Bbc "$REG_STATE/htpasswd" "$REG_USER" "$REG_PASSWORD" 2>/dev/null
# skopeo needs a signature policy; do not depend on /etc/containers.
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$REG_STATE/policy.json"
[ -s "$REG_STATE/http-secret" ] || openssl rand -hex 32 >"$REG_STATE/http-secret"
cfg=$(
	cat <<CFG
# Written by hack/registry-up.sh; rewritten on every run.
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REG_STATE/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ADDR
  secret: $(cat "$REG_STATE/http-secret")
  tls:
    certificate: $TLS/server.crt
    key: $TLS/server.key
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: fnlet-test-registry
    path: $REG_STATE/htpasswd
CFG
)
# port_taken: something listens on $ADDR, and it is not our own registry
# already configured for it. Checked before stopping anything.
port_taken() {
	ss -ltn 2>/dev/null | awk '{print $4}' | grep -qx "$ADDR" || return 1
	! { registry_alive && grep -qx "  addr: $ADDR" "$REG_STATE/config.yml" 2>/dev/null; }
}
port_taken && die "$ADDR is in use by another process; set FNLET_REGISTRY_PORT"
if [ "$cfg" != "$(cat "$REG_STATE/config.yml" 2>/dev/null)" ]; then
	printf '%s\n' "$cfg" >"$REG_STATE/config.yml"
	# A running registry started with another config (e.g. another port).
	registry_alive && "$FNLET_ROOT/hack/registry-down.sh"
fi

# --- the daemon ---------------------------------------------------------------
# http_code [CURL ARGS]: status of GET /v2/ over verified TLS.
http_code() {
	curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CERTS/ca.crt" "$@" "https://$ADDR/v2/" 2>/dev/null || true
}
if ! registry_alive; then
	rm -f "$REG_PID" "$REG_ENV"
	port_taken && die "$ADDR is in use by another process; set FNLET_REGISTRY_PORT"
	# setsid: the registry must not die with the shell that started it.
	setsid docker-registry serve "$REG_STATE/config.yml" >>"$REG_LOG" 2>&1 </dev/null 8>&- 9>&- &
	echo $! >"$REG_PID"
	# Up when /v2/ answers 401 (auth required); give up early if it died.
	for _ in $(seq 100); do
		[ "$(http_code)" = 401 ] && break
		registry_alive || break
		sleep 0.2
	done
	if [ "$(http_code)" != 401 ]; then
		tail -20 "$REG_LOG" >&2
		die "registry did not come up on $ADDR (log: $REG_LOG)"
	fi
	log "registry up: pid $(cat "$REG_PID"), https://$ADDR, log $REG_LOG"
fi
[ "$(http_code -u "$REG_USER:$REG_PASSWORD")" = 200 ] || die "registry on $ADDR rejects $REG_USER's password"

# --- the test image -------------------------------------------------------
"$FNLET_ROOT/hack/build-images.sh" --build-only >/dev/null
tar=$FNLET_CACHE/images/testfn-v1.tar
want=$(cat "$tar.digest")
skopeo_() { skopeo --policy "$REG_STATE/policy.json" "$@"; }
remote_digest() {
	skopeo_ inspect --raw --creds "$REG_USER:$REG_PASSWORD" --cert-dir "$CERTS" "docker://$IMAGE" 2>/dev/null |
		sha256sum | awk '{print "sha256:" $1}'
}
if [ "$(remote_digest)" != "$want" ]; then
	# The archive holds one image, so no :REF suffix is needed after the
	# path; --preserve-digests makes skopeo fail rather than alter the manifest.
	skopeo_ copy -q --preserve-digests --dest-creds "$REG_USER:$REG_PASSWORD" --dest-cert-dir "$CERTS" \
		"oci-archive:$tar" "docker://$IMAGE"
	got=$(remote_digest)
	[ "$got" = "$want" ] || die "pushed $IMAGE has digest $got, want $want"
	log "pushed $IMAGE ($want)"
fi

# Without credentials the registry must refuse (the tests rely on it).
if out=$(skopeo_ inspect --raw --no-creds --cert-dir "$CERTS" "docker://$IMAGE" 2>&1); then
	die "registry served $IMAGE without credentials"
fi
case "$out" in
*401* | *nauthorized* | *"authentication required"*) ;;
*) die "anonymous inspect of $IMAGE failed, but not with 401: $out" ;;
esac

tmp=$REG_ENV.tmp.$$
cat >"$tmp" <<ENV
# Written by hack/registry-up.sh; removed by hack/registry-down.sh.
FNLET_REGISTRY=$ADDR
FNLET_REGISTRY_CA=$CERTS/ca.crt
FNLET_REGISTRY_CERT_DIR=$CERTS
FNLET_REGISTRY_USER=$REG_USER
FNLET_REGISTRY_PASSWORD=$REG_PASSWORD
FNLET_REGISTRY_IMAGE=$IMAGE
FNLET_REGISTRY_IMAGE_DIGEST=$want
ENV
mv "$tmp" "$REG_ENV"
echo "$REG_ENV"
