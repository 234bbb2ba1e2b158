package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	"github.com/fnlet/fnlet/internal/testenv/cninet"
)

// TestPodNetworkUnderFaults: calls with `network: pod` on a throwaway CNI
// bridge while the manager is SIGKILLed twice and containerd once, with
// calls running each time. Besides the suite's checks (every call ends
// once, correctly; no container, snapshot, lease or directory left), the
// network must be whole again: once every call is final the node holds
// only the namespaces attached ahead (--pod-network-pool), and after the
// manager's clean stop no address, veth, masquerade chain or pinned
// namespace at all. A SIGKILLed manager never tears down what it set up:
// its successor must, for calls that ended while it was away and for the
// namespaces it had attached ahead.
func TestPodNetworkUnderFaults(t *testing.T) {
	requireChaos(t)
	const waves, perWave, ahead = 4, 8, 2
	r := newRow(t, fmt.Sprintf("2p manager×2 + containerd SIGKILL, pod network (%d calls)", waves*perWave))
	cni := cninet.ForTest(t)
	node := "chaos-podnet"
	m := startManager(t, node, "--max-calls", "12", "--default-timeout", "3m",
		"--cni-conf-dir", cni.ConfDir, "--cni-bin-dir", strings.Join(cninet.BinDirs, ","),
		"--netns-dir", cni.NSDir, "--pod-network-pool", fmt.Sprint(ahead))
	ns := newNamespace(t, "podnet")
	o := observe(t, ns)

	faults := killFaults(t, m)
	var names []string
	want := map[string]calls.Outcome{}
	var at []string
	for w := range waves {
		var wave []string
		for i := range perWave {
			name := fmt.Sprintf("w%d-c%02d", w, i)
			wave = append(wave, name)
			want[name] = mixedCallOf(t, calls.Local(name, ns, node).Network(fnletv1.NetworkPod),
				randDur(200*time.Millisecond, 4*time.Second), mixedExits[rand.IntN(len(mixedExits))])
		}
		names = append(names, wave...)
		if w == len(faults) {
			break
		}
		// The fault lands while some of the wave's calls run.
		o.waitUntil(60*time.Second, func() bool { return o.count(wave, isRunning) > 0 })
		run := o.count(names, isRunning)
		faults[w].inject()
		r.Faults++
		at = append(at, fmt.Sprintf("%s with %d running", faults[w].name, run))
	}
	r.Calls = len(names)
	r.notef("faults: %s", strings.Join(at, "; "))

	missing := o.waitFinal(names, 3*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished", o.describeMissing(missing))
	var bad []string
	for _, name := range names {
		_, f, _ := o.get(name)
		if f == nil {
			continue
		}
		bad = append(bad, want[name].Check(f, m.logDir)...)
		if f.Status.PodIP == "" && f.Status.StartedAt != nil {
			bad = append(bad, fmt.Sprintf("%s/%s ran without status.podIP", ns, name))
		}
	}
	r.tally(t, o, names, bad)
	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	lk := r.apartStuckShims(t, leaks(t, uidsOf(o, names), m.logDir), m.LogText())

	// The network, counted: no event says a teardown or refill happened,
	// so this polls the bridge's own state.
	warm := cninet.Leaks{Addresses: ahead, Veths: ahead, Chains: ahead, Pins: ahead}
	testenv.Eventually(t, 30*time.Second, 200*time.Millisecond, "with every call final, only the namespaces attached ahead", func() error {
		got, err := cni.Count()
		if err == nil && got != warm {
			err = fmt.Errorf("%s (want %s)", got, warm)
		}
		return err
	})
	m.Stop()
	if got, err := cni.Count(); err != nil {
		t.Fatal(err)
	} else if !got.Zero() {
		lk = append(lk, fmt.Sprintf("after the manager's clean stop: %s", got))
	}
	r.Leak = len(lk)
	logList(t, "leaked", lk)
}
