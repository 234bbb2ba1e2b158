#!/usr/bin/env bash
# Build a kind node image for $K8S_VERSION offline, from what the project
# builds itself, with kind's own `kind build node-image --type file`:
#   - kind $KIND_VERSION, go-installed into the cache;
#   - the base image: Debian (debootstrap through the apt mirror) with kind's
#     images/base files from the kind module, containerd and crictl from the
#     project's cache, and this machine's fixes (see below);
#   - a Kubernetes server tarball: kubeadm, kubelet, kubectl and the control
#     plane images, all from hack/build-k8s.sh; etcd from the same cache;
#     coredns, local-path-provisioner and pause built from Go modules.
# Nothing is pulled: every image kind and kubeadm ask for is in the tarball
# (kind reads only the first entry's tags, so one archive carries them all).
#
# Needs a Docker engine (hack/docker-up.sh; DOCKER_HOST). Prints the image
# ref as the last stdout line; logs and timings go to stderr.
#
# Cache: each piece is keyed by its inputs (versions, the kind module's
# files, this script) like the other hack/build-*.sh: the base rootfs tar in
# $FNLET_CACHE/kind-node-$K8S_VERSION, binaries in $FNLET_CACHE/kind-addons,
# and the node image itself in Docker, tagged with the key. A warm run
# only checks the key; the first run takes 10-25 min, mostly Go builds.
#
# Fixes baked in for hosts like this one (cgroup v1, no CAP_SYS_RESOURCE):
#   - containerd: restrict_oom_score_adj = true (sandboxes ask for -998,
#     which fails without CAP_SYS_RESOURCE);
#   - kubelet: --fail-cgroupv1=false (1.35+ refuses cgroup v1 otherwise);
#   - CNI: no kindnetd source is reachable, so a static bridge conflist for
#     the node's pod range (one node only; kind-e2e.sh disables kind's
#     default CNI) and a stand-in kindnetd image so the build pulls nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/docker-lib.sh"

COREDNS_VERSION=${COREDNS_VERSION:-v1.14.6}
LOCAL_PATH_VERSION=${LOCAL_PATH_VERSION:-v0.0.30} # the newest the module proxy serves here
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
NODE_CACHE=$FNLET_CACHE/kind-node-$K8S_VERSION
ADDONS=$FNLET_CACHE/kind-addons
NODE_REPO=localhost/fnlet/kind-node
# A localhost name: kind's build always tries `docker pull` of the base
# image first, and a pull from localhost stays on this machine.
BASE_REPO=localhost/fnlet/kind-base
# kind's base image, minus nfs-common, open-iscsi and fuse-overlayfs
# (network volumes and rootless nodes, neither used here), plus runc and
# the CNI plugins that kind builds from source.
BASE_PACKAGES=systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,runc,containernetworking-plugins
POD_CIDR_KIND=10.244.0.0/24 # the first node's range of kind's default podSubnet

T0=$SECONDS
timings=()
work=
component_refs=()

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
	[ -z "$work" ] || rm -rf "$work"
	log "timings: ${timings[*]:-none} (total $((SECONDS - T0))s)"
}

# step NAME CMD...: run CMD, record how long it took.
step() {
	local name=$1 t
	shift
	t=$(now)
	"$@"
	timings+=("$name $(since "$t")s")
}

kind_module_dir() { (cd "$FNLET_ROOT" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir); }

# gobin DIR PKG@VERSION: go install into DIR once (temp dir + rename, so an
# interrupted build leaves nothing the check would trust).
gobin() {
	local dir=$1 pkg=$2 tmp
	[ -n "$(ls -A "$dir" 2>/dev/null)" ] && return 0
	log "building $pkg"
	mkdir -p "$(dirname "$dir")"
	tmp=$(mktemp -d "$dir.XXXXXX")
	GOBIN=$tmp GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" "$pkg"
	mv "$tmp" "$dir"
}

build_tools() {
	gobin "$(dirname "$KIND_BIN")" "sigs.k8s.io/kind@$KIND_VERSION"
	"$FNLET_ROOT/hack/build-k8s.sh" --kubeadm >&2
	"$FNLET_ROOT/hack/build-containerd.sh" >&2
	gobin "$ADDONS/coredns-$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION"
	gobin "$ADDONS/local-path-provisioner-$LOCAL_PATH_VERSION" "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
	[ -x "$ADDONS/pause/pause" ] || {
		mkdir -p "$ADDONS/pause"
		go build -C "$FNLET_ROOT" -trimpath -buildvcs=false -ldflags "-s -w" -o "$ADDONS/pause/pause.tmp" ./hack/cluster/pause
		mv "$ADDONS/pause/pause.tmp" "$ADDONS/pause/pause"
	}
}

# debian_mirror: the apt mirror this machine is set up with.
debian_mirror() {
	local m
	m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$m" ] || m=$(awk '$1 == "deb" && $3 ~ /^(bookworm|trixie|bullseye)$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$m" ] || die "no Debian mirror in /etc/apt/sources.list{,.d/debian.sources}"
	echo "$m"
}

# base_rootfs: debootstrap of the node's packages, cached as a tarball by
# suite and package list (3-4 min cold; the part worth caching).
base_rootfs() {
	local key out dir
	key=$(echo "$DEBIAN_SUITE $BASE_PACKAGES" | sha256sum | cut -c1-16)
	out=$NODE_CACHE/rootfs-$DEBIAN_SUITE-$key.tar
	rootfs_tar=$out
	[ -s "$out" ] && return 0
	command -v debootstrap >/dev/null || {
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	}
	mkdir -p "$NODE_CACHE"
	dir=$work/debootstrap
	log "debootstrap $DEBIAN_SUITE with $BASE_PACKAGES"
	debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$dir" "$(debian_mirror)" >"$work/debootstrap.log" 2>&1 ||
		{ tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc "$dir"/usr/share/man
	tar -C "$dir" --numeric-owner -cf "$out.tmp" .
	mv "$out.tmp" "$out"
	rm -rf "$dir"
}

# base_image: the rootfs with kind's images/base steps applied, imported
# into Docker as $BASE_REPO:<key>. Sets base_ref.
base_image() {
	local r=$work/base kmod f
	base_ref=$BASE_REPO:$KIND_VERSION-$base_key
	docker image inspect "$base_ref" >/dev/null 2>&1 && return 0
	kmod=$(kind_module_dir)
	f=$kmod/images/base/files
	mkdir -p "$r"
	tar -C "$r" -xf "$rootfs_tar"
	# COPY steps of kind's images/base/Dockerfile.
	install -m 0755 "$f"/usr/local/bin/* "$r/usr/local/bin/"
	mkdir -p "$r/kind/bin" "$r/LICENSES" "$r/etc/containerd" "$r/etc/default" "$r/etc/sysctl.d" \
		"$r/etc/systemd/system/kubelet.service.d" "$r/etc/kubernetes/manifests"
	install -m 0644 "$f"/kind/README.txt "$r/kind/"
	install -m 0755 "$f"/kind/bin/* "$r/kind/bin/"
	install -m 0644 "$f"/LICENSES/* "$r/LICENSES/"
	install -m 0644 "$f"/etc/crictl.yaml "$r/etc/"
	install -m 0644 "$f"/etc/containerd/* "$r/etc/containerd/"
	install -m 0644 "$f"/etc/default/* "$r/etc/default/"
	install -m 0644 "$f"/etc/sysctl.d/* "$r/etc/sysctl.d/"
	install -m 0644 "$f"/etc/systemd/system/*.service "$f"/etc/systemd/system/*.slice "$r/etc/systemd/system/"
	install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
	# Its RUN steps: trim systemd to what a node needs, enable the units.
	rm -f "$r"/lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service \
		"$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
		"$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
		"$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
	echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
	ln -sfn /usr/lib/systemd/systemd "$r/sbin/init"
	mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
	for f in kubelet containerd undo-mount-hacks; do
		ln -sfn "/etc/systemd/system/$f.service" "$r/etc/systemd/system/multi-user.target.wants/$f.service"
	done
	ln -sfn /dev/null "$r/etc/systemd/system/systemd-binfmt.service"
	# What kind builds from source: containerd and crictl from our cache,
	# runc and the CNI plugins from Debian (copied: the pod-network
	# deployment mounts /opt/cni/bin into the manager, where links into
	# /usr/lib/cni would dangle).
	install -m 0755 "$CONTAINERD_BIN"/containerd "$CONTAINERD_BIN"/containerd-shim-runc-v2 "$CONTAINERD_BIN"/ctr "$r/usr/local/bin/"
	install -m 0755 "$CRICTL_BIN/crictl" "$r/usr/local/bin/"
	mkdir -p "$r/opt/cni/bin"
	cp "$r"/usr/lib/cni/* "$r/opt/cni/bin/"
	"$CONTAINERD_BIN/ctr" oci spec |
		jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
		jq 'del(.process.rlimits)' >"$r/etc/containerd/cri-base.json"
	# Fixes for this kind of host (see the header).
	sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$r/etc/containerd/config.toml"
	grep -q 'restrict_oom_score_adj = true' "$r/etc/containerd/config.toml" || die "kind's containerd config changed: restrict_oom_score_adj not set"
	sed -i 's|^KUBELET_EXTRA_ARGS=\(.*\)|KUBELET_EXTRA_ARGS=\1 --fail-cgroupv1=false|' "$r/etc/default/kubelet"
	mkdir -p "$r/etc/cni/net.d"
	cat >"$r/etc/cni/net.d/10-fnlet-kind.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kind",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "kindbr0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR_KIND"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	mkdir -p "$work/base-build"
	tar -C "$r" --numeric-owner -c . | docker import \
		--change 'ENV container=docker' \
		--change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
		- "$base_ref-imported" >/dev/null
	# docker import refuses STOPSIGNAL: one more layerless step sets it
	# (systemd stops cleanly on SIGRTMIN+3).
	printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$base_ref-imported" >"$work/base-build/Dockerfile"
	DOCKER_BUILDKIT=0 docker build -q -t "$base_ref" "$work/base-build" >/dev/null
	docker rmi "$base_ref-imported" >/dev/null
	rm -rf "$r"
}

# one_image REF DIR [--change ...]: docker import of a rootfs DIR.
one_image() {
	local ref=$1 dir=$2
	shift 2
	tar -C "$dir" --numeric-owner -c . | docker import "$@" - "$ref" >/dev/null
}

# bin_image REF BINARY [ENTRYPOINT]: one static binary in /usr/local/bin.
bin_image() {
	local ref=$1 bin=$2 d
	d=$work/img-$(basename "$bin")
	mkdir -p "$d/usr/local/bin" "$d/tmp" "$d/etc"
	chmod 1777 "$d/tmp"
	install -m 0755 "$bin" "$d/usr/local/bin/"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$d/etc/passwd"
	one_image "$ref" "$d" --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
		--change "ENTRYPOINT [\"/usr/local/bin/$(basename "$bin")\"]"
	rm -rf "$d"
}

# proxy_image REF: kube-proxy with the node distro's iptables and conntrack
# (and the libraries they load), not the whole base image.
proxy_image() {
	local ref=$1 d=$work/img-kube-proxy r=$work/proxy-rootfs f lib n
	mkdir -p "$r" "$d/usr/local/bin" "$d/usr/sbin" "$d/tmp" "$d/run"
	# The whole rootfs: ldd (a bash script) runs in it to list the libraries.
	tar -C "$r" -xf "$rootfs_tar"
	for f in "$r"/usr/sbin/xtables-nft-multi "$r"/usr/sbin/conntrack "$r"/usr/lib/x86_64-linux-gnu/xtables/*.so; do
		f=${f#"$r"}
		[ -e "$r$f" ] || continue
		mkdir -p "$d$(dirname "$f")"
		cp -L "$r$f" "$d$f"
		for lib in $(chroot "$r" /usr/bin/ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			[ -e "$d$lib" ] && continue
			mkdir -p "$d$(dirname "$lib")"
			cp -L "$r$lib" "$d$lib"
		done
	done
	[ -x "$d/usr/sbin/xtables-nft-multi" ] || die "no iptables in the base rootfs"
	for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sfn xtables-nft-multi "$d/usr/sbin/$n"
	done
	install -m 0755 "$K8S_BIN/kube-proxy" "$d/usr/local/bin/"
	one_image "$ref" "$d" --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]'
	rm -rf "$d" "$r"
}

# busybox_image REF: local-path-provisioner's helper runs sh scripts.
busybox_image() {
	local ref=$1 d=$work/img-busybox a
	mkdir -p "$d/bin" "$d/tmp"
	install -m 0755 /bin/busybox "$d/bin/busybox"
	for a in $(/bin/busybox --list); do [ -e "$d/bin/$a" ] || ln -s busybox "$d/bin/$a"; done
	one_image "$ref" "$d" --change 'ENV PATH=/bin'
	rm -rf "$d"
}

# save_archive OUT REF...: docker save, then put a `repositories` entry
# naming every REF first: kind's build reads only the first metadata entry
# of each archive for the tags it need not pull, and docker save writes
# kindest/* without docker.io/, which kind compares verbatim.
save_archive() {
	local out=$1 d ref repo tag
	shift
	d=$work/archive
	rm -rf "$d"
	mkdir -p "$d"
	docker save "$@" | tar -C "$d" -xf -
	rm -f "$d/repositories"
	{
		printf '{'
		local first=true
		for ref in "$@"; do
			repo=${ref%:*} tag=${ref##*:}
			$first || printf ','
			first=false
			printf '"%s":{"%s":"%s"}' "$repo" "$tag" "$(docker image inspect -f '{{.Id}}' "$ref" | sed 's/^sha256://')"
		done
		printf '}\n'
	} >"$d/repositories"
	(cd "$d" && tar -cf "$out" repositories manifest.json $(ls | grep -vx -e repositories -e manifest.json))
	rm -rf "$d"
}

# server_tarball OUT: kubernetes/version, kubernetes/server/bin/{kubeadm,
# kubelet,kubectl,kube-*.tar}, gzipped, as `--type file` reads it.
server_tarball() {
	local out=$1 s=$work/tarball/kubernetes ref pause_kubeadm pause_kind etcd_ref coredns_ref kindnetd lpp lph kmod
	mkdir -p "$s/server/bin"
	echo "$K8S_VERSION" >"$s/version"
	install -m 0755 "$K8S_BIN/kubeadm" "$K8S_BIN/kubelet" "$K8S_BIN/kubectl" "$s/server/bin/"
	kmod=$(kind_module_dir)
	# The names kubeadm and kind will look for.
	mapfile -t want < <("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
	for ref in "${want[@]}"; do
		case "$ref" in
		*/etcd:*) etcd_ref=$ref ;;
		*/coredns:*) coredns_ref=$ref ;;
		*/pause:*) pause_kubeadm=$ref ;;
		esac
	done
	pause_kind=$(sed -n 's/^ *sandbox_image = "\(.*\)"/\1/p' "$kmod/images/base/files/etc/containerd/config.toml")
	kindnetd=$(sed -n 's/^const kindnetdImage = "\(.*\)"/\1/p' "$kmod/pkg/build/nodeimage/const_cni.go")
	lpp=$(sed -n 's/^const storageProvisionerImage = "\(.*\)"/\1/p' "$kmod/pkg/build/nodeimage/const_storage.go")
	lph=$(sed -n 's/^const storageHelperImage = "\(.*\)"/\1/p' "$kmod/pkg/build/nodeimage/const_storage.go")
	for ref in "$etcd_ref" "$coredns_ref" "$pause_kubeadm" "$pause_kind" "$kindnetd" "$lpp" "$lph"; do
		[ -n "$ref" ] || die "could not read the image names from kubeadm or kind $KIND_VERSION"
	done
	local reg=${want[0]%/kube-apiserver:*}
	bin_image "$reg/kube-apiserver:$K8S_VERSION" "$K8S_BIN/kube-apiserver"
	bin_image "$reg/kube-controller-manager:$K8S_VERSION" "$K8S_BIN/kube-controller-manager"
	bin_image "$reg/kube-scheduler:$K8S_VERSION" "$K8S_BIN/kube-scheduler"
	proxy_image "$reg/kube-proxy:$K8S_VERSION"
	bin_image "$etcd_ref" "$ETCD_BIN/etcd"
	bin_image "$coredns_ref" "$ADDONS/coredns-$COREDNS_VERSION/coredns"
	# coredns' Deployment passes only args: it expects /coredns.
	docker image rm "$coredns_ref" >/dev/null
	local d=$work/img-coredns
	mkdir -p "$d/tmp"
	install -m 0755 "$ADDONS/coredns-$COREDNS_VERSION/coredns" "$d/coredns"
	one_image "$coredns_ref" "$d" --change 'ENTRYPOINT ["/coredns"]'
	bin_image "$pause_kubeadm" "$ADDONS/pause/pause"
	docker tag "$pause_kubeadm" "$pause_kind"
	# Stand-in: kind-e2e.sh disables kind's default CNI, but the build
	# pulls kindnetd's image whether it is used or not.
	docker tag "$pause_kubeadm" "$kindnetd"
	bin_image "$lpp" "$ADDONS/local-path-provisioner-$LOCAL_PATH_VERSION/local-path-provisioner"
	busybox_image "$lph"
	component_refs=("$reg/kube-apiserver:$K8S_VERSION" "$reg/kube-controller-manager:$K8S_VERSION"
		"$reg/kube-scheduler:$K8S_VERSION" "$reg/kube-proxy:$K8S_VERSION"
		"$etcd_ref" "$coredns_ref" "$pause_kubeadm" "$pause_kind" "$kindnetd" "$lpp" "$lph")
	save_archive "$s/server/bin/kube-apiserver.tar" "$reg/kube-apiserver:$K8S_VERSION" \
		"$etcd_ref" "$coredns_ref" "$pause_kubeadm" "$pause_kind" "$kindnetd" "$lpp" "$lph"
	save_archive "$s/server/bin/kube-controller-manager.tar" "$reg/kube-controller-manager:$K8S_VERSION"
	save_archive "$s/server/bin/kube-scheduler.tar" "$reg/kube-scheduler:$K8S_VERSION"
	save_archive "$s/server/bin/kube-proxy.tar" "$reg/kube-proxy:$K8S_VERSION"
	tar -C "$work/tarball" -cf - kubernetes | gzip -1 >"$out"
	rm -rf "$work/tarball"
}

# node_key: every input of the node image.
node_key() {
	local kmod
	kmod=$(kind_module_dir)
	{
		echo "$K8S_VERSION $KIND_VERSION $COREDNS_VERSION $LOCAL_PATH_VERSION $DEBIAN_SUITE $BASE_PACKAGES $POD_CIDR_KIND"
		sha256sum "$FNLET_ROOT/hack/kind-node-image.sh" "$FNLET_ROOT/hack/cluster/pause/"*.go
		(cd "$kmod" && find images/base/files pkg/build/nodeimage -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
		sha256sum "$K8S_BIN"/{kubeadm,kubelet,kubectl,kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy} \
			"$ETCD_BIN/etcd" "$CONTAINERD_BIN"/{containerd,containerd-shim-runc-v2,ctr} "$CRICTL_BIN/crictl" \
			"$ADDONS/coredns-$COREDNS_VERSION/coredns" "$ADDONS/local-path-provisioner-$LOCAL_PATH_VERSION/local-path-provisioner" \
			"$ADDONS/pause/pause" /bin/busybox
		basename "$rootfs_tar"
	} | sed "s|$FNLET_ROOT/||" | sha256sum | cut -c1-12
}

main() {
	cd "$FNLET_ROOT"
	use_our_docker
	docker info >/dev/null 2>&1 || die "no Docker engine at $DOCKER_HOST: start one with hack/docker-up.sh"
	mkdir -p "$NODE_CACHE"
	exec 9>"$NODE_CACHE/.lock"
	if ! flock -n 9; then
		log "another kind-node-image.sh holds $NODE_CACHE/.lock; waiting"
		flock 9
	fi
	trap cleanup EXIT
	work=$(mktemp -d "$NODE_CACHE/.work.XXXXXX")

	step go-builds build_tools
	step base-rootfs base_rootfs
	local key ref
	# Keys hash contents, never paths: the script runs as hack/… or /…/hack/….
	base_key=$( (echo "$BASE_PACKAGES"; sha256sum <"$FNLET_ROOT/hack/kind-node-image.sh"; basename "$rootfs_tar") | sha256sum | cut -c1-12)
	key=$(node_key)
	ref=$NODE_REPO:$K8S_VERSION-$key
	if docker image inspect "$ref" >/dev/null 2>&1; then
		log "node image $ref is up to date (key $key)"
		echo "$ref"
		return 0
	fi
	step base-image base_image
	step server-tarball server_tarball "$work/kubernetes-server-linux-amd64.tar.gz"
	step kind-build-node-image "$KIND_BIN" build node-image --type file \
		--base-image "$base_ref" --image "$ref" "$work/kubernetes-server-linux-amd64.tar.gz" >&2
	# The component images live on inside the node image.
	docker image rm "${component_refs[@]}" >/dev/null
	log "built node image $ref"
	echo "$ref"
}

main "$@"
exit
