// Package testenv decides what a test does when a real component it needs
// (containerd, kube-apiserver, a registry) is not there.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RequireEnv is set by hack/test.sh (`make test`, CI): there, every daemon
// is started, so a missing one is a failure, never a silent skip.
const RequireEnv = "FNLET_REQUIRE_DAEMONS"

// Missing skips the test with the reason printed — or fails it when the
// suite runs with RequireEnv set.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("required component missing ("+RequireEnv+" is set): "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// Short skips a test that needs the daemons named by what when go test
// runs with -short (`make unit`: the pure tests only), with the reason
// printed. Under RequireEnv nothing is skipped: it fails like Missing.
func Short(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		Missing(t, "-short: needs %s", what)
	}
}

// Eventually retries f every interval until it returns nil, and fails the
// test with f's last error after timeout. It is for state no watch
// reports: kubectl output, a metrics scrape, a file on a node.
func Eventually(t testing.TB, timeout, interval time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// BuildInit builds fnlet-init (cmd/fnlet-init) into dir with the project's
// script and returns its path. Suites put it beside the manager binary,
// where the manager looks for it.
func BuildInit(dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "fnlet-init")
	cmd := exec.Command("bash", filepath.Join(root, "hack", "build-init.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fnlet-init: %v\n%s", err, b)
	}
	return out, nil
}

// RepoRoot is the directory of go.mod above the working directory (go test
// runs in the package's directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildManager builds the manager binary into dir, with fnlet-init beside
// it (where the manager finds it), and returns the manager's path.
func BuildManager(dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "manager")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/manager")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build manager: %v\n%s", err, b)
	}
	if _, err := BuildInit(dir); err != nil {
		return "", err
	}
	return out, nil
}
