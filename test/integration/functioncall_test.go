package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

func call(name, ns, node string) *utiltesting.FunctionCallWrapper {
	return calls.Local(name, ns, node)
}

func create(t *testing.T, fc *fnletv1.FunctionCall) types.NamespacedName {
	t.Helper()
	return env.calls.Create(t, fc)
}

func waitFinished(t *testing.T, key types.NamespacedName, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	return env.calls.WaitFinished(t, key, timeout)
}

// expectOutcome checks phase, reason and (unless nil) the exit code.
func expectOutcome(t *testing.T, fc *fnletv1.FunctionCall, phase fnletv1.CallPhase, reason fnletv1.CallReason, exit *int32) {
	t.Helper()
	calls.Outcome{Phase: phase, Reason: reason, Exit: exit}.Expect(t, fc)
}

func i32(v int32) *int32 { return &v }

// containers lists the call containers in the suite's containerd namespace.
func containers(t *testing.T, uid types.UID) int {
	t.Helper()
	c, err := client.New(env.containerd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), env.ctrdNS)
	filter := fmt.Sprintf(`labels."%s"==%s`, ctrd.LabelCallUID, uid)
	cs, err := c.Containers(ctx, filter)
	if err != nil {
		t.Fatal(err)
	}
	return len(cs)
}

// TestCallOutcomes runs calls that end every way a user can see, on one
// manager, and checks what lands in their status.
func TestCallOutcomes(t *testing.T) {
	requireEnv(t)
	node := "node-outcomes"
	startManager(t, node, t.TempDir(), "--default-timeout", "30s")
	ns := newNamespace(t)

	t.Run("success with stdout in status", func(t *testing.T) {
		key := create(t, call("ok", ns, node).Args("-stdout-text", "hello fnlet", "-stderr-text", "note").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if fc.Status.Stdout != "hello fnlet\n" || fc.Status.Stderr != "note\n" {
			t.Errorf("stdout %q stderr %q", fc.Status.Stdout, fc.Status.Stderr)
		}
		if fc.Status.StartedAt == nil || fc.Status.FinishedAt == nil || fc.Status.ClaimedAt == nil || fc.Status.Usage == nil || fc.Status.Usage.CPUNanoseconds == 0 {
			t.Errorf("times/usage missing: %+v", fc.Status)
		}
		if fc.Status.NodeName != node || fc.Status.ContainerID == "" {
			t.Errorf("node %q container %q", fc.Status.NodeName, fc.Status.ContainerID)
		}
		// The finalizer goes once the container is gone, in the same patch
		// that labels the call finished (which takes it out of the
		// manager's cache).
		fc = env.calls.WaitReleased(t, key, 10*time.Second)
		if n := containers(t, fc.UID); n != 0 {
			t.Errorf("%d containers left for a finished call", n)
		}
		if fc.Labels[fnletv1.LabelFinished] != "true" {
			t.Errorf("labels %v: want %s=true once the finalizer is gone", fc.Labels, fnletv1.LabelFinished)
		}
	})

	t.Run("a call applied with a finished call's label still runs", func(t *testing.T) {
		key := create(t, call("copied", ns, node).Label(fnletv1.LabelFinished, "true").Args("-stdout-text", "again").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if fc.Status.Stdout != "again\n" {
			t.Errorf("stdout %q", fc.Status.Stdout)
		}
	})

	t.Run("non-zero exit is Error with the code", func(t *testing.T) {
		key := create(t, call("exit3", ns, node).Args("-stderr-text", "bad input", "-exit", "3").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonError, i32(3))
		if fc.Status.Stderr != "bad input\n" {
			t.Errorf("stderr %q", fc.Status.Stderr)
		}
	})

	t.Run("memory over limit is OOMKilled", func(t *testing.T) {
		key := create(t, call("oom", ns, node).Args("-alloc-mib", "64").Memory("32Mi").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonOOMKilled, i32(137))
	})

	t.Run("timeout is TimedOut", func(t *testing.T) {
		key := create(t, call("slow", ns, node).Args("-sleep", "60s").Timeout(time.Second).Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonTimedOut, nil)
	})

	t.Run("cancel is Cancelled", func(t *testing.T) {
		key := create(t, call("cancel-me", ns, node).Args("-trap-term", "-sleep", "60s").Obj())
		fc := env.calls.WaitFor(t, key, 30*time.Second, "running", func(fc *fnletv1.FunctionCall) bool { return fc.Status.Phase == fnletv1.PhaseRunning })
		patch := ctrlclient.MergeFrom(fc.DeepCopy())
		fc.Spec.Cancel = true
		if err := env.k8s.Patch(context.Background(), fc, patch); err != nil {
			t.Fatalf("set cancel: %v", err)
		}
		fc = waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonCancelled, i32(137)) // it traps TERM: killed after the grace
	})

	t.Run("missing image with policy Never is ImagePullFailed NotFound", func(t *testing.T) {
		key := create(t, call("noimage", ns, node).Image("localhost/fnlet/absent:v1").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonImagePullFailed, nil)
		if fc.Status.PullError != fnletv1.PullErrorNotFound || !strings.Contains(fc.Status.Message, "Never") {
			t.Errorf("pullError %q message %q", fc.Status.PullError, fc.Status.Message)
		}
	})

	t.Run("input reaches stdin", func(t *testing.T) {
		key := create(t, call("echo", ns, node).Args("-stdin-echo").Input("some input\n").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if fc.Status.Stdout != "some input\n" {
			t.Errorf("stdout %q", fc.Status.Stdout)
		}
	})

	t.Run("a Secret of a namespace that has not opted in: InvalidSpec saying what to bind", func(t *testing.T) {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: ns}, StringData: map[string]string{"token": "s3cr3t"}}
		if err := env.k8s.Create(context.Background(), sec); err != nil {
			t.Fatal(err)
		}
		key := create(t, call("unbound-secret", ns, node).Args("-print-env").EnvFromSecret("TOKEN", "creds", "token").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonInvalidSpec, nil)
		// The manager runs as the plain user kubeapi.ManagerUser.
		want := "kubectl create rolebinding fnlet-namespace-reader -n " + ns + " --clusterrole=fnlet-namespace-reader --user=" + kubeapi.ManagerUser
		if !strings.Contains(fc.Status.Message, want) || strings.Contains(fc.Status.Stdout, "s3cr3t") {
			t.Errorf("message %q, want it to contain %q", fc.Status.Message, want)
		}
	})

	t.Run("env from a Secret of the call's namespace, once it opted in", func(t *testing.T) {
		if err := kubeapi.GrantNamespace(context.Background(), env.k8s, ns); err != nil {
			t.Fatal(err)
		}
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "granted-creds", Namespace: ns}, StringData: map[string]string{"token": "s3cr3t"}}
		if err := env.k8s.Create(context.Background(), sec); err != nil {
			t.Fatal(err)
		}
		key := create(t, call("with-secret", ns, node).Args("-print-env").EnvFromSecret("TOKEN", "granted-creds", "token").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if !strings.Contains(fc.Status.Stdout, "TOKEN=s3cr3t\n") {
			t.Errorf("env not set: %q", fc.Status.Stdout)
		}
	})

	t.Run("a Secret of another namespace is not reachable", func(t *testing.T) {
		// Even from a namespace that opted in: only its own Secrets.
		if err := kubeapi.GrantNamespace(context.Background(), env.k8s, ns); err != nil {
			t.Fatal(err)
		}
		other := newNamespace(t)
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere", Namespace: other}, StringData: map[string]string{"token": "theirs"}}
		if err := env.k8s.Create(context.Background(), sec); err != nil {
			t.Fatal(err)
		}
		key := create(t, call("steal", ns, node).Args("-print-env").EnvFromSecret("TOKEN", "elsewhere", "token").Obj())
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonInvalidSpec, nil)
		if strings.Contains(fc.Status.Stdout, "theirs") || !strings.Contains(fc.Status.Message, "not found") {
			t.Errorf("status %+v", fc.Status)
		}
	})

	t.Run("deletion mid-run removes the container and the finalizer", func(t *testing.T) {
		key := create(t, call("delete-me", ns, node).Args("-sleep", "60s").Obj())
		fc := env.calls.WaitFor(t, key, 30*time.Second, "running", func(fc *fnletv1.FunctionCall) bool { return fc.Status.Phase == fnletv1.PhaseRunning })
		if n := containers(t, fc.UID); n != 1 {
			t.Fatalf("%d containers for a running call, want 1", n)
		}
		if err := env.k8s.Delete(context.Background(), fc); err != nil {
			t.Fatal(err)
		}
		env.calls.WaitGone(t, key, 20*time.Second)
		if n := containers(t, fc.UID); n != 0 {
			t.Fatalf("%d containers left after delete", n)
		}
	})
}

// TestInvalidSpecsRejectedByKubectl applies bad YAML the way a user would.
func TestInvalidSpecsRejectedByKubectl(t *testing.T) {
	requireEnv(t)
	ns := newNamespace(t)
	tests := []struct {
		name, spec, want string
	}{
		{"missing image", `args: ["x"]`, "image"},
		{"negative memory", "image: " + testImage + "\n  resources:\n    memory: -1Mi", "memory"},
		{"unknown network", "image: " + testImage + "\n  network: bridge", "network"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := kubectlApply(t, ns, "bad", tc.spec)
			if err == nil {
				t.Fatalf("kubectl apply accepted it:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("message does not mention %q:\n%s", tc.want, out)
			}
		})
	}
	t.Run("spec change after claim", func(t *testing.T) {
		node := "node-immutable"
		startManager(t, node, t.TempDir())
		key := create(t, call("frozen", ns, node).Args("-sleep", "30s").Obj())
		env.calls.WaitFor(t, key, 30*time.Second, "claimed", func(fc *fnletv1.FunctionCall) bool { return fc.Status.NodeName == node })
		out, err := kubectlApply(t, ns, "frozen", fmt.Sprintf("image: %s\n  imagePullPolicy: Never\n  nodeName: %s\n  args: [\"-sleep\", \"1s\"]", testImage, node))
		if err == nil || !strings.Contains(out, "immutable") {
			t.Fatalf("change after claim not rejected (err %v):\n%s", err, out)
		}
	})
}

func kubectlApply(t *testing.T, ns, name, spec string) (string, error) {
	t.Helper()
	doc := fmt.Sprintf("apiVersion: fnlet.dev/v1alpha1\nkind: FunctionCall\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  %s\n", name, ns, spec)
	cmd := exec.Command("kubectl", "--kubeconfig", env.adminConfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(doc)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestTwoManagersRaceExactlyOnce: 50 unbound calls, two nodes competing;
// each call must run exactly once (its output is written once, and every
// call is claimed by exactly one node).
func TestTwoManagersRaceExactlyOnce(t *testing.T) {
	requireEnv(t)
	logs := t.TempDir()
	a := startManager(t, "race-a", logs, "--max-calls", "8")
	b := startManager(t, "race-b", logs, "--max-calls", "8")
	ns := newNamespace(t)
	const n = 50
	keys := make([]types.NamespacedName, n)
	for i := range keys {
		keys[i] = create(t, call(fmt.Sprintf("race-%d", i), ns, "").Args("-stdout-text", fmt.Sprintf("call %d", i)).Obj())
	}
	perNode := map[string]int{}
	for i, key := range keys {
		fc := waitFinished(t, key, 120*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if want := fmt.Sprintf("call %d\n", i); fc.Status.Stdout != want {
			t.Errorf("%s stdout %q, want %q (ran twice?)", key.Name, fc.Status.Stdout, want)
		}
		perNode[fc.Status.NodeName]++
		// The full log holds the output exactly once: one run.
		b, err := os.ReadFile(filepath.Join(logs, ctrd.ContainerID(string(fc.UID)), "stdout"))
		if err != nil || string(b) != fmt.Sprintf("call %d\n", i) {
			t.Errorf("%s full log %q (%v)", key.Name, b, err)
		}
	}
	t.Logf("calls per node: %v", perNode)
	if perNode["race-a"]+perNode["race-b"] != n {
		t.Fatalf("calls per node %v do not add up to %d", perNode, n)
	}
	a.Stop()
	b.Stop()
}

// TestCallsWaitingBeforeManagerStarts: calls created before any manager
// runs reach the new manager in its watch's initial list, before that
// watch has synced. Each must still be claimed and run: a reconcile that
// read the not-yet-synced watch as NotFound dropped the call for good
// (the CI flake of a call never claimed after a manager start).
func TestCallsWaitingBeforeManagerStarts(t *testing.T) {
	requireEnv(t)
	ns := newNamespace(t)
	keys := make([]types.NamespacedName, 5)
	for i := range keys {
		keys[i] = create(t, call(fmt.Sprintf("early-%d", i), ns, "").Args("-stdout-text", "ok").Obj())
	}
	m := startManager(t, "node-late", t.TempDir())
	for _, key := range keys {
		fc := waitFinished(t, key, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
	}
	m.Stop()
}

// TestManagerKilledMidCall: kill -9 the manager while a call runs; a new
// manager for the node finishes the call with its status and output.
func TestManagerKilledMidCall(t *testing.T) {
	requireEnv(t)
	node := "node-crash"
	logs := t.TempDir()
	m1 := startManager(t, node, logs)
	ns := newNamespace(t)
	key := create(t, call("survivor", ns, node).Args("-stdout-text", "before", "-sleep", "3s", "-stderr-text", "after", "-exit", "4").Obj())
	fc := env.calls.WaitFor(t, key, 30*time.Second, "running", func(fc *fnletv1.FunctionCall) bool { return fc.Status.Phase == fnletv1.PhaseRunning })
	m1.Kill9()
	// The call exits while no manager runs: fnlet-init records its exit
	// code in the call's directory.
	exitFile := filepath.Join(logs, ctrd.ContainerID(string(fc.UID)), "exit-code")
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, "exit code recorded in "+exitFile, func() error {
		if b, err := os.ReadFile(exitFile); err != nil || len(b) == 0 {
			return fmt.Errorf("empty (%v)", err)
		}
		return nil
	})
	startManager(t, node, logs)
	fc = waitFinished(t, key, 30*time.Second)
	expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonError, i32(4))
	if fc.Status.Stdout != "before\n" || fc.Status.Stderr != "after\n" {
		t.Fatalf("output after restart: stdout %q stderr %q", fc.Status.Stdout, fc.Status.Stderr)
	}
	env.calls.WaitReleased(t, key, 10*time.Second)
	if n := containers(t, fc.UID); n != 0 {
		t.Fatalf("%d containers left", n)
	}
}
