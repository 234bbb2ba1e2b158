package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv/calls"
)

// leakCall is one call of the leak run and what must become of it.
type leakCall struct {
	name, kind string
	uid        string
	want       calls.Outcome
	acted      bool // cancel set / delete sent
	done       bool
}

// The mix of the leak run: kind → weight (percent).
var leakMix = []struct {
	kind   string
	weight int
}{
	{"success", 50}, {"error", 15}, {"oom", 10}, {"timeout", 10}, {"cancel", 8}, {"delete", 7},
}

func pickKind() string {
	x := rand.IntN(100)
	for _, k := range leakMix {
		if x < k.weight {
			return k.kind
		}
		x -= k.weight
	}
	return "success"
}

// TestLeaks: 1000 calls (FNLET_CHAOS_LEAK_CALLS) of every ending — success,
// error, OOM, timeout, cancel, deleted mid-run — at most 24 in flight, each
// deleted once checked. Afterwards nothing of them may remain in
// containerd (containers, tasks, snapshots, leases), on the host (shims,
// processes, cgroups, FIFOs, input files), and the log directories must be
// within --log-keep; the manager's goroutines and RSS return to the
// baseline measured after a warm-up.
func TestLeaks(t *testing.T) {
	requireChaos(t)
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("FNLET_CHAOS_LEAK_CALLS")); err == nil && v > 0 {
		n = v
	}
	r := newRow(t, fmt.Sprintf("4 leaks: %d mixed calls", n))
	const logKeep = 100
	const inFlight = 24
	node := "chaos-leak"
	m := startManager(t, node, "--max-calls", "16", "--default-timeout", "2m",
		"--log-keep", strconv.Itoa(logKeep), "--log-retention", "1h")
	ns := newNamespace(t, "leak")
	o := observe(t, ns)
	ctx := context.Background()

	// Warm-up, then the baseline: caches filled, first-call allocations done.
	var warm []string
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("warm-%02d", i)
		create(t, calls.Local(name, ns, node).Args("-stdout-text", name).Obj())
		warm = append(warm, name)
	}
	if missing := o.waitFinal(warm, 2*time.Minute, nil); len(missing) > 0 {
		t.Fatalf("warm-up calls did not finish: %v", o.describeMissing(missing))
	}
	o.deleteAndWait(t, time.Minute)
	baseG, baseRSS, baseHeap := settle(t, m, 0, 0)
	r.notef("baseline after 20 warm-up calls: %d goroutines, RSS %.1f MiB, heap in use %.1f MiB", baseG, mib(baseRSS), mib(baseHeap))

	calls := make([]*leakCall, 0, n)
	kinds := map[string]int{}
	var bad []string
	var uids []string
	active := map[string]*leakCall{}
	start := time.Now()
	deadline := start.Add(12 * time.Minute)
	submitted := 0
	for submitted < n || len(active) > 0 {
		if time.Now().After(deadline) {
			break
		}
		for submitted < n && len(active) < inFlight {
			c := submitLeakCall(t, ns, node, submitted)
			calls = append(calls, c)
			active[c.name] = c
			kinds[c.kind]++
			uids = append(uids, c.uid)
			submitted++
		}
		for name, c := range active {
			latest, final, gone := o.get(name)
			switch {
			case c.kind == "delete" && gone:
				c.done = true
			case final != nil:
				bad = append(bad, c.want.Check(final, m.logDir)...)
				c.done = true
				if err := env.k8s.Delete(ctx, final, client.Preconditions{UID: &final.UID}); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("delete %s: %v", name, err)
				}
			case latest != nil && latest.Status.Phase == fnletv1.PhaseRunning && !c.acted:
				c.acted = true
				switch c.kind {
				case "cancel":
					patch := client.MergeFrom(latest.DeepCopy())
					fc := latest.DeepCopy()
					fc.Spec.Cancel = true
					if err := env.k8s.Patch(ctx, fc, patch); err != nil {
						t.Errorf("cancel %s: %v", name, err)
					}
				case "delete":
					if err := env.k8s.Delete(ctx, latest); err != nil && !apierrors.IsNotFound(err) {
						t.Errorf("delete %s mid-run: %v", name, err)
					}
				}
			}
			if c.done {
				delete(active, name)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	r.Calls = submitted
	// The faults here are the endings other than success: OOM kills,
	// timeouts, cancels and deletes mid-run, non-zero exits.
	r.Faults = submitted - kinds["success"]
	r.Lost = len(active)
	var stuck []string
	for name := range active {
		stuck = append(stuck, name)
	}
	sort.Strings(stuck)
	logList(t, "calls that never finished (12 min budget)", o.describeMissing(stuck))
	var names []string
	for _, c := range calls {
		names = append(names, c.name)
	}
	r.tally(t, o, names, bad)
	var mix []string
	for _, k := range leakMix {
		mix = append(mix, fmt.Sprintf("%s %d", k.kind, kinds[k.kind]))
	}
	r.notef("%d calls in %.0fs (%.1f calls/s, at most %d in flight): %s", submitted, elapsed.Seconds(), float64(submitted)/elapsed.Seconds(), inFlight, strings.Join(mix, ", "))

	o.deleteAndWait(t, 2*time.Minute)
	lk := leaks(t, uids, m.logDir)

	// The retention policy runs at the manager's start and every minute.
	var dirs int
	pruneBy := time.Now().Add(75 * time.Second)
	for {
		if dirs = logDirCount(m.logDir); dirs <= logKeep || time.Now().After(pruneBy) {
			break
		}
		time.Sleep(time.Second)
	}
	if dirs > logKeep {
		lk = append(lk, fmt.Sprintf("%d call log directories, --log-keep is %d", dirs, logKeep))
	}
	r.notef("call log directories after the run: %d (--log-keep %d)", dirs, logKeep)

	g, rss, heap := settle(t, m, baseG, baseRSS)
	r.notef("after: %d goroutines (baseline %d), RSS %.1f MiB (baseline %.1f), heap in use %.1f MiB (baseline %.1f)", g, baseG, mib(rss), mib(baseRSS), mib(heap), mib(baseHeap))
	if g > baseG+goroutineSlack {
		lk = append(lk, fmt.Sprintf("manager goroutines %d, baseline %d", g, baseG))
	}
	if rss > rssLimit(baseRSS) {
		lk = append(lk, fmt.Sprintf("manager RSS %.1f MiB, baseline %.1f MiB (limit %.1f)", mib(rss), mib(baseRSS), mib(rssLimit(baseRSS))))
	}
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}

// goroutineSlack: goroutines come and go with the informers' watches and
// the metrics server's connections; a leak of one per call would show as
// hundreds.
const goroutineSlack = 10

// rssLimit: the Go runtime returns freed heap to the OS lazily, so RSS
// after a burst sits above the idle baseline even without a leak. Half the
// baseline again, at least 32 MiB, is "near"; a per-call leak of 50 KiB
// over 1000 calls would still pass it, which is what the goroutine and
// object checks are for.
func rssLimit(base int64) int64 { return base + max(base/2, 32<<20) }

// settle waits (up to 60 s) until the manager's goroutines and RSS are
// within the limits of the given baseline (or, for the baseline itself, for
// 5 s of quiet), and returns goroutines, RSS and heap in use.
func settle(t *testing.T, m *manager, baseG int, baseRSS int64) (int, int64, int64) {
	t.Helper()
	if baseG == 0 {
		time.Sleep(5 * time.Second)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		g := int(m.metric("go_goroutines"))
		heap := int64(m.metric("go_memstats_heap_inuse_bytes"))
		rss := m.rssBytes()
		if baseG == 0 || (g <= baseG+goroutineSlack && rss <= rssLimit(baseRSS)) || time.Now().After(deadline) {
			return g, rss, heap
		}
		time.Sleep(2 * time.Second)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// stoppedExits are the exit codes of testfn stopped with SIGTERM (then
// SIGKILL after the grace): 143 from its handler; 2 when SIGTERM came before
// the Go runtime had the handler installed (as PID 1 the kernel ignores the
// default action, and Go then exits 2); 137 if SIGKILL was needed.
var stoppedExits = []int32{143, 2, 137}

func submitLeakCall(t *testing.T, ns, node string, i int) *leakCall {
	t.Helper()
	c := &leakCall{name: fmt.Sprintf("l%04d", i), kind: pickKind()}
	w := calls.Local(c.name, ns, node)
	switch c.kind {
	case "success":
		out := fmt.Sprintf("ok %s %08x", c.name, rand.Uint32())
		w.Args("-stdout-text", out, "-sleep", randDur(0, 300*time.Millisecond).String())
		stdout := out + "\n"
		c.want = calls.Outcome{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Exit: ptr(int32(0)), Stdout: &stdout, Log: &stdout}
	case "error":
		code := int32(1 + rand.IntN(100))
		msg := fmt.Sprintf("failed %s", c.name)
		w.Args("-stderr-text", msg, "-exit", fmt.Sprint(code))
		stderr := msg + "\n"
		c.want = calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonError, Exit: ptr(code), Stderr: &stderr}
	case "oom":
		w.Args("-alloc-mib", "64").Memory("32Mi")
		c.want = calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonOOMKilled, Exit: ptr(int32(137))}
	case "timeout":
		w.Args("-sleep", "30s").Timeout(time.Second)
		c.want = calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonTimedOut, ExitIn: stoppedExits}
	case "cancel":
		w.Args("-sleep", "30s")
		c.want = calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonCancelled, ExitIn: stoppedExits}
	case "delete":
		w.Args("-sleep", "30s")
	}
	fc := create(t, w.Obj())
	c.uid = string(fc.UID)
	return c
}
