package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv/calls"
)

// TestContainerdRestarts: containerd is SIGKILLed and restarted (same root
// and state) while calls run. Running tasks survive in their shims, the
// manager's event stream reconnects, exits that happened while containerd
// was down are found by the re-list, and every call ends once, correctly.
func TestContainerdRestarts(t *testing.T) {
	requireChaos(t)
	r := newRow(t, "2a containerd SIGKILL+restart (30 calls)")
	const n = 30
	node := "chaos-ctrd"
	m := startManager(t, node, "--max-calls", "40", "--default-timeout", "3m")
	ns := newNamespace(t, "ctrd")
	o := observe(t, ns)

	names := make([]string, n)
	want := map[string]calls.Outcome{}
	for i := range names {
		names[i] = fmt.Sprintf("c%02d", i)
		want[names[i]] = mixedCall(t, ns, node, names[i], randDur(time.Second, 9*time.Second), mixedExits[rand.IntN(len(mixedExits))])
	}
	r.Calls = n
	running := func() int { return o.count(names, isRunning) }
	o.waitUntil(60*time.Second, func() bool { return running() >= n/2 })
	before := m.metric("fnlet_event_stream_reconnects_total")

	var at []string
	for i := 0; i < 3; i++ {
		run := running()
		down := time.Now()
		killContainerd(t)
		r.Faults++
		time.Sleep(randDur(2*time.Second, 4*time.Second))
		startContainerd(t)
		at = append(at, fmt.Sprintf("down %.1fs with %d calls running", time.Since(down).Seconds(), run))
		time.Sleep(randDur(2*time.Second, 3*time.Second))
	}
	r.notef("containerd SIGKILLs: %s", strings.Join(at, "; "))

	missing := o.waitFinal(names, 2*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))

	var bad, lostExit []string
	for _, name := range names {
		_, f, _ := o.get(name)
		if f == nil {
			continue
		}
		w := want[name]
		if f.Status.Reason == fnletv1.ReasonRuntimeError && strings.Contains(f.Status.Message, "exit status lost") {
			// containerd reaped the task when it restarted (see the note):
			// the status must say so and still carry the output.
			lostExit = append(lostExit, name)
			p := fmt.Sprintf("%s/%s: exit status lost (want %s/%s exit %d)", ns, name, w.Phase, w.Reason, *w.Exit)
			alt := calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonRuntimeError, Stdout: w.Stdout, Stderr: w.Stderr, Log: w.Log}
			if more := alt.Check(f, m.logDir); len(more) > 0 {
				p += "; and " + more[0]
			}
			if f.Status.ExitCode != nil {
				p += fmt.Sprintf("; and an exit code %d where none is known", *f.Status.ExitCode)
			}
			bad = append(bad, p)
			continue
		}
		bad = append(bad, w.Check(f, m.logDir)...)
	}
	if len(lostExit) > 0 {
		r.notef("%d calls lost their exit status: containerd reaps, on restart, the shim of every task without processes (containerd#6860's cleanup), exit status included, and fnlet-init's record of it was missing (counted as wrong statuses)", len(lostExit))
	}
	r.tally(t, o, names, bad)

	after := m.metric("fnlet_event_stream_reconnects_total")
	r.notef("fnlet_event_stream_reconnects_total %v → %v", before, after)
	if after-before < float64(r.Faults) {
		t.Errorf("event stream reconnected %v times for %d containerd restarts", after-before, r.Faults)
	}

	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	lk := r.apartStuckShims(t, leaks(t, uidsOf(o, names), m.logDir), m.LogText())
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}

// TestContainerdDownPastTimeout: containerd stays down longer than the
// calls' timeout. Calls that were running when it went down are stopped
// once it is back (TimedOut); calls claimed while it is down, by a manager
// that itself restarted meanwhile (a node reboot), fail with RuntimeError
// at their deadline. Nothing hangs: all end within a bound after
// containerd returns.
func TestContainerdDownPastTimeout(t *testing.T) {
	requireChaos(t)
	r := newRow(t, "2b containerd down > call timeout")
	node := "chaos-ctrd-long"
	const timeout = 6 * time.Second
	m := startManager(t, node, "--max-calls", "20")
	ns := newNamespace(t, "ctrd-long")
	o := observe(t, ns)

	var running, during []string
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("running-%d", i)
		create(t, calls.Local(name, ns, node).Args("-stdout-text", "started "+name, "-sleep", "60s").Timeout(timeout).Obj())
		running = append(running, name)
	}
	nRunning := func() int { return o.count(running, isRunning) }
	if !o.waitUntil(60*time.Second, func() bool { return nRunning() == len(running) }) {
		t.Fatalf("only %d of %d calls running after 60s", nRunning(), len(running))
	}

	down := time.Now()
	killContainerd(t)
	r.Faults++
	// The node reboots, as it were: the manager restarts while containerd
	// is still down, with nothing cached.
	m.Kill9()
	r.Faults++
	m.Restart()
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("during-%d", i)
		create(t, calls.Local(name, ns, node).Args("-stdout-text", "never", "-sleep", "1s").Timeout(timeout).Obj())
		during = append(during, name)
	}
	time.Sleep(2*timeout + 3*time.Second)
	startContainerd(t)
	up := time.Now()
	names := append(append([]string{}, running...), during...)
	r.Calls = len(names)

	missing := o.waitFinal(names, 90*time.Second, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))
	var bad []string
	slowest := -time.Hour
	// Running calls: TimedOut if the manager stops them once containerd is
	// back, RuntimeError (containerd unavailable past the timeout) if it
	// gives up first; either way a final status that says why.
	reasons := map[string]int{}
	var msgs []string
	for _, name := range running {
		if _, f, _ := o.get(name); f != nil {
			reasons[string(f.Status.Reason)]++
			want := calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonTimedOut}
			if f.Status.Reason == fnletv1.ReasonRuntimeError {
				want = calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonRuntimeError, Message: "containerd was unavailable until the call's timeout"}
				msgs = append(msgs, f.Status.Message)
			}
			bad = append(bad, want.Check(f, "")...)
			slowest = max(slowest, o.finishedAt(name).Sub(up))
		}
	}
	for _, name := range during {
		if _, f, _ := o.get(name); f != nil {
			bad = append(bad, calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonRuntimeError, Message: "containerd was unavailable until the call's timeout"}.Check(f, "")...)
			slowest = max(slowest, o.finishedAt(name).Sub(up))
			if env.starts.runs(string(f.UID)) > 0 {
				bad = append(bad, name+": started after its deadline had passed")
			}
			msgs = append(msgs, f.Status.Message)
		}
	}
	r.tally(t, o, names, bad)
	r.notef("containerd down %.0fs (call timeout %s); the manager restarted meantime", up.Sub(down).Seconds(), timeout)
	r.notef("running calls ended %v; calls claimed while down → RuntimeError, never started; last final status %+.1fs from containerd's return", reasons, slowest.Seconds())
	if len(msgs) > 0 {
		r.notef("RuntimeError message: %q", msgs[0])
	}
	if slowest > 60*time.Second {
		t.Errorf("calls took %s after containerd returned to end", slowest)
	}
	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	lk := r.apartStuckShims(t, leaks(t, uidsOf(o, names), m.logDir), m.LogText())
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}
