package integration

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
)

// TestKubectlFnlet runs the plugin as a user would, against the
// apiserver with the log API registered: `run` streams the output and
// mirrors the call's exit (0, 3, 137 for an OOM, 125 for a call that never
// ran), and Ctrl-C cancels the call.
func TestKubectlFnlet(t *testing.T) {
	requireEnv(t)
	ns := newNamespace(t)
	grantAuthReader(t)
	addr := freeAddress(t)
	_, port, _ := net.SplitHostPort(addr)
	startManager(t, "n1", t.TempDir(), "--containerd-namespace", nodeNamespaces[0],
		"--log-api-bind-address", ":"+port, "--log-api-advertise-address", addr)
	registerAPIService(t, addr)
	plugin := buildPlugin(t)
	image := testImage
	fnlet := func(args ...string) *exec.Cmd {
		cmd := exec.Command(plugin, append([]string{"--kubeconfig", env.adminConfig, "-n", ns}, args...)...)
		return cmd
	}

	for _, tc := range []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string // stdout exact; stderr a substring
	}{
		{"exit 0", []string{"run", image, "--rm", "--", "-stdout-text", "hello", "-stderr-text", "note"}, 0, "hello\n", "note\n"},
		{"exit 3", []string{"run", image, "--", "-stderr-text", "bad input", "-exit", "3"}, 3, "", "bad input\n"},
		{"OOM is 137", []string{"run", image, "--memory", "32Mi", "--", "-alloc-mib", "64"}, 137, "", "OOMKilled (exit code 137)"},
		{"stdin from a file", []string{"run", image, "--stdin", writeFile(t, "in", "fed\n"), "--", "-stdin-echo"}, 0, "fed\n", ""},
		{"never ran", []string{"run", "localhost/fnlet/missing:v1"}, 125, "", "Failed: ImagePullFailed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cmd := fnlet(tc.args...)
			cmd.Stdout, cmd.Stderr = &out, &errOut
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || out.String() != tc.stdout || !strings.Contains(errOut.String(), tc.stderr) {
				t.Errorf("exit %d stdout %q stderr %q; want exit %d stdout %q stderr containing %q", code, out.String(), errOut.String(), tc.code, tc.stdout, tc.stderr)
			}
		})
	}

	t.Run("logs and wait", func(t *testing.T) {
		cmd := fnlet("run", image, "--name", "kept", "-q", "--", "-stdout-bytes", "100k", "-exit", "4")
		if err := cmd.Run(); err == nil {
			t.Fatal("run of a call exiting 4 exited 0")
		}
		out, err := fnlet("logs", "kept", "--tail", "64").Output()
		if err != nil || len(out) != 64 {
			t.Errorf("logs --tail 64: %d bytes, %v", len(out), err)
		}
		err = fnlet("wait", "kept").Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 4 {
			t.Errorf("wait: %v, want exit 4", err)
		}
		b, err := fnlet("logs", "missing").CombinedOutput()
		if err == nil || !strings.Contains(string(b), "Error from server (NotFound)") {
			t.Errorf("logs of a missing call: %q, %v", b, err)
		}
	})

	t.Run("Ctrl-C cancels the call", func(t *testing.T) {
		cmd := fnlet("run", image, "--name", "interrupted", "--", "-stdout-text", "started", "-sleep", "60s")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "started\n" {
			t.Fatalf("first line %q, %v", line, err)
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Errorf("exit %v, want 130; stderr %q", err, errOut.String())
		}
		fc := env.calls.WaitFinished(t, client.ObjectKey{Namespace: ns, Name: "interrupted"}, 60*time.Second)
		if !fc.Spec.Cancel || fc.Status.Reason != fnletv1.ReasonCancelled {
			t.Errorf("call after Ctrl-C: cancel %v, %s/%s", fc.Spec.Cancel, fc.Status.Phase, fc.Status.Reason)
		}
	})
}

func buildPlugin(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(env.workDir, "kubectl-fnlet")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/kubectl-fnlet")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-fnlet: %v\n%s", err, b)
	}
	return out
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
