package chaos

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

// mixedCall submits a call of the given length and exit code whose stdout
// and stderr are unique to it, and returns what its status must say.
func mixedCall(t *testing.T, ns, node, name string, sleep time.Duration, exit int32, extra ...string) calls.Outcome {
	t.Helper()
	return mixedCallOf(t, calls.Local(name, ns, node), sleep, exit, extra...)
}

// mixedCallOf is mixedCall for a call built by w (its name and namespace
// already set), for rows that need more of the spec.
func mixedCallOf(t *testing.T, w *utiltesting.FunctionCallWrapper, sleep time.Duration, exit int32, extra ...string) calls.Outcome {
	t.Helper()
	ns, name := w.Namespace, w.Name
	token := fmt.Sprintf("%s-%s-%08x", ns, name, rand.Uint32())
	args := append([]string{"-stdout-text", "out " + token, "-stderr-text", "err " + token,
		"-sleep", sleep.String(), "-exit", fmt.Sprint(exit)}, extra...)
	create(t, w.Args(args...).Obj())
	stdout, stderr := "out "+token+"\n", "err "+token+"\n"
	o := calls.Outcome{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Exit: ptr(exit),
		Stdout: &stdout, Stderr: &stderr, Log: &stdout}
	if exit != 0 {
		o.Phase, o.Reason = fnletv1.PhaseFailed, fnletv1.ReasonError
	}
	return o
}

var mixedExits = []int32{0, 0, 0, 1, 3, 42}

// TestManagerCrashes: 100 calls of 0.1-5 s with mixed exit codes while the
// manager is SIGKILLed at random moments (at least 5 times) and restarted.
// Every call must end exactly once: one container start in containerd's
// events, one final status that never changes, the right phase, reason,
// exit code, stdout/stderr tail and full log.
func TestManagerCrashes(t *testing.T) {
	requireChaos(t)
	r := newRow(t, "1 manager SIGKILL+restart (100 calls)")
	const n = 100
	node := "chaos-crash"
	m := startManager(t, node, "--max-calls", "12", "--default-timeout", "3m")
	ns := newNamespace(t, "crash")
	o := observe(t, ns)

	names := make([]string, n)
	want := map[string]calls.Outcome{}
	for i := range names {
		names[i] = fmt.Sprintf("c%03d", i)
		want[names[i]] = mixedCall(t, ns, node, names[i], randDur(100*time.Millisecond, 5*time.Second), mixedExits[rand.IntN(len(mixedExits))])
	}
	r.Calls = n

	// SIGKILL at random moments, at least 5 times and on while calls run.
	start := time.Now()
	var at []string
	for r.Faults < 5 || (len(o.waitFinal(names, 0, nil)) > 0 && r.Faults < 10) {
		time.Sleep(randDur(500*time.Millisecond, 2500*time.Millisecond))
		left := len(o.waitFinal(names, 0, nil))
		m.Kill9()
		r.Faults++
		at = append(at, fmt.Sprintf("%.1fs (%d unfinished)", time.Since(start).Seconds(), left))
		time.Sleep(randDur(0, time.Second))
		m.Restart()
	}
	r.notef("SIGKILLs at %s", strings.Join(at, ", "))

	missing := o.waitFinal(names, 3*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))
	r.notef("all calls final %.1fs after the first was submitted", time.Since(start).Seconds())
	// A SIGKILL during containerd's "shim start" can leave a shim that
	// never serves (docs/runtime.md, "Stuck shims"): how often the runtime
	// went around one.
	r.notef("task creates that got no answer and were retried with a new shim: %d",
		strings.Count(m.LogText(), "retrying with a new shim"))

	var bad []string
	for _, name := range names {
		if _, f, _ := o.get(name); f != nil {
			bad = append(bad, want[name].Check(f, m.logDir)...)
		}
	}
	r.tally(t, o, names, bad)
	if started := startCount(o, names); started != n-len(missing) {
		t.Errorf("containerd saw %d of %d calls start", started, n)
	}

	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	lk := r.apartStuckShims(t, leaks(t, uidsOf(o, names), m.logDir), m.LogText())
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}

// apartStuckShims returns the leaks lk without the shim daemons of
// "Stuck shims" (stuckShim), which it lists on the row instead: a kill
// (of the manager, or of containerd) inside containerd's "shim start"
// leaves the daemon blocked for ever on its log FIFO, whose reader
// containerd closed, and neither containerd nor the manager (no host PID
// namespace in the DaemonSet) can stop it (docs/runtime.md). It owns no
// container and runs nothing; the runtime went around it with a new shim.
// Only a daemon that is exactly that is set apart; any other shim is a
// leak. managerLog is the log of the manager(s) that ran the calls.
func (r *row) apartStuckShims(t *testing.T, lk []string, managerLog string) []string {
	t.Helper()
	retried := retriedCreates(managerLog)
	var out, stuck []string
	for _, l := range lk {
		if stuckShim(l, retried) {
			stuck = append(stuck, l)
		} else {
			out = append(out, l)
		}
	}
	if len(stuck) > 0 {
		r.notef("%d shim daemons stuck on their log FIFO after a kill in containerd's shim start (upstream; no container, no process; the call ran once on a new shim)", len(stuck))
		t.Logf("stuck shim daemons (not counted):\n  %s", strings.Join(stuck, "\n  "))
	}
	return out
}

// idField is the container ID field of the runtime's logrus text lines.
var idField = regexp.MustCompile(`(?:^|\s)id="?([^\s"]+)`)

// retriedCreates lists the containers whose create the runtime retried
// with a new shim, from the manager's log.
func retriedCreates(log string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(log, "\n") {
		if m := idField.FindStringSubmatch(line); m != nil && strings.Contains(line, "retrying with a new shim") {
			out[m[1]] = true
		}
	}
	return out
}

// stuckShim says whether a leak line is the shim daemon of "Stuck shims":
// the container's create was retried with a new shim (retried), the daemon
// runs nothing (no child process) and one of its threads waits in the
// kernel for the other end of a FIFO (wchan wait_for_partner).
func stuckShim(leak string, retried map[string]bool) bool {
	pid, id, ok := shimOfLeak(leak)
	if !ok || !retried[id] || testenv.HasChild(pid) {
		return false
	}
	return testenv.WaitsOnFIFO(pid)
}
