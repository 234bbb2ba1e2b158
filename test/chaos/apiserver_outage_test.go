package chaos

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv/calls"
)

// TestAPIServerOutage: the kube-apiserver is stopped for 30 s while 50
// calls run. The calls finish on the node meanwhile; their statuses are
// written once it is back, every one of them, once.
func TestAPIServerOutage(t *testing.T) {
	requireChaos(t)
	r := newRow(t, "3 kube-apiserver down 30s (50 calls)")
	const n = 50
	const outage = 30 * time.Second
	node := "chaos-api"
	m := startManager(t, node, "--max-calls", "60", "--default-timeout", "5m")
	ns := newNamespace(t, "api")
	o := observe(t, ns)

	names := make([]string, n)
	want := map[string]calls.Outcome{}
	for i := range names {
		names[i] = fmt.Sprintf("c%02d", i)
		// Long enough to all be running before the outage, short enough to
		// end during it.
		want[names[i]] = mixedCall(t, ns, node, names[i], randDur(25*time.Second, 40*time.Second), mixedExits[rand.IntN(len(mixedExits))])
	}
	r.Calls = n
	started := func() int {
		return o.count(names, func(fc *fnletv1.FunctionCall) bool { return isRunning(fc) || fc.IsFinished() })
	}
	if !o.waitUntil(90*time.Second, func() bool { return started() == n }) {
		t.Fatalf("only %d of %d calls running after 90s", started(), n)
	}

	running := o.count(names, isRunning)
	api := env.te.ControlPlane.APIServer
	port := api.SecureServing.Port
	stopping := time.Now()
	if err := api.Stop(); err != nil {
		// envtest SIGKILLs it after StopTimeout (open watches keep a graceful
		// stop waiting): down all the same, which the dial below checks.
		t.Logf("stop kube-apiserver: %v", err)
	}
	stopped := time.Now()
	down := stopping // it refuses new connections from SIGTERM on
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
		c.Close()
		t.Fatalf("kube-apiserver still listening on %s after Stop", port)
	}
	r.Faults++
	time.Sleep(outage - time.Since(down))
	if err := api.Start(); err != nil {
		t.Fatalf("start kube-apiserver again: %v", err)
	}
	up := time.Now()
	if api.SecureServing.Port != port {
		t.Fatalf("kube-apiserver came back on port %s, was %s", api.SecureServing.Port, port)
	}
	r.notef("kube-apiserver down %.1fs with %d calls running (SIGTERM, SIGKILL after %.1fs, started again on port %s with the same certificates)", up.Sub(down).Seconds(), running, stopped.Sub(stopping).Seconds(), port)

	missing := o.waitFinal(names, 3*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))

	var bad []string
	endedDuringOutage := 0
	var lastStatus time.Duration
	for _, name := range names {
		_, f, _ := o.get(name)
		if f == nil {
			continue
		}
		bad = append(bad, want[name].Check(f, m.logDir)...)
		if f.Status.FinishedAt != nil && f.Status.FinishedAt.Time.Before(up.Truncate(time.Second)) {
			endedDuringOutage++
		}
		lastStatus = max(lastStatus, o.finishedAt(name).Sub(up))
	}
	r.tally(t, o, names, bad)
	r.notef("%d of %d calls ended on the node during the outage (by their finishedAt); every final status was written within %.1fs of the apiserver's return", endedDuringOutage, n, lastStatus.Seconds())
	if endedDuringOutage == 0 {
		t.Errorf("no call ended during the outage: the test did not exercise it")
	}
	if m.Alive() {
		r.notef("the manager process stayed up through the outage")
	} else {
		t.Errorf("the manager exited during the apiserver outage")
	}

	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	lk := leaks(t, uidsOf(o, names), m.logDir)
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}
