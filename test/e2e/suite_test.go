// Package e2e tests fnlet the way users run it: deployed as a DaemonSet on a
// real cluster (`kubectl apply -k config/default` or an overlay of it), with
// FunctionCalls applied, read, patched and deleted through kubectl.
//
// The suite needs a cluster with fnlet deployed and the test image
// localhost/fnlet/testfn:v1 in the node containerd's `fnlet` namespace (for
// the calls). hack/e2e.sh (`make e2e`, the local single-node cluster) and
// hack/kind-e2e.sh (`make kind-e2e`) prepare exactly that and run it.
//
// It is destructive to the fnlet deployment it is pointed at (it deletes the
// manager pod mid-call): point it only at a test cluster.
//
// Environment:
//
//	KUBECONFIG                     the cluster (required; without it the suite skips,
//	                               or fails under FNLET_REQUIRE_DAEMONS=1)
//	KUBECTL                        kubectl binary (default: kubectl on PATH)
//	FNLET_E2E_NODE_EXEC            command prefix that runs a command on a node; {node} is
//	                               replaced by the node name, e.g. "docker exec {node}" on kind.
//	                               Default: none, the node is this machine.
//	FNLET_E2E_CTR                  ctr binary on the node (default: ctr)
//	FNLET_E2E_CONTAINERD_SOCK      containerd socket on the node (default:
//	                               $FNLET_CLUSTER_CONTAINERD_SOCK, else /run/containerd/containerd.sock)
//
// Latency (apply to Succeeded next to a plain Pod) is the bench's: `make
// bench` measures its fnlet and pod ways in one interleaved run.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
)

const (
	testImage       = "localhost/fnlet/testfn:v1"
	systemNamespace = "fnlet-system"
	daemonSetName   = "fnlet-manager"
	managerSelector = "app.kubernetes.io/component=manager"
)

// env is the suite's shared state, set up once in TestMain.
var env struct {
	skip       string // why the suite cannot run here, if it cannot
	setupErr   string // the cluster is there but not usable: every test fails with this
	kubeconfig string
	k8s        client.WithWatch
	calls      calls.Env
	ns         string // the namespace every test's calls live in
	// From the DaemonSet's manager container flags.
	callsDir string // --log-dir: the call IO root on the node
	ctrdNS   string // --containerd-namespace
	// How to reach the node's containerd and files.
	nodeExec string
	ctr      string
	ctrdSock string
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	env.kubeconfig = os.Getenv("KUBECONFIG")
	flag.Parse()
	if testing.Short() {
		env.skip = "-short: needs a cluster with fnlet deployed"
		fmt.Println("e2e suite skipped:", env.skip)
		return m.Run()
	}
	if env.kubeconfig == "" {
		env.skip = "KUBECONFIG is not set: run `make e2e` (local single-node cluster, hack/e2e.sh) or `make kind-e2e`, " +
			"or point KUBECONFIG at a test cluster with fnlet deployed"
		fmt.Println("e2e suite skipped:", env.skip)
		return m.Run()
	}
	env.nodeExec = os.Getenv("FNLET_E2E_NODE_EXEC")
	env.ctr = envOr("FNLET_E2E_CTR", "ctr")
	env.ctrdSock = envOr("FNLET_E2E_CONTAINERD_SOCK", envOr("FNLET_CLUSTER_CONTAINERD_SOCK", "/run/containerd/containerd.sock"))

	if err := setup(); err != nil {
		env.setupErr = err.Error()
		fmt.Println("e2e suite setup failed:", env.setupErr)
		return m.Run() // every test reports it
	}
	fmt.Printf("e2e suite: namespace %s, calls dir %s, containerd namespace %s, node containerd %s\n",
		env.ns, env.callsDir, env.ctrdNS, env.ctrdSock)
	code := m.Run()
	// Finished calls go with their namespace; don't wait for it.
	if out, err := kubectlRaw("", "delete", "namespace", env.ns, "--wait=false"); err != nil {
		fmt.Printf("cleanup: delete namespace %s: %v\n%s", env.ns, err, out)
	}
	return code
}

func setup() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", env.kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 100, 200 // bursts of reads and watches
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = fnletv1.AddToScheme(scheme)
	if env.k8s, err = client.NewWithWatch(cfg, client.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	env.calls = calls.Env{Client: env.k8s, Diagnose: func() string { return managerLogTail(30) }}

	// fnlet must already be deployed: deploying is the job of the script
	// that brought the cluster (hack/e2e.sh, hack/kind-e2e.sh). Wait for its
	// rollout the way a user would.
	if out, err := kubectlRaw("", "-n", systemNamespace, "rollout", "status", "ds/"+daemonSetName, "--timeout=3m"); err != nil {
		return fmt.Errorf("DaemonSet %s/%s not rolled out (deploy fnlet first: kubectl apply -k config/default): %v\n%s", systemNamespace, daemonSetName, err, out)
	}
	var ds appsv1.DaemonSet
	if err := env.k8s.Get(context.Background(), client.ObjectKey{Namespace: systemNamespace, Name: daemonSetName}, &ds); err != nil {
		return fmt.Errorf("DaemonSet %s/%s: %w", systemNamespace, daemonSetName, err)
	}
	env.callsDir, env.ctrdNS = "/var/lib/fnlet/calls", "fnlet" // the manager's defaults
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name != "manager" {
			continue
		}
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--log-dir="); ok {
				env.callsDir = v
			}
			if v, ok := strings.CutPrefix(a, "--containerd-namespace="); ok {
				env.ctrdNS = v
			}
		}
	}

	// One namespace for the run, like a user's.
	env.ns = fmt.Sprintf("fnlet-e2e-%d", time.Now().UnixNano()%1e6)
	if out, err := kubectlRaw("", "create", "namespace", env.ns); err != nil {
		return fmt.Errorf("kubectl create namespace: %v\n%s", err, out)
	}
	return nil
}

// requireCluster skips (or fails, under FNLET_REQUIRE_DAEMONS=1) without a
// cluster, and fails when the cluster is there but fnlet is not usable.
func requireCluster(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		testenv.Missing(t, "%s", env.skip)
	}
	if env.setupErr != "" {
		t.Fatalf("e2e setup: %s", env.setupErr)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
