package ctrd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/fnlet/fnlet/internal/testenv"
)

// Integration tests run against a real containerd; make test starts one
// (hack/containerd-up.sh) and imports the test images (hack/build-images.sh).
const (
	addressEnv   = "FNLET_CONTAINERD_ADDRESS"
	testfnImage  = "localhost/fnlet/testfn:v1"
	busyboxImage = "localhost/fnlet/busybox:v1"
	testNS       = "fnlet-test" // apart from a demo manager's namespace, whose orphan GC would take our containers
)

func daemonAddress(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(addressEnv)
	if addr == "" {
		testenv.Missing(t, "%s is not set; this test needs a real containerd (run `make test`, or hack/containerd-up.sh and export %s=<socket>)", addressEnv, addressEnv)
	}
	return addr
}

// initBinary builds fnlet-init once per test binary: the runtime under test
// runs calls under it, as the manager does.
// One fixed directory, rebuilt atomically by each run: nothing piles up.
var buildInit = sync.OnceValues(func() (string, error) {
	return testenv.BuildInit(filepath.Join(os.TempDir(), "fnlet-test-init"))
})

func initBinary(t testing.TB) string {
	t.Helper()
	p, err := buildInit()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// testRuntime is a Runtime with its Watch loop running, plus the events it saw.
type testRuntime struct {
	*Runtime
	mu     sync.Mutex
	events []Event
	stop   func()
}

func newTestRuntime(t testing.TB, ioRoot string, opts ...Opt) *testRuntime {
	t.Helper()
	addr := daemonAddress(t)
	if ioRoot == "" {
		ioRoot = t.TempDir()
	}
	opts = append([]Opt{WithNamespace(testNS), WithIORoot(ioRoot), WithInit(initBinary(t))}, opts...)
	rt, err := New(addr, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tr := &testRuntime{Runtime: rt}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rt.Watch(ctx, func(e Event) {
			tr.mu.Lock()
			tr.events = append(tr.events, e)
			tr.mu.Unlock()
		})
	}()
	var once sync.Once
	tr.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			rt.Close()
		})
	}
	t.Cleanup(tr.stop)
	return tr
}

func (tr *testRuntime) eventsFor(uid string, kind EventKind) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, e := range tr.events {
		if e.Call.UID == uid && e.Kind == kind {
			n++
		}
	}
	return n
}

func newUID(t testing.TB) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)
}

func testCall(t testing.TB, args ...string) Call {
	return Call{UID: newUID(t), Namespace: "default", Name: "test", Image: testfnImage, Args: args}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runToExit ensures the image, runs the call, waits for its exit and
// deletes it, returning the final state.
func runToExit(t testing.TB, rt *testRuntime, call Call) State {
	t.Helper()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := rt.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
		t.Fatalf("EnsureImage: %v", err)
	}
	if _, err := rt.Run(ctx, call); err != nil {
		t.Fatalf("Run: %v", err)
	}
	s, err := rt.Wait(ctx, call.UID)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if s.Phase != PhaseExited || s.Result == nil {
		t.Fatalf("after Wait: phase %s, result %v", s.Phase, s.Result)
	}
	if err := rt.Delete(ctx, call.UID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	return s
}

// rawClient talks to the daemon without fnlet code, for leak checks.
func rawClient(t testing.TB) (*client.Client, context.Context) {
	t.Helper()
	c, err := client.New(daemonAddress(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, namespaces.WithNamespace(context.Background(), testNS)
}

// poll calls cond every 20ms until it holds, failing the test after d.
func poll(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

// waitOutput waits until the call's stdout holds want: testfn prints a
// line (e.g. -stdout-text ready) only after its signal handling is set up.
func waitOutput(t testing.TB, rt *testRuntime, uid, want string) {
	t.Helper()
	stdout, _ := rt.LogPaths(uid)
	poll(t, 30*time.Second, "stdout "+want, func() bool {
		b, _ := os.ReadFile(stdout)
		return strings.Contains(string(b), want)
	})
}

// waitStopped waits until containerd reports the call's task stopped,
// asking the daemon directly: no runtime of ours may be running.
func waitStopped(t testing.TB, uid string) {
	t.Helper()
	c, ctx := rawClient(t)
	poll(t, 30*time.Second, "task of "+uid+" stopped", func() bool {
		task, err := c.TaskService().Get(ctx, &tasksapi.GetRequest{ContainerID: ContainerID(uid)})
		return err == nil && task.Process.Status == tasktypes.Status_STOPPED
	})
}
