// Package integration tests fnlet end to end on real components: a real
// kube-apiserver + etcd (envtest, binaries built by hack/build-k8s.sh), a
// real containerd (hack/containerd-up.sh) and the real manager binary, run
// as separate processes so tests can kill -9 and restart them.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
)

// The suite's shared environment, set up once in TestMain.
var env struct {
	skip        string // why the suite cannot run here, if it cannot
	k8s         client.Client
	kubeconfig  string // the manager's: bound to the generated ClusterRole only
	adminConfig string // for kubectl as a user
	managerBin  string
	containerd  string
	ctrdNS      string
	workDir     string
}

const testImage = "localhost/fnlet/testfn:v1"

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	env.containerd = os.Getenv("FNLET_CONTAINERD_ADDRESS")
	env.ctrdNS = envOr("FNLET_IT_NAMESPACE", "fnlet-it")
	switch {
	case os.Getenv("KUBEBUILDER_ASSETS") == "":
		env.skip = "KUBEBUILDER_ASSETS is not set (kube-apiserver + etcd: `hack/build-k8s.sh --print-assets`; `make test` sets it)"
	case env.containerd == "":
		env.skip = "FNLET_CONTAINERD_ADDRESS is not set (start one with hack/containerd-up.sh; `make test` does)"
	}
	if env.skip != "" {
		fmt.Println("integration suite skipped:", env.skip)
		return m.Run()
	}
	work, err := os.MkdirTemp("", "fnlet-it-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(work)
	env.workDir = work

	if env.managerBin, err = testenv.BuildManager(work); err != nil {
		fmt.Println(err)
		return 1
	}

	te := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := te.Start()
	if err != nil {
		fmt.Println("start envtest:", err)
		return 1
	}
	defer te.Stop()

	scheme := k8sruntime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = fnletv1.AddToScheme(scheme)
	if env.k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Println("client:", err)
		return 1
	}
	// The manager runs as a plain user bound to the ClusterRole that
	// controller-gen generated from the RBAC markers: the test proves that
	// role is enough.
	if err := bindManagerRole(env.k8s, "fnlet-manager"); err != nil {
		fmt.Println("rbac:", err)
		return 1
	}
	mgrUser, err := te.AddUser(envtest.User{Name: "fnlet-manager"}, nil)
	if err != nil {
		fmt.Println("add user:", err)
		return 1
	}
	if env.kubeconfig, err = writeKubeconfig(mgrUser, filepath.Join(work, "manager.kubeconfig")); err != nil {
		fmt.Println(err)
		return 1
	}
	admin, err := te.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		fmt.Println("add admin:", err)
		return 1
	}
	if env.adminConfig, err = writeKubeconfig(admin, filepath.Join(work, "admin.kubeconfig")); err != nil {
		fmt.Println(err)
		return 1
	}
	return m.Run()
}

func writeKubeconfig(u *envtest.AuthenticatedUser, path string) (string, error) {
	b, err := u.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("kubeconfig: %w", err)
	}
	return path, os.WriteFile(path, b, 0o600)
}

func bindManagerRole(c client.Client, user string) error {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		return err
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(b, &role); err != nil {
		return err
	}
	ctx := context.Background()
	if err := c.Create(ctx, &role); err != nil {
		return err
	}
	return c.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "fnlet-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: "rbac.authorization.k8s.io", Name: user}},
	})
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

// managerProc is one running manager process.
type managerProc struct {
	node string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startManager runs the manager binary for a node. logDir is the call IO
// root; pass the same dir to a restarted manager of the same node.
func startManager(t *testing.T, node, logDir string, extra ...string) *managerProc {
	t.Helper()
	logPath := filepath.Join(env.workDir, fmt.Sprintf("manager-%s-%d.log", node, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{
		"--node-name", node,
		"--containerd-address", env.containerd,
		"--containerd-namespace", env.ctrdNS,
		"--log-dir", logDir,
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", "0",
		"--kill-grace", "2s",
	}, extra...)
	cmd := exec.Command(env.managerBin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.kubeconfig)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &managerProc{node: node, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("manager %s log (last 40 lines):\n%s", node, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return p
}

// stop ends the manager gracefully.
func (p *managerProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill9 ends the manager like a crash.
func (p *managerProc) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "it-"}}
	if err := env.k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}
