#!/usr/bin/env bash
# Build the manager image with Go tooling only: a static binary packed by our
# stdlib OCI packer (hack/tools/mkimage) into an OCI image-layout tarball — no
# Docker, no registry, no extra tool to download. The same tarball imports
# with `ctr images import` and loads with `kind load image-archive`.
#
#   hack/build-manager-image.sh            build; print the tarball path
#   IMPORT_ADDRESS=SOCK hack/build-manager-image.sh   also import into SOCK's
#                                          k8s.io namespace (what kubelet uses)
#
# Besides the manager and fnlet-init, the image carries this host's iptables
# (xtables-nft-multi, its libraries and extensions, and the C library): for
# network: pod (config/components/pod-network) the manager runs the node's
# CNI plugins, which masquerade through iptables and, on Debian, are
# dynamically linked. The default deployment never runs them.
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
# copy_with_libs FILE...: FILE and the shared libraries it loads, at their paths.
copy_with_libs() {
	local f lib
	for f in "$@"; do
		mkdir -p "$root$(dirname "$f")"
		cp -L "$f" "$root$f"
		for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			[ -e "$root$lib" ] && continue
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done
	done
}
xtables=$(readlink -f "$(command -v iptables)")
if [ -x "$xtables" ]; then
	copy_with_libs "$xtables" /usr/lib/x86_64-linux-gnu/xtables/*.so
	mkdir -p "$root/usr/sbin"
	for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sf "$xtables" "$root/usr/sbin/$n"
	done
	# glibc's name service switch, for the plugins' user and host lookups
	[ -f /lib/x86_64-linux-gnu/libnss_files.so.2 ] && copy_with_libs /lib/x86_64-linux-gnu/libnss_files.so.2
else
	log "warning: no iptables on this host: the image cannot run masquerading CNI plugins (network: pod)"
fi
go run ./hack/tools/mkimage -rootfs "$root" -ref "$REF" -out "$out" -entrypoint /manager >/dev/null
if [ -n "${IMPORT_ADDRESS:-}" ]; then
	ctr=ctr
	[ -x "$CONTAINERD_BIN/ctr" ] && ctr=$CONTAINERD_BIN/ctr
	"$ctr" --address "$IMPORT_ADDRESS" --namespace "${IMPORT_NAMESPACE:-k8s.io}" images import "$out" >/dev/null 2>&1
	log "imported $REF into $IMPORT_ADDRESS (${IMPORT_NAMESPACE:-k8s.io})"
fi
echo "$out"
