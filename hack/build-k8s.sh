#!/usr/bin/env bash
# Build etcd and the Kubernetes server binaries from the Go module proxy (no
# release downloads), once per version, into the cache outside the repo:
#   $ETCD_BIN/etcd
#   $K8S_BIN/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl}
#   $CRICTL_BIN/crictl (cri-tools; cluster-down.sh tears pods down through CRI)
# and an envtest assets dir ($FNLET_CACHE/envtest-$K8S_VERSION) with symlinks
# kube-apiserver, etcd and kubectl.
#
# Usage: hack/build-k8s.sh [--apiserver-only] [--kubeadm] [--print-assets]
#   --apiserver-only  build only etcd + kube-apiserver (what envtest needs and
#                     control-plane-up.sh runs);
#                     5-11 min cold instead of 7-20 min for everything.
#   --kubeadm         also build kubeadm (kind's node image runs it; our
#                     own cluster does not, so it is not built by default)
#   --print-assets    print the envtest assets dir as the last stdout line:
#                     KUBEBUILDER_ASSETS=$(hack/build-k8s.sh --apiserver-only --print-assets)
#
# Binaries already present are skipped, so a warm run takes well under a
# second. All build output and timings go to stderr; stdout carries only the
# assets path. Concurrent invocations serialize on a lock file, so a test that
# asks for the assets while a build runs waits for it instead of racing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"

apiserver_only=false
with_kubeadm=false
print_assets=false
for arg in "$@"; do
	case "$arg" in
	--apiserver-only) apiserver_only=true ;;
	--kubeadm) with_kubeadm=true ;;
	--print-assets) print_assets=true ;;
	-h | --help)
		awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
		exit 0
		;;
	*) die "unknown argument: $arg" ;;
	esac
done

ETCD_BUILD=$FNLET_CACHE/etcdbuild-$ETCD_VERSION
K8S_BUILD=$FNLET_CACHE/k8sbuild-$K8S_VERSION
ENVTEST_ASSETS=$FNLET_CACHE/envtest-$K8S_VERSION
# kubectl too: a client of the same version as the server, independent of
# whatever kubectl the machine happens to have.
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# Pinned in the build module even when not built, so --kubeadm later needs
# no new go mod tidy.
MODULE_CMDS=("${K8S_CMDS[@]}" kubeadm)

# Staging modules are published as v0.<minor>.<patch> for k8s v1.<minor>.<patch>.
k8s_semver=${K8S_VERSION#v}
staging_version=v0.${k8s_semver#1.}
k8s_major=${k8s_semver%%.*}
k8s_minor=${k8s_semver#*.}
k8s_minor=${k8s_minor%%.*}

# timed CMD... runs CMD and logs how long it took.
timed() {
	local start=$SECONDS
	"$@"
	log "took $((SECONDS - start))s: $*"
}

# The go directive of the generated modules: the toolchain we run, so go
# mod tidy neither downloads a toolchain nor complains about an old one.
go_directive() { go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1.0/'; }

# make_etcd_module writes a 3-line main around etcdmain.Main: etcd's own
# repository has no single module for the server binary we could go install.
make_etcd_module() {
	[ -f "$ETCD_BUILD/go.sum" ] && return 0
	log "generating etcd build module in $ETCD_BUILD"
	mkdir -p "$ETCD_BUILD"
	cat >"$ETCD_BUILD/main.go" <<'EOF'
// Command etcd is etcd's server binary, built from the published modules.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
	cat >"$ETCD_BUILD/go.mod" <<EOF
module fnlet.local/etcdbuild

go $(go_directive)

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
	(cd "$ETCD_BUILD" && go mod tidy) >&2
}

# make_k8s_module writes a module requiring k8s.io/kubernetes whose replace
# block maps every staging module (v0.0.0 => ./staging/... in kubernetes' own
# go.mod, which only works inside the kubernetes repo) to its published
# version. tools.go must import every command we build, otherwise go mod tidy
# leaves out their dependencies ("missing go.sum entry").
make_k8s_module() {
	local c complete=true
	for c in "${MODULE_CMDS[@]}"; do
		grep -q "\"k8s.io/kubernetes/cmd/$c\"" "$K8S_BUILD/tools.go" 2>/dev/null || complete=false
	done
	[ -f "$K8S_BUILD/go.sum" ] && $complete && return 0
	log "generating Kubernetes build module in $K8S_BUILD"
	local upstream
	upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
	[ -f "$upstream" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod"
	mkdir -p "$K8S_BUILD"
	{
		printf 'module fnlet.local/k8sbuild\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$(go_directive)" "$K8S_VERSION"
		awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }' "$upstream"
		printf ')\n'
	} >"$K8S_BUILD/go.mod"
	grep -q '=> k8s.io/api ' "$K8S_BUILD/go.mod" || die "no staging replaces found in $upstream"
	{
		printf '//go:build tools\n\n// Package k8sbuild only pins the Kubernetes commands we build.\npackage k8sbuild\n\nimport (\n'
		for c in "${MODULE_CMDS[@]}"; do
			printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"
		done
		printf ')\n'
	} >"$K8S_BUILD/tools.go"
	(cd "$K8S_BUILD" && go mod tidy) >&2
}

build_etcd() {
	[ -x "$ETCD_BIN/etcd" ] && return 0
	make_etcd_module
	log "building etcd $ETCD_VERSION into $ETCD_BIN"
	mkdir -p "$ETCD_BIN"
	local tmp
	tmp=$(mktemp -d "$ETCD_BIN/.build.XXXXXX")
	# Build into a temp dir and rename: an interrupted build must not leave a
	# truncated binary that the "already present" check would trust.
	(cd "$ETCD_BUILD" && timed go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)
	mv "$tmp/etcd" "$ETCD_BIN/etcd"
	rmdir "$tmp"
}

# build_k8s CMD... builds the missing ones among CMD in ONE go build: the
# commands share most packages, so one invocation is much faster than several.
build_k8s() {
	local want=() c
	for c in "$@"; do
		[ -x "$K8S_BIN/$c" ] || want+=("$c")
	done
	[ ${#want[@]} -eq 0 ] && return 0
	make_k8s_module
	log "building ${want[*]} $K8S_VERSION into $K8S_BIN (cold on 2 cores: 5-11 min for kube-apiserver alone, 7-20 min for all, depending on load)"
	mkdir -p "$K8S_BIN"
	local tmp pkgs=() vpkg=k8s.io/component-base/version
	for c in "${want[@]}"; do
		pkgs+=("k8s.io/kubernetes/cmd/$c")
	done
	# Without gitVersion the components report v0.0.0-master+$Format:%H$,
	# which breaks the node's VERSION column and version-skew checks.
	local ldflags
	ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=$k8s_major -X $vpkg.gitMinor=$k8s_minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	tmp=$(mktemp -d "$K8S_BIN/.build.XXXXXX")
	(cd "$K8S_BUILD" && timed go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
	for c in "${want[@]}"; do
		mv "$tmp/$c" "$K8S_BIN/$c"
	done
	rmdir "$tmp"
}

build_crictl() {
	[ -x "$CRICTL_BIN/crictl" ] && return 0
	log "building crictl $CRICTL_VERSION into $CRICTL_BIN"
	mkdir -p "$CRICTL_BIN"
	local tmp
	tmp=$(mktemp -d "$CRICTL_BIN/.build.XXXXXX")
	timed env GOBIN="$tmp" GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
	mv "$tmp/crictl" "$CRICTL_BIN/crictl"
	rmdir "$tmp"
}

make_assets() {
	mkdir -p "$ENVTEST_ASSETS"
	ln -sfn "$K8S_BIN/kube-apiserver" "$ENVTEST_ASSETS/kube-apiserver"
	ln -sfn "$ETCD_BIN/etcd" "$ENVTEST_ASSETS/etcd"
	if [ -x "$K8S_BIN/kubectl" ]; then
		ln -sfn "$K8S_BIN/kubectl" "$ENVTEST_ASSETS/kubectl"
	else
		ln -sfn "$(command -v kubectl || echo /usr/bin/kubectl)" "$ENVTEST_ASSETS/kubectl"
	fi
}

# main is called on the last line, so bash has parsed the whole file before
# running anything: editing this script while a long build runs cannot
# change what the running instance executes.
main() {
	mkdir -p "$FNLET_CACHE"
	exec 9>"$FNLET_CACHE/build-k8s-$K8S_VERSION.lock"
	if ! flock -n 9; then
		log "another build-k8s.sh holds $FNLET_CACHE/build-k8s-$K8S_VERSION.lock; waiting"
		flock 9
	fi

	local total=$SECONDS
	# Kubernetes first: etcd shares grpc/otel/protobuf packages with it, so it then
	# mostly links from the warm build cache.
	if $apiserver_only; then
		build_k8s kube-apiserver
	elif $with_kubeadm; then
		build_k8s "${K8S_CMDS[@]}" kubeadm
	else
		build_k8s "${K8S_CMDS[@]}"
	fi
	build_etcd
	$apiserver_only || build_crictl
	make_assets
	log "ready in $((SECONDS - total))s: etcd in $ETCD_BIN, Kubernetes in $K8S_BIN, envtest assets in $ENVTEST_ASSETS"
	if $print_assets; then
		echo "$ENVTEST_ASSETS"
	fi
}

main
exit
