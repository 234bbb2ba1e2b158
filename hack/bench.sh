#!/usr/bin/env bash
# `make bench`: fnlet's cold path measured side by side with what it is
# built on, in one run (test/bench, all ways interleaved round-robin):
#
#   fnlet  client create of a FunctionCall → status Succeeded seen on a watch,
#          through a manager process built from ./cmd/manager (this working
#          tree) that this run starts on its own node name and stops again;
#   ctrd   internal/ctrd directly; raw: the containerd Go client alone;
#   ctr    `ctr run --rm`; pod: a plain Pod on the real node, when the
#          cluster of hack/cluster-up.sh is up (BENCH_POD=1 starts it).
#   fnlet-warm  as fnlet, but each call runs in a pre-started container of
#          a FunctionPool this run creates (status.pool checked: hit rate);
#   ctrd-warm   internal/ctrd claim -> exit -> delete of a pre-started one.
#
# Warm starts also get: the refill capacity (containers pre-started per
# second, internal/ctrd, before the manager starts), warm calls at a steady
# rate below it (hit rate, latency, CPU per call beside cold calls at the
# same rate) and the issue's goals for them.
#
# Then fnlet alone at concurrency 8 (latency) and in closed loops at 8 and
# 32 (throughput), the manager's peak RSS and CPU, apiserver writes per
# call, a CPU profile of the manager (if it has --pprof-bind-address), and
# after deleting the calls, the leftovers in containerd (must be 0).
# Prints a table; JSON (and the profile) go to bench-results/ (git-ignored).
#
# Starts what is missing (containerd 2, images, control plane, CRD) and
# stops what it started. Bounded: BENCH_TIMEOUT for the program (default
# 40m); each call 60 s at most.
#
#   BENCH_N=100           sequential calls per way, and calls at concurrency 8
#   BENCH_POD_N=10        pods (spread over the sequential rounds)
#   BENCH_POD=            unset: pods if the cluster is up; 1: start the
#                         cluster if needed (and stop it after); 0: no pods
#   BENCH_DURATION=60s    each throughput run
#   BENCH_THROUGHPUT=8,32 throughput concurrencies ("" for none)
#   BENCH_PROFILE_SECONDS=20  manager CPU profile (0: none)
#   BENCH_CACHE_CALLS=10000  then fill the manager's cache up to this many
#                         finished calls (written directly) and report its
#                         RSS (0: skip)
#   BENCH_MANAGER_ARGS=   extra manager flags for ablations ("--workers 32")
#   BENCH_RUNTIME=runc    OCI runtime: runc or crun (crun fails cleanly where
#                         the host's cgroups do not suit Debian's crun)
#   BENCH_POOL_SIZE=4     size of the fnlet-warm way's FunctionPool
#   BENCH_REFILL_RATE=5   the manager's --pool-refill-rate
#   BENCH_REFILL_N=16     containers pre-started to measure refill capacity
#   BENCH_WARM_N=         warm (and cold) calls of the paced run (default BENCH_N)
#   BENCH_NODE=bench-$(hostname)  the manager's node name; not the real
#                         node's, so a DaemonSet manager there claims nothing
# Extra arguments go to the program (go run ./test/bench -h), e.g.
#   hack/bench.sh -cpuprofile /tmp/bench-client.pprof
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/k8s-lib.sh"
cd "$FNLET_ROOT"
export FNLET_CONTAINERD=2 FNLET_CACHE

BENCH_RUN=$FNLET_RUN/bench
NS=${BENCH_NAMESPACE:-fnlet-bench}
# The ctrd/raw/ctr ways get their own namespace: the manager's orphan
# collector removes fnlet-labelled containers of its namespace that have no
# FunctionCall, which the ctrd way's containers are.
DIRECT_NS=$NS-direct
NODE=${BENCH_NODE:-bench-$(hostname)}
mkdir -p "$BENCH_RUN" "$FNLET_LOGS" bench-results
exec 8>"$BENCH_RUN/lock"
flock -n 8 || die "another hack/bench.sh is running"

started=()
tmp=$(mktemp -d)
# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
	local rc=$? s
	rm -rf "$tmp"
	for ((i = ${#started[@]} - 1; i >= 0; i--)); do
		s=${started[i]}
		case $s in
		cluster)
			log "stopping the cluster this run started"
			hack/cluster-down.sh || log "warning: cluster-down.sh failed"
			;;
		control-plane)
			if cluster_running; then
				log "leaving the control plane up: a cluster now runs on it"
			else
				log "stopping the control plane this run started"
				hack/control-plane-down.sh || log "warning: control-plane-down.sh failed"
			fi
			;;
		containerd)
			# Others may have started using the daemon meanwhile.
			local busy=""
			for n in $(ctr_cmd namespaces ls -q 2>/dev/null); do
				case $n in "$NS" | "$DIRECT_NS") continue ;; esac
				[ -n "$(CTRD_NS=$n ctr_cmd containers ls -q 2>/dev/null)" ] && busy="$busy $n"
			done
			if [ -n "$busy" ]; then
				log "leaving containerd up: namespaces$busy have containers"
			else
				log "stopping the containerd this run started"
				hack/containerd-down.sh || log "warning: containerd-down.sh failed"
			fi
			;;
		esac
	done
	exit "$rc"
}
trap cleanup EXIT

hack/install-deps.sh
pid_alive "$CTRD_PID" || started+=(containerd)
SOCK=$(hack/containerd-up.sh)
for n in "$NS" "$DIRECT_NS"; do
	IMPORT_NAMESPACE=$n hack/build-images.sh >/dev/null
done

if ! our_pid "$CP_RUN/kube-apiserver.pid" "$K8S_BIN/kube-apiserver" || ! our_pid "$CP_RUN/etcd.pid" "$ETCD_BIN/etcd"; then
	started+=(control-plane)
fi
KUBECONFIG=$(hack/control-plane-up.sh | tail -1)
export KUBECONFIG
kubectl_admin apply -f config/crd/bases >/dev/null
kubectl_admin wait --for condition=established --timeout=60s crd/functioncalls.fnlet.dev crd/functionpools.fnlet.dev >/dev/null

# node_ready: the real node of hack/cluster-up.sh is Ready.
node_ready() {
	[ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
modes=fnlet,fnlet-warm,ctrd,ctrd-warm,ctrd-podnet,raw,ctr
pod_args=()
if [ "${BENCH_POD:-}" = 1 ] && ! { cluster_running && node_ready; }; then
	cluster_running || started+=(cluster)
	eval "$(hack/cluster-up.sh)"
fi
if [ "${BENCH_POD:-}" != 0 ] && cluster_running && node_ready; then
	IMPORT_ADDRESS=$CLUSTER_CTRD_SOCK IMPORT_NAMESPACE=k8s.io hack/build-images.sh >/dev/null
	modes=$modes,pod
	pod_args=(-pod-node "$NODE_NAME" -pod-n "${BENCH_POD_N:-10}")
	log "cluster up (node $NODE_NAME Ready): plain Pods are measured too"
elif [ "${BENCH_POD:-}" = 0 ]; then
	pod_args=(-pod-skipped "pod: skipped (BENCH_POD=0)")
else
	pod_args=(-pod-skipped "pod: skipped (no cluster; run hack/cluster-up.sh, or BENCH_POD=1)")
	log "no cluster with a Ready node $NODE_NAME: no plain Pods (BENCH_POD=1 starts one)"
fi

log "building the manager (from this working tree) and the benchmark"
go build -o "$tmp/manager" ./cmd/manager
hack/build-init.sh "$tmp/fnlet-init" # beside the manager, which runs calls under it
go build -o "$tmp/fnlet-bench" ./test/bench

# CPU accounting of the shared daemons during the load runs.
procs="containerd=$(cat "$CTRD_PID")"
our_pid "$CP_RUN/kube-apiserver.pid" "$K8S_BIN/kube-apiserver" && procs="$procs,kube-apiserver=$(cat "$CP_RUN/kube-apiserver.pid")"
our_pid "$CP_RUN/etcd.pid" "$ETCD_BIN/etcd" && procs="$procs,etcd=$(cat "$CP_RUN/etcd.pid")"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
profile=$FNLET_ROOT/bench-results/manager-cpu-$stamp.pprof
rc=0
"$tmp/fnlet-bench" -address "$SOCK" -namespace "$DIRECT_NS" -modes "$modes" \
	-kubeconfig "$KUBECONFIG" -node "$NODE" -manager "$tmp/manager" -manager-namespace "$NS" \
	-manager-log "$FNLET_LOGS/bench-manager.log" -containerd-state "$CTRD_DIR/state" -max-calls 64 -procs "$procs" \
	-n "${BENCH_N:-100}" -runtime "${BENCH_RUNTIME:-runc}" -init "$tmp/fnlet-init" -duration "${BENCH_DURATION:-60s}" \
	-throughput "${BENCH_THROUGHPUT-8,32}" -profile-seconds "${BENCH_PROFILE_SECONDS:-20}" -profile-out "$profile" \
	-cache-calls "${BENCH_CACHE_CALLS:-10000}" -manager-args "${BENCH_MANAGER_ARGS:-}" \
	-pool-size "${BENCH_POOL_SIZE:-4}" -pool-refill-rate "${BENCH_REFILL_RATE:-5}" -refill-n "${BENCH_REFILL_N:-16}" \
	-warm-n "${BENCH_WARM_N:-0}" \
	-timeout "${BENCH_TIMEOUT:-40m}" -out "$FNLET_ROOT/bench-results" "${pod_args[@]}" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
	if [ "${BENCH_RUNTIME:-runc}" != runc ]; then
		log "runtime ${BENCH_RUNTIME}: no measurement on this host (failed cleanly, see above)"
	fi
	exit "$rc"
fi
for p in "$profile" "${profile%.pprof}"-c*.pprof "${profile%.pprof}"-filled.pprof; do
	[ -s "$p" ] || continue
	echo
	echo "manager CPU profile, top 20 by own time (go tool pprof -top $p):"
	go tool pprof -top -nodecount=20 "$tmp/manager" "$p" 2>/dev/null | sed -n "5,27p"
done
if [ -s "$profile" ]; then
	cp "$tmp/manager" "${profile%.pprof}.manager"
	echo "(the manager binary is kept as ${profile%.pprof}.manager for go tool pprof)"
fi
