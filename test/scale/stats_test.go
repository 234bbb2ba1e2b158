package main

import (
	"context"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/event"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(ds, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestSpread(t *testing.T) {
	maxv, mean := spread(map[string]int{"a": 6, "b": 2}, 4) // two idle nodes
	if maxv != 6 || mean != 2 {
		t.Errorf("spread = %d, %v; want 6, 2", maxv, mean)
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command with a space and a parenthesis; utime 250 and stime 50 ticks.
	stat := "1234 (kube (api) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 0 0"
	got, err := parseStatCPU(stat)
	if err != nil || got != 3*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Error("no error for a line without a command")
	}
}

func TestClassify(t *testing.T) {
	claim := &fnletv1.FunctionCall{}
	claim.Status.NodeName, claim.Status.Phase = "n1", fnletv1.PhasePending
	if classify(claim, "n1") != writeClaim {
		t.Error("a pending call bound to us is not a claim")
	}
	other := claim.DeepCopy()
	other.Status.Phase = fnletv1.PhaseSucceeded
	if classify(other, "n1") != writeOther {
		t.Error("a final write is a claim")
	}
	if classify(claim, "n2") != writeTakeover {
		t.Error("a write of another node's call is not a takeover")
	}
}

func TestHollowRuntime(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan event.GenericEvent, 4)
	var runs []string
	h := newHollowRuntime("n1", 10*time.Millisecond, events, ctx, 1)
	h.OnRun = func(uid, node string) { runs = append(runs, uid+"@"+node) }
	call := ctrd.Call{UID: "u1", Namespace: "ns", Name: "c1"}
	st, err := h.Run(ctx, call)
	if err != nil || st.Phase != ctrd.PhaseRunning {
		t.Fatalf("Run = %v, %v", st.Phase, err)
	}
	if _, err := h.Run(ctx, call); err != nil { // idempotent: no second start
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Object.GetName() != "c1" || ev.Object.GetNamespace() != "ns" {
			t.Errorf("event for %s/%s", ev.Object.GetNamespace(), ev.Object.GetName())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit event")
	}
	st, _ = h.State(ctx, "u1")
	if st.Phase != ctrd.PhaseExited || st.Result == nil || st.Result.ExitCode != 0 || st.Result.FinishedAt.Before(st.StartedAt) {
		t.Errorf("state after exit: %+v", st)
	}
	if len(runs) != 1 || runs[0] != "u1@n1" {
		t.Errorf("runs = %v, want one start", runs)
	}
	if err := h.Delete(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.State(ctx, "u1"); st.Phase != ctrd.PhaseUnknown {
		t.Errorf("phase after Delete = %s", st.Phase)
	}
	if err := h.Stop(ctx, "u1", time.Second); !ctrd.IsNotFound(err) {
		t.Errorf("Stop of a removed call = %v, want not found", err)
	}

	// Stop ends a running call with SIGTERM and wakes the reconciler.
	h.Mean = time.Hour
	if _, err := h.Run(ctx, ctrd.Call{UID: "u2", Namespace: "ns", Name: "c2"}); err != nil {
		t.Fatal(err)
	}
	if err := h.Stop(ctx, "u2", time.Second); err != nil {
		t.Fatal(err)
	}
	st, _ = h.State(ctx, "u2")
	if st.Phase != ctrd.PhaseExited || st.Result.ExitCode != 143 {
		t.Errorf("state after Stop: %+v", st)
	}
	<-events
}

func TestHollowRuntimeSample(t *testing.T) {
	h := newHollowRuntime("n1", 100*time.Millisecond, nil, context.Background(), 7)
	var sum time.Duration
	const n = 20000
	for range n {
		d := h.sample()
		if d < 0 || d > 2*time.Second {
			t.Fatalf("sample %v outside [0, 20×mean]", d)
		}
		sum += d
	}
	if mean := sum / n; mean < 90*time.Millisecond || mean > 110*time.Millisecond {
		t.Errorf("mean run time %v, want about 100ms", mean)
	}
}

// Uniformly random placement: near 1 with many calls per node, about 2
// with a few.
func TestUniformSpread(t *testing.T) {
	if got := uniformSpread(100*1000, 100, 5); got < 1 || got > 1.2 {
		t.Errorf("1000 calls per node: %.2f, want 1-1.2", got)
	}
	if got := uniformSpread(900, 100, 20); got < 1.6 || got > 2.6 {
		t.Errorf("9 calls per node: %.2f, want about 2", got)
	}
	if got := uniformSpread(0, 100, 5); got != 0 {
		t.Errorf("no calls: %.2f", got)
	}
}
