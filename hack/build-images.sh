#!/usr/bin/env bash
# Build fnlet's test images as OCI tarballs and import them into containerd.
#
#   localhost/fnlet/busybox:v1  static busybox with the common applets
#                               symlinked in /bin; no Entrypoint, Cmd ["sh"]
#   localhost/fnlet/testfn:v1   the static test program (test/testfn) at
#                               /testfn, Entrypoint ["/testfn"]
# Both carry /etc/passwd and /etc/group (root, fn=1000:1000) and /tmp (1777).
#
# Tarballs: $FNLET_CACHE/images/{busybox,testfn}-v1.tar, each with .digest
# (manifest digest) and .key (hash of every input: sources, busybox binary, Go
# version, this script). They are rebuilt only when the key changes, and the
# build is deterministic, so an unchanged source gives the same digest.
#
# Import: into the private test containerd (hack/containerd-up.sh, namespace
# $CTRD_NS) via ctr_cmd, only when the image is missing or has another digest.
# Another daemon/namespace (e.g. a cluster's containerd):
#   IMPORT_ADDRESS=/run/containerd/containerd.sock IMPORT_NAMESPACE=k8s.io hack/build-images.sh
# IMPORT_CTR overrides the ctr binary used with IMPORT_ADDRESS (default: the
# v2 ctr from the cache if built, else ctr from PATH).
#
# Usage: hack/build-images.sh [--build-only]
#   --build-only  build the tarballs, import nothing
# Prints the image refs on stdout, one a line. Idempotent; concurrent runs
# serialise on a lock file.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

build_only=false
case "${1:-}" in
"") ;;
--build-only) build_only=true ;;
*) die "usage: $0 [--build-only]" ;;
esac

IMAGES_DIR=$FNLET_CACHE/images
BUSYBOX_REF=localhost/fnlet/busybox:v1
TESTFN_REF=localhost/fnlet/testfn:v1
BUSYBOX_TAR=$IMAGES_DIR/busybox-v1.tar
TESTFN_TAR=$IMAGES_DIR/testfn-v1.tar
APPLETS="sh echo cat sleep true false env id pwd ls head yes dd wc sha256sum printf kill ps seq"
BUSYBOX_BIN=${BUSYBOX_BIN:-/bin/busybox}
# All entries get this mtime (2024-01-01T00:00:00Z), so builds are reproducible.
export SOURCE_DATE_EPOCH=1704067200

mkdir -p "$IMAGES_DIR"
exec 9>"$IMAGES_DIR/.lock"
flock 9

[ -x "$BUSYBOX_BIN" ] || die "$BUSYBOX_BIN missing: run hack/install-deps.sh (busybox-static)"
file -L "$BUSYBOX_BIN" 2>/dev/null | grep -q 'statically linked' ||
	ldd "$BUSYBOX_BIN" 2>&1 | grep -q 'not a dynamic executable' ||
	die "$BUSYBOX_BIN is not statically linked (install busybox-static)"

# The inputs of each image, hashed.
src_hash() {
	(
		cd "$FNLET_ROOT"
		find "$@" -type f \( -name '*.go' -o -name '*.sh' \) -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
		go version
		sha256sum hack/build-images.sh
	) | sha256sum | cut -d' ' -f1
}
mkimage_key=$(src_hash hack/tools/mkimage)
busybox_key=$( (echo "$mkimage_key $APPLETS"; sha256sum <"$BUSYBOX_BIN") | sha256sum | cut -d' ' -f1)
testfn_key=$( (echo "$mkimage_key"; src_hash test/testfn) | sha256sum | cut -d' ' -f1)

fresh() { [ -s "$1" ] && [ -s "$1.digest" ] && [ "$(cat "$1.key" 2>/dev/null)" = "$2" ]; }

work=
cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap cleanup EXIT

# need_work creates the scratch dir and builds mkimage into it, once.
need_work() {
	[ -z "$work" ] || return 0
	work=$(mktemp -d "$IMAGES_DIR/.work.XXXXXX")
	log "building mkimage"
	go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -o "$work/mkimage" ./hack/tools/mkimage
}

# base_rootfs DIR: the files both images share.
base_rootfs() {
	mkdir -p "$1/etc" "$1/tmp" "$1/root"
	chmod 1777 "$1/tmp"
	chmod 0700 "$1/root"
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'fn:x:1000:1000:fn:/tmp:/bin/sh' >"$1/etc/passwd"
	printf '%s\n' 'root:x:0:' 'fn:x:1000:' >"$1/etc/group"
	chmod 0644 "$1/etc/passwd" "$1/etc/group"
}

# finish TAR KEY DIGEST: record what was built.
finish() {
	echo "$3" >"$1.digest"
	echo "$2" >"$1.key"
	log "built $1 ($3)"
}

if ! fresh "$BUSYBOX_TAR" "$busybox_key"; then
	need_work
	r=$work/busybox-rootfs
	base_rootfs "$r"
	mkdir -p "$r/bin"
	install -m 0755 "$BUSYBOX_BIN" "$r/bin/busybox"
	for a in $APPLETS; do ln -s busybox "$r/bin/$a"; done
	d=$("$work/mkimage" -rootfs "$r" -ref "$BUSYBOX_REF" -out "$BUSYBOX_TAR" -cmd sh)
	finish "$BUSYBOX_TAR" "$busybox_key" "$d"
fi

if ! fresh "$TESTFN_TAR" "$testfn_key"; then
	need_work
	r=$work/testfn-rootfs
	base_rootfs "$r"
	log "building testfn"
	go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -ldflags "-s -w" -o "$work/testfn" ./test/testfn
	install -m 0755 "$work/testfn" "$r/testfn"
	d=$("$work/mkimage" -rootfs "$r" -ref "$TESTFN_REF" -out "$TESTFN_TAR" -entrypoint /testfn)
	finish "$TESTFN_TAR" "$testfn_key" "$d"
fi

if ! $build_only; then
	if [ -n "${IMPORT_ADDRESS:-}" ]; then
		import_ns=${IMPORT_NAMESPACE:-$CTRD_NS}
		import_ctr=${IMPORT_CTR:-}
		if [ -z "$import_ctr" ]; then
			import_ctr=ctr
			[ -x "$CONTAINERD_BIN/ctr" ] && import_ctr=$CONTAINERD_BIN/ctr
		fi
		ictr() { "$import_ctr" --address "$IMPORT_ADDRESS" --namespace "$import_ns" "$@"; }
		where="$IMPORT_ADDRESS namespace $import_ns"
	else
		CTRD_NS=${IMPORT_NAMESPACE:-$CTRD_NS}
		ictr() { ctr_cmd "$@"; }
		where="$CTRD_SOCK namespace $CTRD_NS"
	fi
	ictr version >/dev/null 2>&1 ||
		die "no containerd at $where (start one with: FNLET_CONTAINERD=$FNLET_CONTAINERD hack/containerd-up.sh)"
	for pair in "$BUSYBOX_REF $BUSYBOX_TAR" "$TESTFN_REF $TESTFN_TAR"; do
		ref=${pair%% *} tar=${pair#* }
		want=$(cat "$tar.digest")
		have=$(ictr images ls "name==$ref" | awk -v r="$ref" '$1 == r { print $3 }')
		if [ "$have" = "$want" ]; then
			continue
		fi
		# ctr 2.x imports through the Transfer service, which a 1.x daemon
		# lacks: fall back to a client-side import then.
		if ! out=$(ictr images import "$tar" 2>&1); then
			case "$out" in
			*"unknown service"*) ictr images import --local "$tar" >/dev/null ;;
			*) die "import of $tar into $where failed: $out" ;;
			esac
		fi
		have=$(ictr images ls "name==$ref" | awk -v r="$ref" '$1 == r { print $3 }')
		[ "$have" = "$want" ] || die "import of $tar into $where gave '$have', want $want"
		log "imported $ref ($want) into $where"
	done
fi

echo "$BUSYBOX_REF"
echo "$TESTFN_REF"
