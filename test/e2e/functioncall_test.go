package e2e

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv"
)

// Changes go through kubectl; waits (on a watch) and bulk reads use the API
// client (reading is not what is under test).

func getFC(t testing.TB, name string) (*fnletv1.FunctionCall, error) {
	t.Helper()
	var fc fnletv1.FunctionCall
	err := env.k8s.Get(context.Background(), key(name), &fc)
	return &fc, err
}

func key(name string) client.ObjectKey { return client.ObjectKey{Namespace: env.ns, Name: name} }

func waitFinished(t testing.TB, name string, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	return env.calls.WaitFinished(t, key(name), timeout)
}

func waitRunning(t testing.TB, name string) *fnletv1.FunctionCall {
	t.Helper()
	return env.calls.WaitRunning(t, key(name), 60*time.Second)
}

// expectOutcome reads phase, reason and exit code the way a user would:
// kubectl get fc -o jsonpath. exit "" means any.
func expectOutcome(t testing.TB, name, phase, reason, exit string) {
	t.Helper()
	got := jsonpath(t, name, "{.status.phase}/{.status.reason}/{.status.exitCode}")
	want := phase + "/" + reason + "/" + exit
	if exit == "" {
		got = got[:strings.LastIndex(got, "/")+1]
	}
	if got != want {
		t.Fatalf("%s: phase/reason/exit = %q, want %q (message %q)", name, got, want, jsonpath(t, name, "{.status.message}"))
	}
}

// managerLogTail is the end of the manager pods' logs, for failure messages.
func managerLogTail(lines int) string {
	out, err := kubectlRaw("", "-n", systemNamespace, "logs", "-l", managerSelector, "--tail", strconv.Itoa(lines), "--prefix")
	if err != nil {
		return fmt.Sprintf("(manager logs: %v)", err)
	}
	return "manager log tail:\n" + out
}

// checkFullLog asserts the call's full stdout on its node is exactly want:
// it ran once, in the DaemonSet's manager (whose --log-dir it is under).
func checkFullLog(t testing.TB, fc *fnletv1.FunctionCall, want string) {
	t.Helper()
	dir := path.Join(env.callsDir, ctrd.ContainerID(string(fc.UID)))
	if fc.Status.LogDir != dir {
		t.Errorf("%s: status.logDir %q, want %q (run by a manager other than the DaemonSet's?)", fc.Name, fc.Status.LogDir, dir)
		return
	}
	got, err := nodeFile(t, fc.Status.NodeName, path.Join(dir, "stdout"))
	if err != nil {
		t.Errorf("%s: full log: %v", fc.Name, err)
		return
	}
	if got != want {
		t.Errorf("%s: full stdout log on node %s is %q, want %q", fc.Name, fc.Status.NodeName, got, want)
	}
}

// TestCallOutcomes applies calls that end every way a user meets and reads
// the outcome with kubectl.
func TestCallOutcomes(t *testing.T) {
	requireCluster(t)

	t.Run("success with output", func(t *testing.T) {
		apply(t, fcYAML("ok", []string{"-stdout-text", "hello from e2e", "-stderr-text", "note"}, "timeout: 60s"))
		fc := waitFinished(t, "ok", 60*time.Second)
		expectOutcome(t, "ok", "Succeeded", "Completed", "0")
		if got := jsonpath(t, "ok", "{.status.stdout}"); got != "hello from e2e\n" {
			t.Errorf("stdout %q", got)
		}
		if got := jsonpath(t, "ok", "{.status.stderr}"); got != "note\n" {
			t.Errorf("stderr %q", got)
		}
		if fc.Status.NodeName == "" || fc.Status.StartedAt == nil || fc.Status.FinishedAt == nil || fc.Status.Attempts != 1 {
			t.Errorf("status %+v", fc.Status)
		}
		// Usage comes from the cgroup through containerd: it works from an
		// unprivileged pod.
		if fc.Status.Usage == nil || fc.Status.Usage.CPUNanoseconds == 0 {
			t.Errorf("usage missing: %+v", fc.Status.Usage)
		}
		checkFullLog(t, fc, "hello from e2e\n")
		// The finalizer goes once the container is gone.
		env.calls.WaitReleased(t, key("ok"), 30*time.Second)
		if hasContainer(t, fc.Status.NodeName, ctrd.ContainerID(string(fc.UID))) {
			t.Errorf("container of a finished call left on %s", fc.Status.NodeName)
		}
	})

	t.Run("failure exit code", func(t *testing.T) {
		apply(t, fcYAML("exit3", []string{"-stderr-text", "bad input", "-exit", "3"}))
		waitFinished(t, "exit3", 60*time.Second)
		expectOutcome(t, "exit3", "Failed", "Error", "3")
		if got := jsonpath(t, "exit3", "{.status.stderr}"); got != "bad input\n" {
			t.Errorf("stderr %q", got)
		}
	})

	t.Run("OOMKilled", func(t *testing.T) {
		apply(t, fcYAML("oom", []string{"-alloc-mib", "64"}, "resources: {memory: 32Mi}"))
		waitFinished(t, "oom", 60*time.Second)
		expectOutcome(t, "oom", "Failed", "OOMKilled", "137")
	})

	t.Run("TimedOut", func(t *testing.T) {
		apply(t, fcYAML("slow", []string{"-sleep", "60s"}, "timeout: 2s"))
		waitFinished(t, "slow", 60*time.Second)
		expectOutcome(t, "slow", "Failed", "TimedOut", "")
	})

	t.Run("Cancelled", func(t *testing.T) {
		apply(t, fcYAML("cancel-me", []string{"-sleep", "60s"}))
		waitRunning(t, "cancel-me")
		kubectl(t, "patch", "fc", "cancel-me", "--type=merge", "-p", `{"spec":{"cancel":true}}`)
		waitFinished(t, "cancel-me", 60*time.Second)
		// testfn exits 128+15 on SIGTERM.
		expectOutcome(t, "cancel-me", "Failed", "Cancelled", "143")
	})

	t.Run("deletion mid-run", func(t *testing.T) {
		apply(t, fcYAML("delete-me", []string{"-sleep", "60s"}))
		fc := waitRunning(t, "delete-me")
		if fc.Status.Phase != fnletv1.PhaseRunning {
			t.Fatalf("phase %s, want Running", fc.Status.Phase)
		}
		id := ctrd.ContainerID(string(fc.UID))
		if !hasContainer(t, fc.Status.NodeName, id) {
			t.Fatalf("no container %s on %s for a running call", id, fc.Status.NodeName)
		}
		start := time.Now()
		kubectl(t, "delete", "fc", "delete-me", "--timeout=60s") // waits until the object is gone
		t.Logf("kubectl delete of a running call returned after %s", time.Since(start).Round(time.Millisecond))
		out, stderr, err := kubectlCmd("", "-n", env.ns, "get", "fc", "delete-me")
		if err == nil || !strings.Contains(stderr, "NotFound") {
			t.Fatalf("call still there after kubectl delete (err %v):\n%s%s", err, out, stderr)
		}
		if _, err := getFC(t, "delete-me"); !apierrors.IsNotFound(err) {
			t.Fatalf("get after delete: %v", err)
		}
		if hasContainer(t, fc.Status.NodeName, id) {
			t.Fatalf("container %s still on %s after the call was deleted", id, fc.Status.NodeName)
		}
	})
}

// TestBadSpecRejectedByKubectl: the API server refuses invalid calls at
// kubectl apply, with a message naming the problem.
func TestBadSpecRejectedByKubectl(t *testing.T) {
	requireCluster(t)
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"bad-noimage", "apiVersion: fnlet.dev/v1alpha1\nkind: FunctionCall\nmetadata:\n  name: bad-noimage\nspec:\n  args: [\"x\"]\n",
			"spec.image: Required value"},
		{"bad-timeout", fcYAML("bad-timeout", nil, "timeout: soon"), "timeout must be a duration such as 30s, 5m or 1h30m"},
		{"bad-memory", fcYAML("bad-memory", nil, "resources: {memory: 1Mi}"), "memory must be at least 4Mi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := kubectlRaw(tc.yaml, "-n", env.ns, "apply", "-f", "-")
			if err == nil {
				t.Fatalf("kubectl apply accepted it:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("kubectl apply's message does not say %q:\n%s", tc.want, out)
			}
			t.Logf("kubectl apply: %s", strings.TrimSpace(out))
			if _, err := getFC(t, tc.name); !apierrors.IsNotFound(err) {
				t.Fatalf("rejected call exists anyway (err %v)", err)
			}
		})
	}
}

// TestBurstOf30CallsExactlyOnce applies 30 calls in one kubectl apply; each
// must finish once: its unique line is in its full log exactly once.
func TestBurstOf30CallsExactlyOnce(t *testing.T) {
	requireCluster(t)
	const n = 30
	nonce := time.Now().UnixNano()
	docs := make([]string, n)
	for i := range docs {
		docs[i] = fcYAML(fmt.Sprintf("burst-%02d", i), []string{"-stdout-text", fmt.Sprintf("burst %d of %d, run %d", i, n, nonce)})
	}
	start := time.Now()
	apply(t, strings.Join(docs, "---\n"))
	for i := range n {
		name, line := fmt.Sprintf("burst-%02d", i), fmt.Sprintf("burst %d of %d, run %d\n", i, n, nonce)
		fc := waitFinished(t, name, 3*time.Minute)
		if fc.Status.Phase != fnletv1.PhaseSucceeded || fc.Status.Reason != fnletv1.ReasonCompleted {
			t.Errorf("%s: %s/%s (%s)", name, fc.Status.Phase, fc.Status.Reason, fc.Status.Message)
			continue
		}
		if fc.Status.Stdout != line || fc.Status.Attempts != 1 {
			t.Errorf("%s: stdout %q attempts %d, want %q once", name, fc.Status.Stdout, fc.Status.Attempts, line)
		}
		checkFullLog(t, fc, line)
	}
	t.Logf("%d calls applied at once all finished %s after the apply", n, time.Since(start).Round(time.Millisecond))
}

// TestKubectlGetReadable: `kubectl get fc` shows the outcome in columns.
func TestKubectlGetReadable(t *testing.T) {
	requireCluster(t)
	apply(t, fcYAML("table-ok", []string{"-stdout-text", "x"})+"---\n"+fcYAML("table-exit2", []string{"-exit", "2"}))
	node := waitFinished(t, "table-ok", 60*time.Second).Status.NodeName
	waitFinished(t, "table-exit2", 60*time.Second)
	out := kubectl(t, "get", "fc", "table-ok", "table-exit2")
	t.Logf("kubectl get fc:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows:\n%s", out)
	}
	if h := strings.Join(strings.Fields(lines[0]), " "); h != "NAME PHASE REASON EXIT NODE AGE" {
		t.Errorf("header %q", h)
	}
	want := map[string]string{"table-ok": "Succeeded Completed 0 " + node, "table-exit2": "Failed Error 2 " + node}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 6 || want[f[0]] != strings.Join(f[1:5], " ") {
			t.Errorf("row %q, want %s %s <age>", l, f[0], want[f[0]])
		}
	}
	wide := kubectl(t, "get", "fc", "table-ok", "-o", "wide")
	if h := strings.Fields(strings.SplitN(wide, "\n", 2)[0]); strings.Join(h, " ") != "NAME PHASE REASON EXIT NODE IP STARTED FINISHED AGE" {
		t.Errorf("-o wide header %q", h)
	}
}

// TestEventsInDescribe: `kubectl describe fc` lists the call's Events. A
// success has none (its status says it all; fnlet saves the apiserver the
// writes), every failure a Warning.
func TestEventsInDescribe(t *testing.T) {
	requireCluster(t)
	apply(t, fcYAML("described", []string{"-stderr-text", "x", "-exit", "3"}))
	waitFinished(t, "described", 60*time.Second)
	var out string
	testenv.Eventually(t, 20*time.Second, 250*time.Millisecond, "event Warning Error in kubectl describe", func() error {
		out = kubectl(t, "describe", "fc", "described")
		_, events, ok := strings.Cut(out, "\nEvents:")
		if !ok {
			return fmt.Errorf("no Events section")
		}
		for _, l := range strings.Split(events, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "Warning" && f[1] == "Error" {
				return nil
			}
		}
		return fmt.Errorf("no Warning Error event in:%s", events)
	})
	_, events, _ := strings.Cut(out, "\nEvents:")
	t.Logf("kubectl describe fc described ... Events:%s", events)
}

// TestManagerPodDeletedMidCall deletes the manager pod while a call runs;
// the DaemonSet recreates it, and the new manager finishes the call with
// the right status and output (it ran once: the shim owned its IO).
// Runs last in this file: it restarts the manager.
func TestManagerPodDeletedMidCall(t *testing.T) {
	requireCluster(t)
	t.Cleanup(func() {
		// Whatever happened, leave a rolled-out DaemonSet to later tests.
		if out, err := kubectlRaw("", "-n", systemNamespace, "rollout", "status", "ds/"+daemonSetName, "--timeout=120s"); err != nil {
			t.Errorf("DaemonSet not rolled out again: %v\n%s", err, out)
		}
	})
	pods := func() string {
		return kubectl(t, "-n", systemNamespace, "get", "pods", "-l", managerSelector, "-o", "jsonpath={.items[*].metadata.name}")
	}
	before := pods()
	apply(t, fcYAML("survivor", []string{"-stdout-text", "before", "-sleep", "8s", "-stderr-text", "after", "-exit", "4"}, "timeout: 2m"))
	fc := waitRunning(t, "survivor")
	if fc.Status.Phase != fnletv1.PhaseRunning {
		t.Fatalf("phase %s, want Running", fc.Status.Phase)
	}
	start := time.Now()
	kubectl(t, "delete", "pod", "-n", systemNamespace, "-l", managerSelector, "--timeout=60s")
	t.Logf("manager pod(s) %s deleted in %s", before, time.Since(start).Round(time.Millisecond))
	fc = waitFinished(t, "survivor", 2*time.Minute)
	t.Logf("call finished %s after the pod deletion; manager pods now: %s", time.Since(start).Round(time.Millisecond), pods())
	expectOutcome(t, "survivor", "Failed", "Error", "4")
	if fc.Status.Stdout != "before\n" || fc.Status.Stderr != "after\n" || fc.Status.Attempts != 1 {
		t.Errorf("stdout %q stderr %q attempts %d", fc.Status.Stdout, fc.Status.Stderr, fc.Status.Attempts)
	}
	checkFullLog(t, fc, "before\n")
	if after := pods(); after == before || strings.Contains(after, before) {
		t.Errorf("manager pods %q after the deletion, before %q", after, before)
	}
	env.calls.WaitReleased(t, key("survivor"), 30*time.Second)
	if hasContainer(t, fc.Status.NodeName, ctrd.ContainerID(string(fc.UID))) {
		t.Errorf("container left after the call finished")
	}
}
