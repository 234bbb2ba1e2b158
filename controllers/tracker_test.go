package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// statusWrites are the status writes in the op log, e.g. "status a Pending".
func (h *harness) statusWrites() []string {
	var out []string
	for _, op := range h.log.list() {
		if len(op) > 7 && op[:7] == "status " {
			out = append(out, op)
		}
	}
	return out
}

// The default: a started call's Running status waits RunningWriteDelay; a
// call that exits sooner is written once, with its start and its result.
func TestUnitReconcileDefersRunningWrite(t *testing.T) {
	delay := DefaultRunningWriteDelay
	start := func(t *testing.T, call *fnletv1.FunctionCall) *harness {
		t.Helper()
		h := newHarness(t, call)
		h.r.RunningWriteDelay = 0 // the default
		h.rt.withImages(image)
		checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: delay})
		checkRuntime(t, h.rt.recorded(), []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"})
		checkView(t, h.mustCall("a"), callView{Phase: fnletv1.PhasePending, NodeName: testNode,
			Conditions: claimedConds, Finalizers: finalizers})
		checkEvents(t, h.events(), nil)
		return h
	}
	t.Run("exits within the delay: one final write with the start in it", func(t *testing.T) {
		h := start(t, newCall("a").Obj())
		h.clock.SetTime(t0.Add(delay / 4))
		h.rt.exit("uid-a", ctrd.Result{ExitCode: 0, Stdout: ctrd.Tail{Data: []byte("hi")}})

		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		got := h.mustCall("a")
		checkView(t, got, finishedView(fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, 0, ""))
		if got.Status.StartedAt == nil || !got.Status.StartedAt.Time.Equal(t0) || got.Status.ContainerID != ctrd.ContainerID("uid-a") || got.Status.LogDir == "" {
			t.Errorf("start not recorded: startedAt %v containerID %q logDir %q", got.Status.StartedAt, got.Status.ContainerID, got.Status.LogDir)
		}
		if w := h.statusWrites(); !slices.Equal(w, []string{"status a Pending", "status a Succeeded"}) {
			t.Errorf("status writes %q, want the claim and the final one only", w)
		}
		checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Delete uid-a"})
		checkEvents(t, h.events(), nil)
		if n := h.r.calls.len(); n != 1 { // the final write, until the cache shows it
			t.Errorf("%d tracked calls, want 1", n)
		}
	})
	t.Run("a reconcile within the delay writes nothing and waits out the rest", func(t *testing.T) {
		h := start(t, newCall("a").Obj())
		h.clock.SetTime(t0.Add(delay / 4))
		checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: delay - delay/4})
		checkRuntime(t, h.rt.recorded(), []string{"State uid-a"})

		// Past the delay: Running is written, then the wait is for the deadline.
		h.clock.SetTime(t0.Add(delay))
		checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: defaultTimeout - delay})
		got := h.mustCall("a")
		checkView(t, got, callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1, Conditions: runningConds, Finalizers: finalizers})
		if got.Status.StartedAt == nil || !got.Status.StartedAt.Time.Equal(t0) {
			t.Errorf("startedAt = %v, want the real start %v", got.Status.StartedAt, t0)
		}
		if w := h.statusWrites(); !slices.Equal(w, []string{"status a Pending", "status a Running"}) {
			t.Errorf("status writes %q", w)
		}

		// And the exit of a call whose Running was written.
		h.clock.SetTime(t0.Add(time.Minute))
		h.rt.exit("uid-a", ctrd.Result{ExitCode: 3})
		h.rt.recorded()
		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		checkView(t, h.mustCall("a"), finishedView(fnletv1.PhaseFailed, fnletv1.ReasonError, 3, ""))
		checkEvents(t, h.events(), []string{"Warning Error exited with code 3"})
	})
	t.Run("cancelled within the delay: stopped without a Running write", func(t *testing.T) {
		h := start(t, newCall("a").Obj())
		fc := h.mustCall("a")
		fc.Spec.Cancel = true
		if err := h.client.Update(context.Background(), fc); err != nil {
			t.Fatal(err)
		}
		h.clock.SetTime(t0.Add(delay / 4))
		checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: killGrace + time.Second})
		checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Stop uid-a 5s"})

		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		got := h.mustCall("a")
		checkView(t, got, finishedView(fnletv1.PhaseFailed, fnletv1.ReasonCancelled, 143, "SIGTERM"))
		if w := h.statusWrites(); !slices.Equal(w, []string{"status a Pending", "status a Failed"}) {
			t.Errorf("status writes %q", w)
		}
	})
	t.Run("timeout shorter than the delay", func(t *testing.T) {
		h := newHarness(t, newCall("a").Timeout(delay/2).Obj())
		h.r.RunningWriteDelay = 0
		h.rt.withImages(image)
		checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: delay / 2})
		h.clock.SetTime(t0.Add(delay / 2))
		h.rt.recorded()
		checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: killGrace + time.Second})
		checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Stop uid-a 5s"})
		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		checkView(t, h.mustCall("a"), finishedView(fnletv1.PhaseFailed, fnletv1.ReasonTimedOut, 143, "SIGTERM"))
	})
	t.Run("container gone within the delay is a runtime error, not a second start", func(t *testing.T) {
		h := start(t, newCall("a").Obj())
		h.rt.vanish("uid-a")
		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Delete uid-a"})
		got := h.mustCall("a")
		if got.Status.Reason != fnletv1.ReasonRuntimeError || got.Status.Attempts != 1 {
			t.Errorf("reason %s attempts %d, want RuntimeError after 1 attempt", got.Status.Reason, got.Status.Attempts)
		}
		if h.r.calls.pendingStart(got); h.r.calls.len() > 1 {
			t.Errorf("tracked calls left: %d", h.r.calls.len())
		}
	})
}

// staleClient serves some calls from a frozen copy, as an informer cache
// that has not yet delivered the latest writes.
type staleClient struct {
	client.Client
	mu    sync.Mutex
	stale map[types.NamespacedName]*fnletv1.FunctionCall
}

func (c *staleClient) freeze(fc *fnletv1.FunctionCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stale == nil {
		c.stale = map[types.NamespacedName]*fnletv1.FunctionCall{}
	}
	c.stale[client.ObjectKeyFromObject(fc)] = fc.DeepCopy()
}

func (c *staleClient) thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stale = nil
}

func (c *staleClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.mu.Lock()
	s, ok := c.stale[key]
	c.mu.Unlock()
	if fc, isFC := obj.(*fnletv1.FunctionCall); ok && isFC {
		s.DeepCopyInto(fc)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// After our own writes, a reconcile reading a cache that has not caught up
// acts on the object the write returned: no 409, no second claim or start.
func TestUnitReconcileStaleCacheUsesOwnWrites(t *testing.T) {
	h := newHarness(t, newCall("a").Obj())
	h.rt.withImages(image)
	sc := &staleClient{Client: h.client}
	h.r.Client, h.r.Unassigned = sc, sc
	sc.freeze(h.mustCall("a")) // the cache still shows the unassigned call

	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: defaultTimeout})
	h.rt.recorded()
	h.clock.SetTime(t0.Add(time.Second))
	h.rt.exit("uid-a", ctrd.Result{ExitCode: 0})

	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Delete uid-a"})
	checkView(t, h.mustCall("a"), finishedView(fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, 0, ""))
	if w := h.statusWrites(); !slices.Equal(w, []string{"status a Pending", "status a Running", "status a Succeeded"}) {
		t.Errorf("status writes %q", w)
	}

	// Still stale: the finished call is not touched again, and its
	// container, removed by this process, is not looked for.
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	checkRuntime(t, h.rt.recorded(), nil)
	if n := len(h.statusWrites()); n != 3 {
		t.Errorf("%d status writes, want 3", n)
	}

	// The cache catches up: the entry goes.
	sc.thaw()
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	if n := h.r.calls.len(); n != 0 {
		t.Errorf("%d tracked calls after the cache caught up, want 0", n)
	}
}

// A cached copy newer than our write (someone else wrote after us) wins.
func TestUnitReconcileNewerCacheBeatsOwnWrite(t *testing.T) {
	h := newHarness(t, newCall("a").Obj())
	h.rt.withImages(image)
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: defaultTimeout})
	h.rt.recorded()

	fc := h.mustCall("a")
	fc.Spec.Cancel = true
	if err := h.client.Update(context.Background(), fc); err != nil {
		t.Fatal(err)
	}
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: killGrace + time.Second})
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Stop uid-a 5s"})
}

func TestUnitTrackerBounded(t *testing.T) {
	var tr tracker
	for i := range trackerLimit + 10 {
		fc := newCall(fmt.Sprint("c", i)).Obj()
		fc.ResourceVersion = "2"
		tr.wrote("1", fc)
		if i == 0 {
			tr.started(fc, 1, t0)
		}
	}
	if n := tr.len(); n > trackerLimit {
		t.Errorf("%d tracked calls, want at most %d", n, trackerLimit)
	}
	if n, _ := tr.pendingStart(newCall("c0").Obj()); n != 1 {
		t.Error("a pending start was evicted")
	}
	if len(tr.byKey) != len(tr.calls) {
		t.Errorf("name index has %d entries for %d calls", len(tr.byKey), len(tr.calls))
	}
}

// A new call that takes a finished call's name starts with a clean entry.
func TestUnitTrackerNewCallSameName(t *testing.T) {
	var tr tracker
	old := newCall("a").Obj()
	old.UID, old.ResourceVersion = "uid-old", "2"
	tr.wrote("1", old)
	tr.markRemoved(old)

	fresh := newCall("a").Obj()
	fresh.UID, fresh.ResourceVersion = "uid-new", "5"
	if got := tr.resolve(keyOf(fresh), fresh); got.UID != "uid-new" {
		t.Errorf("resolve gave %s, want the new call", got.UID)
	}
	if tr.removed(fresh) || tr.len() != 0 {
		t.Errorf("old entry leaked into the new call: removed %v, %d entries", tr.removed(fresh), tr.len())
	}
}
