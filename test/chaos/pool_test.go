package chaos

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

// warmContainers lists the containers of pool key in the chaos namespace
// (ready or claimed).
func warmContainers(t *testing.T, key string) []string {
	t.Helper()
	c, ctx := ctrdClient(t)
	cs, err := c.Containers(ctx, fmt.Sprintf(`labels."%s"==%q`, ctrd.LabelPool, key))
	if err != nil {
		t.Fatalf("list the pool's containers: %v", err)
	}
	var ids []string
	for _, ct := range cs {
		ids = append(ids, ct.ID())
	}
	slices.Sort(ids)
	return ids
}

// poll checks cond every interval until it holds or timeout passes.
func poll(timeout, interval time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(interval) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// poolEntry polls the pool's status entry of node until ok holds or
// timeout passes; it returns the last entry and whether ok held.
func poolEntry(ns, name, node string, timeout time.Duration, ok func(fnletv1.PoolNodeStatus) bool) (fnletv1.PoolNodeStatus, bool) {
	var last fnletv1.PoolNodeStatus
	held := false
	poll(timeout, 100*time.Millisecond, func() bool {
		var p fnletv1.FunctionPool
		if err := env.k8s.Get(context.Background(), key(ns, name), &p); err != nil {
			return false
		}
		for _, e := range p.Status.Nodes {
			if e.Node == node {
				last = e
				held = ok(e)
			}
		}
		return held
	})
	return last, held
}

// TestPoolUnderFaults: rows 1 and 2a again with a FunctionPool in use. Calls
// that fit the pool run in its pre-started containers while the manager is
// SIGKILLed and restarted twice and containerd once. Every call must end
// exactly once, correctly (status, exit code, output, full log), whether it
// ran warm or cold; the pool's containers are adopted or replaced (the
// node's entry is back at ready = size after each fault); and deleting the
// pool leaves nothing: no container, task, snapshot, lease, shim, cgroup,
// FIFO or input file.
func TestPoolUnderFaults(t *testing.T) {
	requireChaos(t)
	const waves, perWave, size = 4, 15, 4
	r := newRow(t, fmt.Sprintf("1p manager×2 + containerd SIGKILL, pool in use (%d calls)", waves*perWave))
	node := "chaos-pool"
	m := startManager(t, node, "--max-calls", "12", "--default-timeout", "3m", "--pool-refill-rate", "20")
	ns := newNamespace(t, "pool")
	o := observe(t, ns)
	// The class of a call without limits on the manager (256Mi, 1024
	// pids): every call of the row fits the pool, and a claim needs no
	// Update.
	pool := utiltesting.MakeFunctionPool("warm", ns, utiltesting.TestImage).ImagePullPolicy(corev1.PullNever).
		Size(size).Memory("256Mi").Pids(1024).Obj()
	if err := env.k8s.Create(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	poolKey := ns + "/warm"
	full := func(e fnletv1.PoolNodeStatus) bool { return e.Ready == size && e.Target == size }
	if e, ok := poolEntry(ns, "warm", node, 60*time.Second, full); !ok {
		t.Fatalf("pool not full after 60s: %+v", e)
	}

	faults := killFaults(t, m)
	var names []string
	want := map[string]calls.Outcome{}
	seenWarm := map[string]bool{} // every pre-started container seen, for the leak check
	note := func(ids []string) {
		for _, id := range ids {
			seenWarm[id] = true
		}
	}
	var recovered []string
	for w := range waves {
		for i := range perWave {
			name := fmt.Sprintf("w%d-c%02d", w, i)
			names = append(names, name)
			want[name] = mixedCall(t, ns, node, name, randDur(50*time.Millisecond, 2*time.Second), mixedExits[rand.IntN(len(mixedExits))])
			time.Sleep(randDur(0, 150*time.Millisecond))
		}
		if w == len(faults) {
			break
		}
		// The fault lands while the wave's calls run and the pool refills.
		time.Sleep(randDur(200*time.Millisecond, 1500*time.Millisecond))
		before := warmContainers(t, poolKey)
		note(before)
		faults[w].inject()
		r.Faults++
		start := time.Now()
		e, ok := poolEntry(ns, "warm", node, 90*time.Second, full)
		after := warmContainers(t, poolKey)
		note(after)
		kept := 0
		for _, id := range after {
			if slices.Contains(before, id) {
				kept++
			}
		}
		if !ok {
			t.Errorf("after the %s the pool is not full again within 90s: %+v", faults[w].name, e)
		}
		recovered = append(recovered, fmt.Sprintf("%s: full again in %.1fs, %d of its %d containers from before the fault (adopted), %d new",
			faults[w].name, time.Since(start).Seconds(), kept, len(after), len(after)-kept))
	}
	r.Calls = len(names)
	r.notef("pool after each fault: %s", strings.Join(recovered, "; "))

	missing := o.waitFinal(names, 3*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))

	// Outcomes. A warm call's full log is in its pre-started container's
	// directory (status.logDir), a cold call's in its own.
	var bad, dups []string
	warm := 0
	byContainer := map[string][]string{}
	for _, name := range names {
		_, f, _ := o.get(name)
		if f == nil {
			continue
		}
		w := want[name]
		logRoot := m.logDir
		if f.Status.Pool != "" {
			warm++
			logRoot = ""
			if b, err := os.ReadFile(filepath.Join(f.Status.LogDir, "stdout")); err != nil || string(b) != *w.Log {
				bad = append(bad, fmt.Sprintf("%s/%s: full log of the warm call in %s: %q, %v; want %q (exactly once)",
					ns, name, f.Status.LogDir, calls.Clip(string(b)), err, calls.Clip(*w.Log)))
			}
			if n := env.starts.runs(string(f.UID)); n > 0 {
				dups = append(dups, fmt.Sprintf("%s ran in pre-started %s and was started %d times in its own container", name, f.Status.ContainerID, n))
			}
		}
		bad = append(bad, w.Check(f, logRoot)...)
		if f.Status.ContainerID != "" {
			byContainer[f.Status.ContainerID] = append(byContainer[f.Status.ContainerID], name)
		}
	}
	for id, who := range byContainer {
		if len(who) > 1 {
			dups = append(dups, fmt.Sprintf("container %s ran %d calls: %v", id, len(who), who))
		}
	}
	// Each call's unique output is in exactly one directory of the node:
	// a call that ran twice (two pre-started containers, or one and its
	// own) would have two.
	dirs := map[string][]string{}
	entries, _ := os.ReadDir(m.logDir)
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink != 0 {
			continue // a warm call's own path, pointing at its container's directory
		}
		if b, err := os.ReadFile(filepath.Join(m.logDir, e.Name(), "stdout")); err == nil && len(b) > 0 {
			dirs[string(b)] = append(dirs[string(b)], e.Name())
		}
	}
	for _, name := range names {
		if ds := dirs[*want[name].Log]; len(ds) > 1 {
			dups = append(dups, fmt.Sprintf("%s's output is in %d directories: %v", name, len(ds), ds))
		}
	}
	for _, name := range names {
		_, f, _ := o.get(name)
		ds := dirs[*want[name].Log]
		if f == nil || len(ds) != 1 || !strings.HasPrefix(ds[0], ctrd.ContainerID("warm-")) {
			continue
		}
		if f.Status.ContainerID != ds[0] || f.Status.Pool != "warm" || f.Status.LogDir != filepath.Join(m.logDir, ds[0]) {
			bad = append(bad, fmt.Sprintf("%s/%s ran in %s: status says container %q, pool %q, logDir %q", ns, name, ds[0],
				f.Status.ContainerID, f.Status.Pool, f.Status.LogDir))
		}
	}
	r.tally(t, o, names, bad)
	r.Dups += len(dups)
	logList(t, "calls run more than once (warm)", dups)
	r.notef("%d of %d calls ran warm, in %d pre-started containers seen", warm, len(names), len(seenWarm))
	if warm == 0 {
		t.Errorf("no call ran in the pool: the row did not exercise it")
	}
	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}

	// Deleting the pool removes its containers; then nothing of the calls
	// or of any pre-started container is left.
	note(warmContainers(t, poolKey))
	if err := env.k8s.Delete(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	// Directories of pre-started containers that ran no call must go with
	// them; those that ran one stay (log retention), like a cold call's.
	used := map[string]bool{}
	for _, ds := range dirs {
		for _, d := range ds {
			used[d] = true
		}
	}
	unusedDirs := func() []string {
		var out []string
		entries, _ := os.ReadDir(m.logDir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ctrd.ContainerID("warm-")) && !used[e.Name()] {
				out = append(out, "directory of an unused pre-started container "+e.Name())
			}
		}
		return out
	}
	// A pre-start in flight when the pool went (its directory made, its
	// container not yet) finishes first; the drain after it removes both.
	if !poll(60*time.Second, 100*time.Millisecond, func() bool {
		return len(warmContainers(t, poolKey)) == 0 && len(unusedDirs()) == 0
	}) {
		t.Errorf("pool deleted, after 60s still: containers %v, %v", warmContainers(t, poolKey), unusedDirs())
	}
	ids := uidsOf(o, names)
	for id := range seenWarm {
		ids = append(ids, strings.TrimPrefix(id, ctrd.ContainerID(""))) // leaks() takes call UIDs: ContainerID(uid) = prefix+uid
	}
	var lk, emptyCgroups, orphans []string
	for _, l := range leaks(t, ids, m.logDir) {
		switch {
		case emptyCgroupDir(l):
			emptyCgroups = append(emptyCgroups, l)
		case orphanWarmShim(l):
			orphans = append(orphans, l)
		default:
			lk = append(lk, l)
		}
	}
	if len(orphans) > 0 {
		// The containerd SIGKILL can land in a pre-start's "shim start":
		// the restarted containerd knows neither the task nor the shim
		// daemon, so no Delete can stop it (containerd#768, #3334; the
		// manager has no host PID namespace to kill it: docs/runtime.md,
		// "Stuck shims"). It owns no container and no process; shown, not
		// counted. Seen in 2 of 5 runs of this row.
		r.notef("%d shim daemons of pre-starts interrupted by the containerd kill, orphaned by containerd (no container, no process)", len(orphans))
		t.Logf("shims orphaned by the containerd kill (not counted):\n  %s", strings.Join(orphans, "\n  "))
	}
	if len(emptyCgroups) > 0 {
		// As in row 3 (node lost): the containerd SIGKILL can land in a
		// pre-start's "runc create", which leaves its cgroup, empty, with no
		// runc state to delete it by (docs/runtime.md, "Interrupted
		// creates"). Nothing runs in it; shown, not counted.
		r.notef("%d empty cgroup directories of pre-starts interrupted by the containerd kill (runc leaves them)", len(emptyCgroups))
		t.Logf("empty cgroup directories of interrupted creates (not counted):\n  %s", strings.Join(emptyCgroups, "\n  "))
	}
	lk = append(lk, unusedDirs()...)
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}

// orphanWarmShim says whether a leak line is the shim daemon of a
// pre-started container that has no child process (it runs nothing).
func orphanWarmShim(leak string) bool {
	pid, id, ok := shimOfLeak(leak)
	return ok && strings.HasPrefix(id, ctrd.ContainerID("warm-")) && !testenv.HasChild(pid)
}

// shimOfLeak parses a leak line of hostLeaks about a shim daemon.
func shimOfLeak(leak string) (pid, id string, ok bool) {
	n, _ := fmt.Sscanf(leak, "shim pid %s for %s", &pid, &id)
	return pid, id, n == 2
}

// fault is one fault a row injects between waves of calls.
type fault struct {
	name   string
	inject func()
}

// killFaults are rows 1p's and 2p's faults, in order: the manager
// SIGKILLed, containerd SIGKILLed, the manager again. Each stays down a
// random while (the down time is the fault, not a wait for a signal).
func killFaults(t *testing.T, m *manager) []fault {
	killManager := func() { m.Kill9(); time.Sleep(randDur(0, time.Second)); m.Restart() }
	return []fault{
		{"manager SIGKILL", killManager},
		{"containerd SIGKILL", func() { killContainerd(t); time.Sleep(randDur(2*time.Second, 4*time.Second)); startContainerd(t) }},
		{"manager SIGKILL", killManager},
	}
}
