#!/usr/bin/env bash
# Smoke test of the single-node cluster (brought up if needed): a Pod from a
# locally built image (static busybox + hack/cluster/apicheck) runs on the
# bridge network, reaches the apiserver through the kubernetes Service with
# its service account token, and must end Succeeded.
# Usage: hack/cluster/smoke.sh   (prints the pod's log; exit 0 = pass)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../k8s-lib.sh"

IMAGE=localhost/fnlet/cluster-smoke:v1
TAR=$FNLET_CACHE/cluster-images/cluster-smoke-v1.tar
NS=fnlet-smoke
BUSYBOX=${BUSYBOX_BIN:-/bin/busybox}

"$FNLET_ROOT/hack/cluster-up.sh" >/dev/null

# Build the image only when its inputs change.
key=$( (
	cd "$FNLET_ROOT"
	cat hack/cluster/apicheck/*.go hack/tools/mkimage/*.go
	sha256sum <"$BUSYBOX"
	go version
) | sha256sum | cut -d' ' -f1)
mkdir -p "$(dirname "$TAR")"
if [ "$(cat "$TAR.key" 2>/dev/null)" != "$key" ] || [ ! -s "$TAR" ]; then
	work=$(mktemp -d "$(dirname "$TAR")/.work.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp"
	install -m 0755 "$BUSYBOX" "$work/rootfs/bin/busybox"
	for applet in sh echo cat hostname sleep; do ln -s busybox "$work/rootfs/bin/$applet"; done
	go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -ldflags "-s -w" -o "$work/rootfs/apicheck" ./hack/cluster/apicheck
	go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -o "$work/mkimage" ./hack/tools/mkimage
	SOURCE_DATE_EPOCH=1704067200 "$work/mkimage" -rootfs "$work/rootfs" -ref "$IMAGE" -out "$TAR" -cmd /bin/sh >"$TAR.digest"
	echo "$key" >"$TAR.key"
fi
digest=$(cat "$TAR.digest")
have=$(cluster_ctr -n k8s.io images ls "name==$IMAGE" | awk -v r="$IMAGE" '$1 == r { print $3 }')
[ "$have" = "$digest" ] || cluster_ctr -n k8s.io images import "$TAR" >/dev/null

start=$SECONDS
kubectl_admin delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl_admin create namespace "$NS" >/dev/null
# The namespace's default ServiceAccount appears asynchronously (KCM).
WAIT_SECS=30 wait_for kubectl_admin -n "$NS" get serviceaccount default || die "no default ServiceAccount in $NS"
kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: smoke, namespace: $NS}
spec:
  restartPolicy: Never
  containers:
  - name: smoke
    image: $IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo hello from \$(hostname); /apicheck"]
EOF
phase=
for _ in $(seq 1 300); do
	phase=$(kubectl_admin -n "$NS" get pod smoke -o jsonpath='{.status.phase}')
	case "$phase" in Succeeded | Failed) break ;; esac
	sleep 0.2
done
kubectl_admin -n "$NS" logs smoke || true
if [ "$phase" != Succeeded ]; then
	kubectl_admin -n "$NS" describe pod smoke >&2 || true
	die "smoke pod ended in phase '$phase'"
fi
log "smoke pod Succeeded $((SECONDS - start))s after apply"
kubectl_admin delete namespace "$NS" --wait=false >/dev/null
