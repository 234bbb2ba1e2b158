package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
)

// nodeLostNamespaces are the containerd namespaces of TestNodeLost's three
// nodes (hack/chaos.sh imports the test images into each): a node's orphan
// collector sees only its own containers, as on real nodes.
var nodeLostNamespaces = []string{"fnlet-chaos-n1", "fnlet-chaos-n2", "fnlet-chaos-n3"}

// nodeLostLeases: a node is lost 2s after its last renewal plus 2s of grace.
var nodeLostLeases = []string{"--lease-duration", "2s", "--lease-renew-interval", "500ms", "--node-lost-grace", "2s"}

// chaosNode is one of TestNodeLost's nodes: its manager, its containerd
// namespace and the task starts containerd reports there.
type chaosNode struct {
	name, ctrdNS string
	m            *manager
	starts       *startTracker
	baseLeases   map[string]bool
}

// nlCall is a call of TestNodeLost and what it must end as when it is not
// lost with its node.
type nlCall struct {
	name    string
	retries int32
	want    calls.Outcome
}

// TestNodeLost: three managers, each with its own containerd namespace, and
// a stream of unassigned calls (half with retries 0, half with retries 1)
// that placement spreads over them. Again and again a manager running both
// kinds is SIGKILLed for good; once its Lease has expired and the grace is
// over (a peer took its calls over) it is started again and must fence:
// remove every container it had. Then:
//   - a retries-0 call ends Failed/NodeLost naming the lost node, or
//     finishes normally; it is never started twice;
//   - a retries-1 call finishes Succeeded with its output; it may run once
//     more per NodeLost (at least once: the lost node's container kept
//     running), and those re-runs are counted apart, not as duplicates;
//   - no final status changes afterwards (the returning node writes none);
//   - nothing of any call is left in any of the three namespaces.
func TestNodeLost(t *testing.T) {
	requireChaos(t)
	const rounds, batch = 4, 8
	r := newRow(t, fmt.Sprintf("6 node lost: 3 managers, %d SIGKILLs", rounds))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	nodes := map[string]*chaosNode{}
	var nodeNames []string
	for i, ns := range nodeLostNamespaces {
		n := &chaosNode{name: fmt.Sprintf("chaos-nl%d", i+1), ctrdNS: ns, starts: newStartTracker(env.containerd, ns)}
		go n.starts.run(ctx)
		if err := n.starts.waitConnected(30 * time.Second); err != nil {
			t.Fatalf("containerd events of %s: %v", ns, err)
		}
		var err error
		if n.baseLeases, err = leaseIDsIn(ctx, ns); err != nil {
			t.Fatalf("leases of %s: %v", ns, err)
		}
		n.m = startManager(t, n.name, append([]string{"--containerd-namespace", ns, "--max-calls", "8", "--default-timeout", "3m"}, nodeLostLeases...)...)
		nodes[n.name] = n
		nodeNames = append(nodeNames, n.name)
	}
	ns := newNamespace(t, "nodelost")
	o := observe(t, ns)

	var all []*nlCall
	byName := map[string]*nlCall{}
	submit := func(k int) {
		for i := 0; i < k; i++ {
			c := &nlCall{name: fmt.Sprintf("c%03d", len(all)), retries: int32(len(all) % 2)}
			token := fmt.Sprintf("%s-%s-%08x", ns, c.name, rand.Uint32())
			create(t, calls.Local(c.name, ns, "").Retries(c.retries).
				Args("-stdout-text", "out "+token, "-sleep", randDur(2*time.Second, 6*time.Second).String()).Obj())
			stdout := "out " + token + "\n"
			c.want = calls.Outcome{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Exit: ptr(int32(0)), Stdout: &stdout, Log: &stdout}
			all = append(all, c)
			byName[c.name] = c
		}
	}
	names := func() []string {
		out := make([]string, len(all))
		for i, c := range all {
			out[i] = c.name
		}
		return out
	}
	// onNode lists the unfinished calls bound to node.
	onNode := func(node string) []*fnletv1.FunctionCall {
		var out []*fnletv1.FunctionCall
		for _, c := range all {
			if l, _, _ := o.get(c.name); l != nil && !l.IsFinished() && l.Status.NodeName == node {
				out = append(out, l)
			}
		}
		return out
	}
	// victim is a node running calls of both kinds, none of them already
	// retried after a NodeLost (a second loss would rightly end it NodeLost).
	victim := func() string {
		for _, node := range nodeNames {
			var r0, r1 bool
			ok := true
			for _, l := range onNode(node) {
				c := byName[l.Name]
				if c.retries > 0 && l.Status.Attempts > 1 {
					ok = false
				}
				if isRunning(l) {
					r0, r1 = r0 || c.retries == 0, r1 || c.retries > 0
				}
			}
			if ok && r0 && r1 {
				return node
			}
		}
		return ""
	}

	var killedNodes []string // every node killed, in order (repeats too)
	lostCalls := map[string]bool{}
	var notes []string
	start := time.Now()
	for tries := 0; r.Faults < rounds; tries++ {
		if tries >= 3*rounds {
			t.Fatalf("only %d of %d rounds found a node running calls of both kinds", r.Faults, rounds)
		}
		submit(batch)
		var node string
		if !o.waitUntil(30*time.Second, func() bool { node = victim(); return node != "" }) {
			continue
		}
		n := nodes[node]
		n.m.Kill9()
		killed := time.Now()
		r.Faults++
		killedNodes = append(killedNodes, node)
		held := onNode(node)
		for _, l := range held {
			lostCalls[l.Name] = true
		}
		// Calls keep coming while the node is dead but not yet lost.
		submit(batch / 2)
		if !o.waitUntil(30*time.Second, func() bool { return len(onNode(node)) == 0 }) {
			t.Fatalf("%s SIGKILLed %s ago still holds calls: %v", node, time.Since(killed).Round(time.Second), o.describeMissing(namesOf(onNode(node))))
		}
		taken := time.Since(killed)
		// Everything the lost node has in containerd is stale now: its
		// calls are final or bound elsewhere.
		stale := containerIDs(t, n.ctrdNS)
		n.m.Restart()
		// No watch reports a container's removal in containerd: poll.
		testenv.Eventually(t, 30*time.Second, 100*time.Millisecond, "the returning node "+node+" fences its stale containers", func() error {
			left := 0
			now := containerIDs(t, n.ctrdNS)
			for id := range stale {
				if now[id] {
					left++
				}
			}
			if left > 0 {
				return fmt.Errorf("%d of %d left", left, len(stale))
			}
			return nil
		})
		notes = append(notes, fmt.Sprintf("%s at %.0fs: %d calls taken over after %.1fs, %d stale containers fenced %.1fs after its restart",
			node, killed.Sub(start).Seconds(), len(held), taken.Seconds(), len(stale), time.Since(killed.Add(taken)).Seconds()))
	}
	r.Calls = len(all)
	r.notef("SIGKILLs: %s", strings.Join(notes, "; "))

	missing := o.waitFinal(names(), 3*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))

	var bad, dups []string
	var nodeLost0, reruns, rerunCalls int
	for _, c := range all {
		_, f, _ := o.get(c.name)
		if f == nil {
			continue
		}
		runs := 0
		for _, n := range nodes {
			runs += n.starts.runs(string(f.UID))
		}
		switch {
		case f.Status.Reason == fnletv1.ReasonNodeLost && f.Status.Attempts > c.retries:
			// Out of retries: each lost node counts the attempt it may have
			// started (a retries-1 call lost twice ends here too).
			nodeLost0++
			// Any killed node: the observer may have seen the claim of a
			// call only after the kill.
			if b := nodeLostCheck(f, killedNodes); b != "" {
				bad = append(bad, b)
			}
		default:
			bad = append(bad, c.want.Check(f, nodes[f.Status.NodeName].logDirOrEmpty())...)
		}
		allowed := 1
		if c.retries > 0 {
			// One run per attempt: a NodeLost counts an attempt and the
			// lost node's container may have run on.
			allowed = max(1, int(f.Status.Attempts))
			if runs > 1 {
				reruns += min(runs, allowed) - 1
				rerunCalls++
			}
		}
		if runs > allowed {
			dups = append(dups, fmt.Sprintf("%s (retries %d, %d attempts) started %d times", c.name, c.retries, f.Status.Attempts, runs))
		}
	}
	rw := o.rewrites()
	r.Bad = len(bad) + len(rw)
	r.Dups = len(dups)
	logList(t, "wrong statuses", bad)
	logList(t, "final statuses rewritten", rw)
	logList(t, "calls run more often than allowed", dups)
	r.notef("%d calls were seen on a node when it was killed: %d calls out of retries ended NodeLost; %d retries-1 calls ran again elsewhere (%d re-runs, allowed, not duplicates)",
		len(lostCalls), nodeLost0, rerunCalls, reruns)
	r.notef("all calls final %.1fs after the first was submitted", time.Since(start).Seconds())

	if held := o.waitReleased(names(), time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	uids := uidsOf(o, names())
	var lk, emptyCgroups []string
	for _, node := range nodeNames {
		n := nodes[node]
		for _, l := range leaksIn(t, n.ctrdNS, n.baseLeases, uids, n.m.logDir) {
			if emptyCgroupDir(l) {
				emptyCgroups = append(emptyCgroups, n.ctrdNS+": "+l)
				continue
			}
			lk = append(lk, n.ctrdNS+": "+l)
		}
	}
	r.Leak = len(lk)
	logList(t, "leaked", lk)
	if len(emptyCgroups) > 0 {
		// A kill during "runc create" leaves the cgroup runc made, empty,
		// with no runc state to delete it by: containerd's dead-shim cleanup
		// fails with "container not created" (docs/runtime.md, "Interrupted
		// creates"). Nothing runs or is held in it, and the DaemonSet cannot
		// reach the host's cgroupfs to remove it; shown, not counted.
		r.notef("%d empty cgroup directories of creates interrupted by the kills (runc leaves them; see docs/runtime.md)", len(emptyCgroups))
		t.Logf("empty cgroup directories of interrupted creates (not counted):\n  %s", strings.Join(emptyCgroups, "\n  "))
	}
}

// emptyCgroupDir says whether a leak line is a cgroup directory with no
// process in it.
func emptyCgroupDir(leak string) bool {
	dir, ok := strings.CutPrefix(leak, "cgroup ")
	if !ok {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	return err == nil && len(strings.TrimSpace(string(b))) == 0
}

func (n *chaosNode) logDirOrEmpty() string {
	if n == nil {
		return ""
	}
	return n.m.logDir
}

// nodeLostCheck says what is wrong with a Failed/NodeLost call lost with
// one of the nodes killed under it ("" if nothing).
func nodeLostCheck(f *fnletv1.FunctionCall, killedUnder []string) string {
	if f.Status.Phase != fnletv1.PhaseFailed {
		return fmt.Sprintf("%s: phase %s with reason NodeLost", f.Name, f.Status.Phase)
	}
	if len(killedUnder) == 0 {
		return fmt.Sprintf("%s: NodeLost (%q) but it was on no killed node", f.Name, f.Status.Message)
	}
	for _, node := range killedUnder {
		if strings.Contains(f.Status.Message, "node "+node+" was lost") && strings.Contains(f.Status.Message, "lease expired at") {
			return ""
		}
	}
	return fmt.Sprintf("%s: NodeLost message %q names none of %v, or not since when", f.Name, f.Status.Message, killedUnder)
}

func namesOf(fcs []*fnletv1.FunctionCall) []string {
	out := make([]string, len(fcs))
	for i, fc := range fcs {
		out[i] = fc.Name
	}
	sort.Strings(out)
	return out
}

// containerIDs are the fnlet containers in containerd namespace ns.
func containerIDs(t *testing.T, ns string) map[string]bool {
	t.Helper()
	c, err := client.New(env.containerd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs, err := c.Containers(namespaces.WithNamespace(context.Background(), ns))
	if err != nil {
		t.Fatalf("containers of %s: %v", ns, err)
	}
	out := map[string]bool{}
	for _, ct := range cs {
		if strings.HasPrefix(ct.ID(), "fnlet-") {
			out[ct.ID()] = true
		}
	}
	return out
}
