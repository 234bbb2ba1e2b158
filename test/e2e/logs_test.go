package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/test/testfn/pattern"
)

// Users of the log tests, impersonated with the admin kubeconfig (--as):
// the apiserver authenticates the admin, then authorizes as the user,
// and the aggregation layer hands the user's name to the manager.
const (
	// logUser may run calls and read their output: the shipped
	// fnlet-log-reader ClusterRole plus a Role to write FunctionCalls.
	logUser = "fnlet-e2e-runner"
	// viewUser may read FunctionCalls but has no get on functioncalls/log.
	viewUser = "fnlet-e2e-viewer"
)

// grantLogUsers binds the two users' roles in the suite's namespace, as an
// administrator would.
func grantLogUsers(t *testing.T) {
	t.Helper()
	apply(t, fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: fnlet-e2e-calls}
rules:
- apiGroups: [fnlet.dev]
  resources: [functioncalls]
  verbs: [get, list, watch, create, patch, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: fnlet-e2e-view-calls}
rules:
- apiGroups: [fnlet.dev]
  resources: [functioncalls]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: fnlet-e2e-runner-calls}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: fnlet-e2e-calls}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %[1]s}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: fnlet-e2e-runner-logs}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: fnlet-log-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %[1]s}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: fnlet-e2e-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: fnlet-e2e-view-calls}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %[2]s}]
`, logUser, viewUser))
}

func logPath(name string) string {
	return "/apis/logs.fnlet.dev/v1alpha1/namespaces/" + env.ns + "/functioncalls/" + name + "/log"
}

// rawAs is `kubectl get --raw PATH` as user: the output and kubectl's error
// (its stderr included).
func rawAs(user, path string) ([]byte, error) {
	cmd := exec.Command(kubectlBin(), "--kubeconfig", env.kubeconfig, "--as", user, "get", "--raw", path)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%w: %s", err, strings.TrimSpace(errOut.String()))
	}
	return out.Bytes(), nil
}

// TestLogAPIOnCluster reads a call's whole output through the cluster's
// kube-apiserver (APIService v1alpha1.logs.fnlet.dev → Service fnlet-logs
// → the DaemonSet's manager) with kubectl, as a restricted user and as one
// without the verb.
func TestLogAPIOnCluster(t *testing.T) {
	requireCluster(t)
	grantLogUsers(t)
	if out, err := kubectlRaw("", "wait", "--for=condition=Available", "--timeout=120s", "apiservice/v1alpha1.logs.fnlet.dev"); err != nil {
		t.Fatalf("the log API's APIService is not Available (deploy config/logapi): %v\n%s", err, out)
	}
	const n = 50 << 20
	apply(t, fcYAML("big-output", []string{"-stdout-bytes", "50M", "-stderr-text", "done"}))
	waitFinished(t, "big-output", 3*time.Minute)
	expectOutcome(t, "big-output", "Succeeded", "Completed", "0")

	t.Run("50 MiB byte-exact", func(t *testing.T) {
		start := time.Now()
		out, err := rawAs(logUser, logPath("big-output"))
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if err := pattern.Check(pattern.Text, n, out); err != nil {
			t.Fatal(err)
		}
		t.Logf("50 MiB through the cluster's apiserver and kubectl in %s", took.Round(time.Millisecond))
	})
	t.Run("offset, tail and stderr", func(t *testing.T) {
		all := pattern.Bytes(pattern.Text, n)
		for _, tc := range []struct {
			query string
			want  []byte
		}{
			{"?offset=1000", all[1000:]},
			{"?offset=" + strconv.Itoa(n-10), all[n-10:]},
			{"?tailBytes=4096", all[n-4096:]},
			{"?stream=stderr", []byte("done\n")},
		} {
			out, err := rawAs(logUser, logPath("big-output")+tc.query)
			if err != nil || !bytes.Equal(out, tc.want) {
				t.Errorf("%s: %d bytes (%v), want %d", tc.query, len(out), err, len(tc.want))
			}
		}
	})
	t.Run("403 without the verb", func(t *testing.T) {
		// The user can read the call itself, but not its output.
		if _, err := kubectlRaw("", "--as", viewUser, "-n", env.ns, "get", "fc", "big-output"); err != nil {
			t.Fatalf("%s cannot get the call at all: %v", viewUser, err)
		}
		out, err := rawAs(viewUser, logPath("big-output"))
		if err == nil || !strings.Contains(err.Error(), "Forbidden") || len(out) != 0 {
			t.Errorf("%s read %d bytes, error %v; want Forbidden", viewUser, len(out), err)
		}
	})
	t.Run("follow of a running call", func(t *testing.T) {
		apply(t, fcYAML("followed", []string{"-stdout-text", "first", "-sleep", "3s", "-stderr-text", "x"}))
		cmd := exec.Command(kubectlBin(), "--kubeconfig", env.kubeconfig, "--as", logUser, "get", "--raw", logPath("followed")+"?follow=true")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(stdout)
		line, err := r.ReadString('\n')
		if err != nil || line != "first\n" {
			t.Fatalf("first line %q, %v (%s)", line, err, errOut.String())
		}
		// Not yet final (the Running write itself may still be deferred).
		if phase := jsonpath(t, "followed", "{.status.phase}"); phase == "Succeeded" || phase == "Failed" {
			t.Errorf("the call was already %q when its first line arrived", phase)
		}
		rest, _ := r.ReadString(0) // until kubectl exits: the call ended
		if err := cmd.Wait(); err != nil || rest != "" {
			t.Errorf("follow ended with %v after the first line, rest %q (%s)", err, rest, errOut.String())
		}
		if phase := jsonpath(t, "followed", "{.status.phase}"); phase != "Succeeded" {
			t.Errorf("follow ended while the call was %q", phase)
		}
	})
}

// TestKubectlFnletOnCluster runs the kubectl plugin as a restricted user
// would: `kubectl fnlet run` streams the output and exits with the call's
// exit code (0, 3, 137 for an OOM kill), and Ctrl-C cancels the call.
func TestKubectlFnletOnCluster(t *testing.T) {
	requireCluster(t)
	grantLogUsers(t)
	dir := t.TempDir()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-fnlet"), "./cmd/kubectl-fnlet")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-fnlet: %v\n%s", err, out)
	}
	// kubectl finds the plugin on PATH, as it would for a user.
	fnlet := func(args ...string) *exec.Cmd {
		global := []string{"fnlet", "--kubeconfig", env.kubeconfig, "--as", logUser, "-n", env.ns}
		cmd := exec.Command(kubectlBin(), append(global, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		return cmd
	}
	runArgs := func(name string, flags []string, callArgs ...string) []string {
		a := append([]string{"run", testImage, "--name", name}, flags...)
		return append(a, append([]string{"--"}, callArgs...)...)
	}
	for _, tc := range []struct {
		name           string
		flags, args    []string
		code           int
		stdout, stderr string // stdout exact; stderr a substring
	}{
		{"exit-0", []string{"--rm"}, []string{"-stdout-text", "hello", "-stderr-text", "note"}, 0, "hello\n", "note\n"},
		{"exit-3", nil, []string{"-stderr-text", "bad input", "-exit", "3"}, 3, "", "bad input\n"},
		{"oom", []string{"--memory", "32Mi"}, []string{"-alloc-mib", "64"}, 137, "", "OOMKilled (exit code 137)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := fnlet(runArgs("plugin-"+tc.name, tc.flags, tc.args...)...)
			var out, errOut bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errOut
			code := exitCode(t, cmd.Run())
			if code != tc.code || out.String() != tc.stdout || !strings.Contains(errOut.String(), tc.stderr) {
				t.Errorf("exit %d stdout %q stderr %q; want exit %d stdout %q stderr containing %q", code, out.String(), errOut.String(), tc.code, tc.stdout, tc.stderr)
			}
		})
	}
	t.Run("ctrl-c cancels", func(t *testing.T) {
		cmd := fnlet(runArgs("plugin-interrupted", nil, "-stdout-text", "started", "-sleep", "60s")...)
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
			t.Fatalf("first line %q, %v (%s)", line, err, errOut.String())
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if code := exitCode(t, cmd.Wait()); code != 130 {
			t.Errorf("exit %d after Ctrl-C, want 130; stderr %q", code, errOut.String())
		}
		fc := waitFinished(t, "plugin-interrupted", 60*time.Second)
		if !fc.Spec.Cancel || fc.Status.Reason != fnletv1.ReasonCancelled {
			t.Errorf("call after Ctrl-C: cancel %v, %s/%s", fc.Spec.Cancel, fc.Status.Phase, fc.Status.Reason)
		}
	})
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}
