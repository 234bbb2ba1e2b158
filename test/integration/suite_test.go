// Package integration tests fnlet end to end on real components: a real
// kube-apiserver + etcd (envtest, binaries built by hack/build-k8s.sh), a
// real containerd (hack/containerd-up.sh) and the real manager binary, run
// as separate processes so tests can kill -9 and restart them.
package integration

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
	"github.com/fnlet/fnlet/internal/testenv/managerproc"
)

// The suite's shared environment, set up once in TestMain.
var env struct {
	skip        string // why the suite cannot run here, if it cannot
	k8s         client.WithWatch
	kubeconfig  string // the manager's: bound to the generated ClusterRole only
	adminConfig string // for kubectl as a user
	managerBin  string
	containerd  string
	ctrdNS      string
	workDir     string
	calls       calls.Env
	api         *kubeapi.Suite // users for the log API tests
}

const testImage = "localhost/fnlet/testfn:v1"

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	env.containerd = os.Getenv("FNLET_CONTAINERD_ADDRESS")
	env.ctrdNS = envOr("FNLET_IT_NAMESPACE", "fnlet-it")
	flag.Parse()
	switch {
	case testing.Short():
		env.skip = "-short: needs kube-apiserver, containerd and the manager binary"
	case os.Getenv("KUBEBUILDER_ASSETS") == "":
		env.skip = "KUBEBUILDER_ASSETS is not set (kube-apiserver + etcd: `hack/build-k8s.sh --print-assets`; `make test` sets it)"
	case env.containerd == "":
		env.skip = "FNLET_CONTAINERD_ADDRESS is not set (start one with hack/containerd-up.sh; `make test` does)"
	}
	if env.skip != "" {
		fmt.Println("integration suite skipped:", env.skip)
		return m.Run()
	}
	// The aggregation layer: TestLogAPI reads output through the apiserver.
	api, err := kubeapi.StartSuite("fnlet-it", kubeapi.Aggregation())
	if err != nil {
		fmt.Println(err)
		return 1
	}
	env.workDir, env.managerBin, env.api = api.Dir, api.ManagerBin, api
	defer api.Stop()
	// The manager runs as a plain user bound to the generated ClusterRole.
	env.k8s, env.kubeconfig = api.Client, api.ManagerKubeconfig
	env.calls = calls.Env{Client: api.Client}
	if env.adminConfig, err = api.Kubeconfig(envtest.User{Name: "admin", Groups: []string{"system:masters"}}); err != nil {
		fmt.Println(err)
		return 1
	}
	return m.Run()
}

func requireEnv(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		testenv.Missing(t, "%s", env.skip)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// startManager runs the manager binary for a node. logDir is the call IO
// root; pass the same dir to a restarted manager of the same node.
func startManager(t *testing.T, node, logDir string, extra ...string) *managerproc.Process {
	t.Helper()
	return managerproc.Start(t, managerproc.Config{
		Binary: env.managerBin, Kubeconfig: env.kubeconfig, LogDir: env.workDir, Name: node,
		Args: append([]string{
			"--node-name", node,
			"--containerd-address", env.containerd,
			"--containerd-namespace", env.ctrdNS,
			"--log-dir", logDir,
			"--metrics-bind-address", "0",
			"--health-probe-bind-address", "0",
			"--kill-grace", "2s",
		}, extra...),
	})
}

func newNamespace(t *testing.T) string {
	t.Helper()
	return env.calls.Namespace(t, "it")
}
