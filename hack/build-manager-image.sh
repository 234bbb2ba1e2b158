#!/usr/bin/env bash
# Build the manager image with Go tooling only: a static binary packed by our
# stdlib OCI packer (hack/tools/mkimage) into an OCI image-layout tarball — no
# Docker, no registry, no extra tool to download. The same tarball imports
# with `ctr images import` and loads with `kind load image-archive`.
#
#   hack/build-manager-image.sh            build; print the tarball path
#   IMPORT_ADDRESS=SOCK hack/build-manager-image.sh   also import into SOCK's
#                                          k8s.io namespace (what kubelet uses)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FNLET_ROOT"
REF=${FNLET_MANAGER_IMAGE:-localhost/fnlet/manager:dev}
out=$FNLET_CACHE/images/manager.tar
mkdir -p "$(dirname "$out")"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
go build -trimpath -ldflags "-s -w" -o "$root/manager" ./cmd/manager
# Beside the manager, where it looks for it; it copies it to the node at start.
"$FNLET_ROOT/hack/build-init.sh" "$root/fnlet-init"
# Registries are verified against the system CAs (plus --registry-ca).
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
go run ./hack/tools/mkimage -rootfs "$root" -ref "$REF" -out "$out" -entrypoint /manager >/dev/null
if [ -n "${IMPORT_ADDRESS:-}" ]; then
	ctr=ctr
	[ -x "$CONTAINERD_BIN/ctr" ] && ctr=$CONTAINERD_BIN/ctr
	"$ctr" --address "$IMPORT_ADDRESS" --namespace "${IMPORT_NAMESPACE:-k8s.io}" images import "$out" >/dev/null 2>&1
	log "imported $REF into $IMPORT_ADDRESS (${IMPORT_NAMESPACE:-k8s.io})"
fi
echo "$out"
