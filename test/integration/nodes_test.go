package integration

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/managerproc"
)

// The lease settings of the node tests: a node is lost 2s after its last
// renewal plus 2s of grace.
var fastLeases = []string{"--lease-duration", "2s", "--lease-renew-interval", "500ms", "--node-lost-grace", "2s"}

// nodeNamespaces are the containerd namespaces of the three nodes of
// TestNodeLost (hack/test.sh imports the test image into each): a node's
// orphan collector must only see its own containers, as on real nodes.
var nodeNamespaces = []string{"fnlet-it-n1", "fnlet-it-n2", "fnlet-it-n3"}

// TestNodeLost: three managers, one SIGKILLed for good while it runs two
// calls. The call without retries ends Failed/NodeLost; the one with a
// retry finishes on another node. The killed node, started again, removes
// its stale containers and leaves both statuses alone.
func TestNodeLost(t *testing.T) {
	requireEnv(t)
	ns := newNamespace(t)
	logs := map[string]string{}
	managers := map[string]*managerproc.Process{}
	for i, node := range []string{"n1", "n2", "n3"} {
		logs[node] = t.TempDir()
		managers[node] = startManager(t, node, logs[node], append([]string{"--containerd-namespace", nodeNamespaces[i]}, fastLeases...)...)
	}

	// A nodeSelector no node matches: one Unschedulable condition and Event.
	lonely := create(t, call("lonely", ns, "").NodeSelector("gpu", "true").Obj())
	fc := env.calls.WaitFor(t, lonely, 15*time.Second, "unschedulable", func(fc *fnletv1.FunctionCall) bool {
		c := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionClaimed)
		return c != nil && c.Reason == fnletv1.ReasonUnschedulable
	})
	// Other tests' managers may still hold Leases: count them all.
	if c := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionClaimed); !regexp.MustCompile(`^0/(\d+) fnlet nodes are available: (\d+) nodeSelector does not match$`).MatchString(c.Message) {
		t.Errorf("unschedulable message %q", c.Message)
	}
	if fc.Status.Phase != fnletv1.PhasePending || fc.Status.NodeName != "" {
		t.Errorf("unschedulable call: phase %s node %q, want Pending and unassigned", fc.Status.Phase, fc.Status.NodeName)
	}

	// The retried call runs first, wherever placement puts it, long enough
	// to still run when its node dies on a loaded machine; the call
	// without retries is pinned to the same node.
	retried := create(t, call("retried", ns, "").Retries(1).Args("-sleep", "15s", "-stdout-text", "done").Obj())
	fc = env.calls.WaitFor(t, retried, 30*time.Second, "running", func(fc *fnletv1.FunctionCall) bool { return fc.Status.Phase == fnletv1.PhaseRunning })
	lostNode := fc.Status.NodeName
	once := create(t, call("once", ns, lostNode).Args("-sleep", "60s").Obj())
	env.calls.WaitFor(t, once, 30*time.Second, "running", func(fc *fnletv1.FunctionCall) bool { return fc.Status.Phase == fnletv1.PhaseRunning })
	onceUID, retriedUID := get(t, once).UID, fc.UID

	killed := time.Now()
	managers[lostNode].Kill9()

	gotOnce := waitFinished(t, once, 30*time.Second)
	expectOutcome(t, gotOnce, fnletv1.PhaseFailed, fnletv1.ReasonNodeLost, nil)
	if !strings.Contains(gotOnce.Status.Message, "node "+lostNode+" was lost") || !strings.Contains(gotOnce.Status.Message, "lease expired at") {
		t.Errorf("NodeLost message %q: want the node and since when", gotOnce.Status.Message)
	}
	t.Logf("NodeLost written %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	gotRetried := waitFinished(t, retried, 60*time.Second)
	expectOutcome(t, gotRetried, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
	if gotRetried.Status.NodeName == lostNode || gotRetried.Status.Attempts != 2 {
		t.Errorf("retried call: node %s attempts %d, want another node than %s and 2 attempts", gotRetried.Status.NodeName, gotRetried.Status.Attempts, lostNode)
	}
	for _, key := range []types.NamespacedName{once, retried} {
		if !hasEvent(t, key, "NodeLost", lostNode) {
			t.Errorf("%s: no Warning NodeLost event naming %s", key.Name, lostNode)
		}
	}
	// Both calls are released: the lost node's finalizer is gone.
	for _, key := range []types.NamespacedName{once, retried} {
		env.calls.WaitFor(t, key, 15*time.Second, "released", func(fc *fnletv1.FunctionCall) bool { return len(fc.Finalizers) == 0 })
	}
	before := map[types.NamespacedName]string{once: get(t, once).ResourceVersion, retried: get(t, retried).ResourceVersion}

	// The lost node comes back: it fences (removes) both stale containers
	// and writes nothing to the calls.
	lostNS := nodeNamespaces[strings.TrimPrefix(lostNode, "n")[0]-'1']
	if n := containersIn(t, lostNS, onceUID) + containersIn(t, lostNS, retriedUID); n == 0 {
		t.Fatalf("no stale containers on %s before it came back: the test proves nothing", lostNode)
	}
	managers[lostNode].Restart()
	// No watch reports a container's removal in containerd: poll.
	testenv.Eventually(t, 30*time.Second, 100*time.Millisecond, "the returning node "+lostNode+" removes its stale containers", func() error {
		if n := containersIn(t, lostNS, onceUID) + containersIn(t, lostNS, retriedUID); n > 0 {
			return fmt.Errorf("%d left", n)
		}
		return nil
	})
	for key, rv := range before {
		if got := get(t, key).ResourceVersion; got != rv {
			t.Errorf("%s was written after its node came back (resourceVersion %s -> %s): %+v", key.Name, rv, got, get(t, key).Status)
		}
	}
}

func get(t *testing.T, key types.NamespacedName) *fnletv1.FunctionCall {
	t.Helper()
	var fc fnletv1.FunctionCall
	if err := env.k8s.Get(context.Background(), key, &fc); err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return &fc
}

// containersIn counts the containers of call uid in containerd namespace ns.
func containersIn(t *testing.T, ns string, uid types.UID) int {
	t.Helper()
	c, err := client.New(env.containerd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs, err := c.Containers(namespaces.WithNamespace(context.Background(), ns), fmt.Sprintf(`labels."%s"==%s`, ctrd.LabelCallUID, uid))
	if err != nil {
		t.Fatal(err)
	}
	return len(cs)
}

// hasEvent says whether the call has a Warning Event with reason whose
// note contains text.
func hasEvent(t *testing.T, key types.NamespacedName, reason, text string) bool {
	t.Helper()
	var list eventsv1.EventList
	if err := env.k8s.List(context.Background(), &list, ctrlclient.InNamespace(key.Namespace)); err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Items {
		if e.Regarding.Name == key.Name && e.Type == "Warning" && e.Reason == reason && strings.Contains(e.Note, text) {
			return true
		}
	}
	return false
}
