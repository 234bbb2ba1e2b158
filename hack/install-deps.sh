#!/usr/bin/env bash
# Install the Debian packages fnlet's scripts and tests need, only those missing.
# Safe to run repeatedly; needs root (CI runs as root).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
pkgs=(
	containerd runc crun busybox-static   # runtime; Debian's containerd 1.6 is the compat daemon
	docker-registry skopeo apache2-utils  # a real local registry with htpasswd for pull tests
	openssl iproute2 iptables conntrack   # control plane certs, node networking
	containernetworking-plugins psmisc procps curl ca-certificates git
	gcc libc6-dev                         # fnlet-init, the calls' static PID 1 (hack/build-init.sh)
)
# kubectl: the machine image ships one (v1.32); Debian's kubernetes-client
# conflicts with it, so we only check.
command -v kubectl >/dev/null || die "kubectl not found: install kubectl (v1.30+) on PATH"
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts some daemons on install when it can; we start our own, by hand.
