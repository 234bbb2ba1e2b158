package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/controllers"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// hollowRuntime is a hollow node's container runtime: no containers, only
// their lifecycle. A call runs for a sampled time (exponential, mean
// Mean, capped at 20×Mean), then exits 0 and, like the containerd event
// stream through controllers.RuntimeEvents, wakes the reconciler on the
// node's GenericEvent channel. Stop ends a running call with SIGTERM
// (exit 143) at once; Delete forgets it. Every first start of a call is
// reported to OnRun (the duplicate-run ledger).
type hollowRuntime struct {
	Node   string
	Mean   time.Duration
	Events chan<- event.GenericEvent
	// Life bounds the exit notifications: a stopped node sends none.
	Life  context.Context
	OnRun func(uid, node string)

	mu         sync.Mutex
	rnd        *rand.Rand
	containers map[string]*hollowCall
}

type hollowCall struct {
	st    ctrd.State
	timer *time.Timer
}

var _ controllers.Runtime = (*hollowRuntime)(nil)

func newHollowRuntime(node string, mean time.Duration, events chan<- event.GenericEvent, life context.Context, seed uint64) *hollowRuntime {
	return &hollowRuntime{Node: node, Mean: mean, Events: events, Life: life,
		rnd: rand.New(rand.NewPCG(seed, 0x5ca1e)), containers: map[string]*hollowCall{}}
}

// sample draws a call's run time.
func (h *hollowRuntime) sample() time.Duration {
	d := time.Duration(h.rnd.ExpFloat64() * float64(h.Mean))
	return min(d, 20*h.Mean)
}

func (h *hollowRuntime) EnsureImage(_ context.Context, ref string, _ ctrd.PullPolicy, _ ctrd.RegistryAuth) (ctrd.ImageInfo, error) {
	return ctrd.ImageInfo{Ref: ref, Digest: "sha256:hollow"}, nil
}

func (h *hollowRuntime) Run(_ context.Context, call ctrd.Call) (ctrd.State, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.containers[call.UID]; ok {
		return c.st, nil // idempotent, like the real Run
	}
	id := ctrd.ContainerID(call.UID)
	c := &hollowCall{st: ctrd.State{
		Call:        ctrd.CallRef{UID: call.UID, Namespace: call.Namespace, Name: call.Name},
		ContainerID: id, Phase: ctrd.PhaseRunning, StartedAt: time.Now(), LogDir: "/hollow/" + id,
	}}
	h.containers[call.UID] = c
	if h.OnRun != nil {
		h.OnRun(call.UID, h.Node)
	}
	c.timer = time.AfterFunc(h.sample(), func() { h.exit(call.UID, ctrd.Result{}) })
	return c.st, nil
}

// exit ends a running call with res and wakes the reconciler.
func (h *hollowRuntime) exit(uid string, res ctrd.Result) {
	h.mu.Lock()
	c, ok := h.containers[uid]
	if !ok || c.st.Phase != ctrd.PhaseRunning {
		h.mu.Unlock()
		return
	}
	res.StartedAt, res.FinishedAt = c.st.StartedAt, time.Now()
	c.st.Phase, c.st.Result = ctrd.PhaseExited, &res
	ref := c.st.Call
	h.mu.Unlock()
	obj := &fnletv1.FunctionCall{ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name}}
	go func() {
		select {
		case h.Events <- event.GenericEvent{Object: obj}:
		case <-h.Life.Done():
		}
	}()
}

func (h *hollowRuntime) State(_ context.Context, uid string) (ctrd.State, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.containers[uid]
	if !ok {
		id := ctrd.ContainerID(uid)
		return ctrd.State{Phase: ctrd.PhaseUnknown, ContainerID: id, LogDir: "/hollow/" + id}, nil
	}
	st := c.st
	if st.Result != nil {
		res := *st.Result
		st.Result = &res
	}
	return st, nil
}

func (h *hollowRuntime) Stop(_ context.Context, uid string, _ time.Duration) error {
	h.mu.Lock()
	c, ok := h.containers[uid]
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("signal %s: no task: %w", ctrd.ContainerID(uid), errdefs.ErrNotFound)
	}
	c.timer.Stop()
	h.exit(uid, ctrd.Result{ExitCode: 143, Signal: "SIGTERM"})
	return nil
}

func (h *hollowRuntime) Delete(_ context.Context, uid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.containers[uid]; ok {
		c.timer.Stop()
		delete(h.containers, uid)
	}
	return nil
}

// running is how many calls run on the node now.
func (h *hollowRuntime) running() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.containers {
		if c.st.Phase == ctrd.PhaseRunning {
			n++
		}
	}
	return n
}
