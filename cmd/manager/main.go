// Command manager is fnlet's node agent: one per node (a DaemonSet), it
// runs the FunctionCalls bound to its node as containerd containers.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/controllers"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/logapi"
	"github.com/fnlet/fnlet/internal/node"
)

type options struct {
	nodeName, containerdAddress, containerdNamespace, ociRuntime string
	ioRoot, registryCA, registryHostsDir                         string
	maxCalls, workers                                            int
	memoryBudget, defaultMemory, maxMemory, defaultCPU, maxCPU   string
	defaultPids                                                  int64
	outputLimit                                                  string
	tailBytes                                                    int
	defaultTimeout, maxTimeout, killGrace                        time.Duration
	logRetention                                                 time.Duration
	logKeep                                                      int
	allowHostNetwork, allowPrivileged                            bool
	stdinFIFO                                                    bool
	initBinary                                                   string
	metricsAddr, probeAddr, pprofAddr                            string
	leaseNamespace                                               string
	leaseDuration, leaseRenew, nodeLostGrace, claimStagger       time.Duration
	metricsSecure                                                bool
	pools                                                        bool
	poolRefill                                                   float64
	refillCgroup                                                 string
	metricsCertDir                                               string
	logAPIAddr, logAPICertDir, logAPIAdvertise, logAPIPeerCA     string
	cniConfDir, cniBinDirs, netnsDir, callResolvConf             string
	podNetworkPool                                               int
	dispatchers                                                  int
}

func main() {
	var o options
	flag.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "Name of this node (default $NODE_NAME). The manager runs only calls bound to it.")
	flag.StringVar(&o.containerdAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd socket.")
	flag.StringVar(&o.containerdNamespace, "containerd-namespace", "fnlet", "containerd namespace for call containers.")
	flag.StringVar(&o.ociRuntime, "runtime", "runc", "OCI runtime: runc or crun.")
	flag.StringVar(&o.ioRoot, "log-dir", "/var/lib/fnlet/calls", "Directory of each call's stdin/stdout/stderr files (same path on the host: the shim writes them).")
	flag.StringVar(&o.registryCA, "registry-ca", "", "PEM bundle of extra CAs trusted for registries (added to the system pool).")
	flag.StringVar(&o.registryHostsDir, "registry-hosts-dir", "", "containerd-style certs.d directory with per-registry hosts.toml.")
	flag.IntVar(&o.maxCalls, "max-calls", 16, "Maximum calls running at once on this node.")
	flag.IntVar(&o.workers, "workers", 8, "Concurrent reconciles.")
	flag.StringVar(&o.memoryBudget, "memory-budget", "0", "Sum of call memory limits this node accepts (0 = unlimited).")
	flag.StringVar(&o.defaultMemory, "default-memory", "256Mi", "Memory limit of calls that set none.")
	flag.StringVar(&o.maxMemory, "max-memory", "8Gi", "Largest memory limit a call may ask for.")
	flag.StringVar(&o.defaultCPU, "default-cpu", "0", "CPU quota of calls that set none (0 = unlimited).")
	flag.StringVar(&o.maxCPU, "max-cpu", "0", "Largest CPU quota a call may ask for (0 = no maximum).")
	flag.Int64Var(&o.defaultPids, "default-pids", 1024, "Pids limit of calls that set none.")
	flag.StringVar(&o.outputLimit, "output-limit", "64Mi", "Cap on a call's stdout+stderr; over it the call is killed (OutputLimitExceeded).")
	flag.IntVar(&o.tailBytes, "tail-bytes", 4096, "Bytes of stdout and of stderr kept in the status.")
	flag.DurationVar(&o.defaultTimeout, "default-timeout", 5*time.Minute, "Timeout of calls that set none.")
	flag.DurationVar(&o.maxTimeout, "max-timeout", time.Hour, "Largest timeout a call gets.")
	flag.DurationVar(&o.killGrace, "kill-grace", 10*time.Second, "Time between SIGTERM and SIGKILL on timeout, cancel and delete.")
	flag.DurationVar(&o.logRetention, "log-retention", 24*time.Hour, "How long full logs of finished calls stay on the node.")
	flag.IntVar(&o.logKeep, "log-keep", 1000, "At most this many finished calls' logs are kept.")
	flag.BoolVar(&o.allowHostNetwork, "allow-host-network", false, "Allow calls with network: host.")
	flag.StringVar(&o.cniConfDir, "cni-conf-dir", "", "Enables network: pod: the CNI configuration directory of the node's pod network (e.g. /etc/cni/net.d; its first conflist is used). Empty: calls may not use network: pod. Needs the privileges of config/components/pod-network.")
	flag.StringVar(&o.cniBinDirs, "cni-bin-dir", "/opt/cni/bin,/usr/lib/cni", "Comma-separated directories of the CNI plugins (network: pod).")
	flag.StringVar(&o.netnsDir, "netns-dir", "/run/fnlet/netns", "Where the network namespaces of network: pod calls are pinned (must be visible to containerd's runc: the host's mount namespace).")
	flag.IntVar(&o.podNetworkPool, "pod-network-pool", 2, "Network namespaces kept attached ahead for network: pod calls (Fn's prefork pool): a call takes one instead of paying a CNI ADD; 0 attaches each on demand.")
	flag.StringVar(&o.callResolvConf, "call-resolv-conf", "", "resolv.conf given to network: pod calls as /etc/resolv.conf (e.g. the cluster DNS, as the kubelet's --resolv-conf); empty: the image's own.")
	flag.BoolVar(&o.allowPrivileged, "allow-privileged", false, "Allow privileged calls.")
	flag.StringVar(&o.initBinary, "init-binary", "", "fnlet-init, PID 1 of every call, which records exit codes that containerd loses when it restarts (default: fnlet-init beside the manager's executable; \"none\" runs calls without it).")
	flag.BoolVar(&o.stdinFIFO, "stdin-fifo", false, "Feed input through a FIFO instead of a regular file (fallback).")
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "Prometheus metrics address (0 disables).")
	flag.BoolVar(&o.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, only to clients the apiserver authenticates (TokenReview) and authorizes for GET /metrics (SubjectAccessReview; the ClusterRole fnlet-metrics-reader). false serves plain HTTP to anyone who reaches the port: for local tests on 127.0.0.1 only.")
	flag.StringVar(&o.metricsCertDir, "metrics-cert-dir", "", "Directory with tls.crt and tls.key for the metrics server, reloaded when they change (default: a self-signed certificate made at start).")
	flag.StringVar(&o.logAPIAddr, "log-api-bind-address", "0", "HTTPS address of the log API, e.g. :8444 (internal/logapi: a call's whole output through the APIService v1alpha1.logs.fnlet.dev, with delegated authentication and authorization; the DaemonSet sets it); 0 disables.")
	flag.StringVar(&o.logAPICertDir, "log-api-cert-dir", "", "Directory with tls.crt and tls.key for the log API (default: a self-signed certificate made at start).")
	flag.StringVar(&o.logAPIAdvertise, "log-api-advertise-address", "", "host:port where peer managers reach this node's log API, published on the node's Lease (default $POD_IP and the bind port; none without POD_IP: then requests for this node's calls are answered only when they arrive here).")
	flag.StringVar(&o.logAPIPeerCA, "log-api-peer-ca", "", "PEM CA that signed the peers' --log-api-cert-dir certificates; without it a forwarding manager pins the certificate each peer publishes on its node Lease.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Health probe address.")
	flag.StringVar(&o.pprofAddr, "pprof-bind-address", "", "Serve net/http/pprof here (empty disables), for profiling under load.")
	flag.StringVar(&o.leaseNamespace, "lease-namespace", envOr("POD_NAMESPACE", "fnlet-system"), "Namespace of the node Leases (default $POD_NAMESPACE, else fnlet-system).")
	flag.DurationVar(&o.leaseDuration, "lease-duration", 15*time.Second, "How long this node's Lease holds without a renewal (whole seconds).")
	flag.DurationVar(&o.leaseRenew, "lease-renew-interval", 5*time.Second, "How often this node renews its Lease.")
	flag.DurationVar(&o.nodeLostGrace, "node-lost-grace", 30*time.Second, "How long a node's Lease must have been expired before its calls are taken over (NodeLost); longer than a manager restart.")
	flag.DurationVar(&o.claimStagger, "claim-stagger", controllers.DefaultClaimStagger, "Wait per rank before a node that is not first for a call claims it (negative: no ranking, every node races; for comparison only).")
	flag.IntVar(&o.dispatchers, "dispatchers", controllers.DefaultDispatchers, "With more live fnlet nodes than this, only this many nodes (the dispatchers, chosen from the Leases) watch every unassigned call and offer each to the node ranked first for it; the others watch only the calls offered to them. 0: every node watches every unassigned call.")
	flag.BoolVar(&o.pools, "pools", true, "Serve FunctionPools: keep their pre-started containers on this node and run fitting calls in them (needs fnlet-init).")
	flag.Float64Var(&o.poolRefill, "pool-refill-rate", 5, "Most pre-started containers this node starts per second, all pools together.")
	flag.StringVar(&o.refillCgroup, "refill-cgroup", "/fnlet-refill", "Cgroup (a path from the root of the host's hierarchy) made with a low CPU weight, which the shims and runc of pre-starts join, so that refill yields the CPU to running calls; needs write access to the host's cgroupfs, else refill runs at containerd's priority (logged). Empty: not used.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	klog.SetLogger(ctrl.Log.WithName("k8s")) // k8s.io/apiserver's logs (log API)

	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "manager failed")
		os.Exit(1)
	}
}

// findInit resolves --init-binary: a path must exist; by default the
// binary beside the manager's executable is used when it is there.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func findInit(flagValue string) (string, error) {
	switch flagValue {
	case "none":
		return "", nil
	case "":
		exe, err := os.Executable()
		if err != nil {
			return "", nil
		}
		p := filepath.Join(filepath.Dir(exe), "fnlet-init")
		if _, err := os.Stat(p); err != nil {
			return "", nil
		}
		return p, nil
	}
	if _, err := os.Stat(flagValue); err != nil {
		return "", fmt.Errorf("--init-binary: %w", err)
	}
	return flagValue, nil
}

func run(ctx context.Context, o options) error {
	log := ctrl.Log.WithName("setup")
	if o.nodeName == "" {
		return fmt.Errorf("no node name: set --node-name or NODE_NAME")
	}
	if o.leaseDuration < time.Second || o.leaseRenew <= 0 || o.leaseRenew >= o.leaseDuration {
		return fmt.Errorf("--lease-renew-interval (%s) must be positive and shorter than --lease-duration (%s, at least 1s)", o.leaseRenew, o.leaseDuration)
	}
	var lim controllers.Limits
	var budget, outputLimit int64
	for _, p := range []struct {
		dst   *int64
		name  string
		v     string
		milli bool // CPU flags are read in millicpu
	}{
		{&budget, "memory-budget", o.memoryBudget, false}, {&lim.DefaultMemoryBytes, "default-memory", o.defaultMemory, false},
		{&lim.MaxMemoryBytes, "max-memory", o.maxMemory, false}, {&lim.DefaultMilliCPU, "default-cpu", o.defaultCPU, true},
		{&lim.MaxMilliCPU, "max-cpu", o.maxCPU, true}, {&outputLimit, "output-limit", o.outputLimit, false},
	} {
		x, err := resource.ParseQuantity(p.v)
		if err != nil {
			return fmt.Errorf("--%s=%q: %w", p.name, p.v, err)
		}
		*p.dst = x.Value()
		if p.milli {
			*p.dst = x.MilliValue()
		}
	}
	lim.DefaultPids = o.defaultPids
	lim.Networks = []fnletv1.NetworkMode{fnletv1.NetworkNone}
	if o.cniConfDir != "" {
		lim.Networks = append(lim.Networks, fnletv1.NetworkPod)
	}
	if o.allowHostNetwork {
		lim.Networks = append(lim.Networks, fnletv1.NetworkHost)
	}

	rtOpts := []ctrd.Opt{
		ctrd.WithNamespace(o.containerdNamespace), ctrd.WithOCIRuntime(o.ociRuntime), ctrd.WithIORoot(o.ioRoot),
		ctrd.WithOwner(o.nodeName),
		ctrd.WithOutputLimit(outputLimit), ctrd.WithTailBytes(o.tailBytes),
		ctrd.WithAllowHostNetwork(o.allowHostNetwork), ctrd.WithAllowPrivileged(o.allowPrivileged),
		ctrd.WithRegistryHostsDir(o.registryHostsDir),
	}
	if o.pools {
		rtOpts = append(rtOpts, ctrd.WithRefillCgroup(o.refillCgroup))
	}
	if o.cniConfDir != "" {
		rtOpts = append(rtOpts, ctrd.WithPodNetwork(o.cniConfDir, strings.Split(o.cniBinDirs, ","), o.netnsDir, o.callResolvConf),
			ctrd.WithPodNetworkPool(o.podNetworkPool))
	}
	if o.stdinFIFO {
		rtOpts = append(rtOpts, ctrd.WithStdinMode(ctrd.StdinFIFO))
	}
	initBin, err := findInit(o.initBinary)
	if err != nil {
		return err
	}
	if initBin == "" {
		log.Info("WARNING: running calls without fnlet-init: a call that ends while containerd is down loses its exit code (RuntimeError)", "flag", "--init-binary")
	} else {
		rtOpts = append(rtOpts, ctrd.WithInit(initBin))
	}
	if o.registryCA != "" {
		pem, err := os.ReadFile(o.registryCA)
		if err != nil {
			return fmt.Errorf("--registry-ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--registry-ca %s: no certificates found", o.registryCA)
		}
		rtOpts = append(rtOpts, ctrd.WithRegistryTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	rt, err := ctrd.New(o.containerdAddress, rtOpts...)
	if err != nil {
		return err
	}
	defer rt.Close()
	if _, err := rt.RefillCgroup(); err != nil {
		log.Info("WARNING: pre-starts run at containerd's CPU priority, not below running calls", "flag", "--refill-cgroup", "reason", err.Error())
	}

	cfg := ctrl.GetConfigOrDie()
	managerUser := whoAmI(ctx, cfg)
	var poolRT controllers.PoolRuntime
	switch {
	case o.pools && initBin != "":
		poolRT = rt
	case o.pools:
		log.Info("WARNING: FunctionPools are not served: pre-started containers need fnlet-init", "flag", "--init-binary")
	}
	logs, err := prepareLogAPI(o)
	if err != nil {
		return err
	}
	n, err := node.New(ctx, cfg, node.Options{
		NodeName: o.nodeName, Runtime: rt, ManagerUser: managerUser,
		Manager: ctrl.Options{
			Metrics:                metricsOptions(o),
			HealthProbeBindAddress: o.probeAddr,
			PprofBindAddress:       o.pprofAddr,
		},
		Metrics:        controllers.NewMetrics(metrics.Registry, o.maxCalls, rt),
		Workers:        o.workers,
		Capacity:       controllers.Capacity{MaxCalls: o.maxCalls, MemoryBudgetBytes: budget},
		Limits:         lim,
		DefaultTimeout: o.defaultTimeout, MaxTimeout: o.maxTimeout, KillGrace: o.killGrace,
		LeaseNamespace: o.leaseNamespace, LeaseDuration: o.leaseDuration, LeaseRenew: o.leaseRenew,
		NodeLostGrace: o.nodeLostGrace, ClaimStagger: o.claimStagger, Dispatchers: o.dispatchers,
		PoolRuntime: poolRT, PoolRefillPerSecond: o.poolRefill,
		LogAddress: logs.advertise, LogCert: logs.certSHA256(),
	})
	if err != nil {
		return err
	}
	mgr := n.Manager
	if err := mgr.Add(&controllers.RuntimeEvents{Runtime: rt, Out: n.Events}); err != nil {
		return err
	}
	if err := mgr.Add(&controllers.OrphanCollector{Runtime: rt, APIReader: mgr.GetAPIReader(), NodeName: o.nodeName,
		Interval: time.Minute, LogRetention: o.logRetention, LogKeep: o.logKeep}); err != nil {
		return err
	}
	if logs.serving != nil {
		peer, err := logapi.NewPeers(cfg, o.logAPIPeerCA)
		if err != nil {
			return fmt.Errorf("log API peer client: %w", err)
		}
		srv := logs.server
		srv.NodeName, srv.Calls, srv.APIReader, srv.Peer = o.nodeName, mgr.GetClient(), mgr.GetAPIReader(), peer
		srv.Nodes = n.Reconciler.Nodes
		srv.Paths = rt.LogPaths
		srv.Retention = fmt.Sprintf("finished calls' output is kept for --log-retention=%s, at most --log-keep=%d calls", o.logRetention, o.logKeep)
		srv.Log = ctrl.Log.WithName("logapi")
		if err := mgr.Add(logapi.Runnable{Serving: logs.serving, Server: srv}); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("containerd", func(*http.Request) error { return rt.Ping(context.Background()) }); err != nil {
		return err
	}
	if !o.metricsSecure && o.metricsAddr != "0" {
		log.Info("WARNING: metrics are served over plain HTTP without authentication", "flag", "--metrics-secure=false", "address", o.metricsAddr)
	}
	log.Info("starting manager", "node", o.nodeName, "user", managerUser, "containerd", o.containerdAddress, "namespace", o.containerdNamespace, "runtime", o.ociRuntime, "init", initBin)
	return mgr.Start(ctx)
}

type logAPI struct {
	serving   *logapi.Serving
	server    *logapi.Server
	advertise string
}

// certSHA256 gives the pin of the served certificate; nil without a log API.
func (l logAPI) certSHA256() func() string {
	if l.serving == nil {
		return nil
	}
	return l.serving.CertSHA256
}

// prepareLogAPI listens for the log API of --log-api-* and builds its
// delegated authentication and authorization; nothing with "0".
func prepareLogAPI(o options) (logAPI, error) {
	if o.logAPIAddr == "0" || o.logAPIAddr == "" {
		return logAPI{}, nil
	}
	kubeconfig := os.Getenv("KUBECONFIG")
	if f := flag.Lookup("kubeconfig"); f != nil && f.Value.String() != "" {
		kubeconfig = f.Value.String()
	}
	l := logAPI{serving: &logapi.Serving{BindAddress: o.logAPIAddr, CertDir: o.logAPICertDir, Kubeconfig: kubeconfig}, server: &logapi.Server{}}
	if err := l.serving.Prepare(l.server); err != nil {
		return logAPI{}, err
	}
	l.advertise = o.logAPIAdvertise
	if ip := os.Getenv("POD_IP"); l.advertise == "" && ip != "" {
		l.advertise = net.JoinHostPort(ip, strconv.Itoa(l.serving.Port()))
	}
	return l, nil
}

// The log API reads the front-proxy CA the apiserver publishes (granted by
// a RoleBinding to extension-apiserver-authentication-reader in
// kube-system, config/rbac), and a manager that forwards a request to the
// call's node is authorized there like any user:
// +kubebuilder:rbac:groups=logs.fnlet.dev,resources=functioncalls/log,verbs=get

// The metrics endpoint authenticates its clients with TokenReviews and
// authorizes them with SubjectAccessReviews (metricsOptions).
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// metricsOptions is the metrics server of --metrics-*: by default HTTPS
// (a self-signed certificate unless --metrics-cert-dir has one) behind
// controller-runtime's authentication and authorization filter, so only a
// client whose token the apiserver accepts and who may GET the
// nonResourceURL /metrics (ClusterRole fnlet-metrics-reader) reads them:
// 401 without a valid token, 403 without the role.
func metricsOptions(o options) metricsserver.Options {
	if !o.metricsSecure {
		return metricsserver.Options{BindAddress: o.metricsAddr}
	}
	return metricsserver.Options{
		BindAddress:    o.metricsAddr,
		SecureServing:  true,
		FilterProvider: filters.WithAuthenticationAndAuthorization,
		CertDir:        o.metricsCertDir,
		// No HTTP/2: the scaffold's default too (CVE-2023-44487,
		// CVE-2023-39325 rapid reset); a scrape needs only HTTP/1.1.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"}; c.MinVersion = tls.VersionTLS12 }},
	}
}

// whoAmI asks the apiserver who the manager is (a SelfSubjectReview, which
// every authenticated user may create): the InvalidSpec message of a call
// whose namespace has not opted in to Secrets names this user in the
// RoleBinding to create. Empty (a placeholder in those messages) when the
// apiserver cannot tell.
func whoAmI(ctx context.Context, cfg *rest.Config) string {
	log := ctrl.Log.WithName("setup")
	c, err := authenticationv1client.NewForConfig(cfg)
	if err != nil {
		log.Error(err, "cannot tell the manager's own user name: InvalidSpec messages about Secret access will show a placeholder")
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := c.SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		log.Error(err, "cannot tell the manager's own user name (SelfSubjectReview): InvalidSpec messages about Secret access will show a placeholder")
		return ""
	}
	return r.Status.UserInfo.Username
}
