package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"k8s.io/utils/clock"

	"github.com/fnlet/fnlet/internal/ctrd"
)

// opLog is one ordered record of what the reconciler did, shared by the
// fake runtime and the fake API client, so tests can assert the order of a
// status write and a container removal.
type opLog struct {
	mu  sync.Mutex
	ops []string
}

func (l *opLog) add(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, fmt.Sprintf(format, args...))
}

func (l *opLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ops)
}

// fakeRuntime is an in-memory Runtime that behaves like *ctrd.Runtime as
// the reconciler sees it: EnsureImage makes an image present (or fails with
// an *ctrd.ImageError), Run creates a Running container for a call UID and
// is idempotent, State reports Unknown for a call without a container,
// Stop is SIGTERM (the fake process obeys it and exits 143), Delete removes
// the container and is a no-op when there is none. Exits are injected with
// exit, as the event stream would report them.
//
// Every call is recorded in order (calls) and, when log is set, in the
// shared opLog. Errors are configured per image ref (pulls) or per call UID.
type fakeRuntime struct {
	mu    sync.Mutex
	clock clock.PassiveClock
	log   *opLog

	// images are the refs on the node.
	images map[string]bool
	// pullErrs fail EnsureImage of a ref.
	pullErrs map[string]error
	// runErrs fail the next Runs of a call UID, one error per Run; a nil
	// entry lets that Run succeed.
	runErrs map[string][]error
	// stateErrs fail State of a call UID.
	stateErrs map[string]error
	// ignoreSIGTERM keeps a call running through Stop (until its kill).
	ignoreSIGTERM map[string]bool

	containers map[string]*ctrd.State
	calls      []string
	runs       []ctrd.Call
	auths      []ctrd.RegistryAuth
}

var _ Runtime = (*fakeRuntime)(nil)

func newFakeRuntime(clk clock.PassiveClock, log *opLog) *fakeRuntime {
	return &fakeRuntime{
		clock:         clk,
		log:           log,
		images:        map[string]bool{},
		pullErrs:      map[string]error{},
		runErrs:       map[string][]error{},
		stateErrs:     map[string]error{},
		ignoreSIGTERM: map[string]bool{},
		containers:    map[string]*ctrd.State{},
	}
}

func (f *fakeRuntime) record(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	f.calls = append(f.calls, s)
	f.log.add("runtime %s", s)
}

func (f *fakeRuntime) EnsureImage(_ context.Context, ref string, policy ctrd.PullPolicy, auth ctrd.RegistryAuth) (ctrd.ImageInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("EnsureImage %s %s", ref, policy)
	f.auths = append(f.auths, auth)
	if err := f.pullErrs[ref]; err != nil {
		return ctrd.ImageInfo{}, err
	}
	present := f.images[ref]
	if policy == ctrd.PullNever && !present {
		return ctrd.ImageInfo{}, &ctrd.ImageError{Ref: ref, Class: ctrd.PullNotFound,
			Err: fmt.Errorf("not present on the node and imagePullPolicy is Never: %w", errdefs.ErrNotFound)}
	}
	f.images[ref] = true
	pulled := !present || policy == ctrd.PullAlways
	return ctrd.ImageInfo{Ref: ref, Digest: "sha256:0123", Pulled: pulled}, nil
}

func (f *fakeRuntime) Run(_ context.Context, call ctrd.Call) (ctrd.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Run %s", call.UID)
	f.runs = append(f.runs, call)
	if errs := f.runErrs[call.UID]; len(errs) > 0 {
		f.runErrs[call.UID] = errs[1:]
		if err := errs[0]; err != nil {
			// Like the real Run, a failure after the container was created
			// (a task that would not start) leaves the container behind;
			// a spec the runtime rejects creates nothing.
			if _, ok := f.containers[call.UID]; !ok && !errdefs.IsInvalidArgument(err) {
				f.newContainer(call.UID, call.Namespace, call.Name, ctrd.PhaseCreated)
			}
			return ctrd.State{}, err
		}
	}
	if c, ok := f.containers[call.UID]; ok {
		// Like the real Run: attach to the existing container, and start
		// its task if it never started.
		if c.Phase == ctrd.PhaseCreated {
			c.Phase, c.StartedAt = ctrd.PhaseRunning, f.clock.Now()
		}
		return *c, nil
	}
	if !f.images[call.Image] {
		return ctrd.State{}, fmt.Errorf("run %s: image not ready: %w", ctrd.ContainerID(call.UID), errdefs.ErrNotFound)
	}
	c := f.newContainer(call.UID, call.Namespace, call.Name, ctrd.PhaseRunning)
	return *c, nil
}

func (f *fakeRuntime) newContainer(uid, ns, name string, phase ctrd.Phase) *ctrd.State {
	id := ctrd.ContainerID(uid)
	c := &ctrd.State{
		Call:        ctrd.CallRef{UID: uid, Namespace: ns, Name: name},
		ContainerID: id,
		Phase:       phase,
		LogDir:      "/var/lib/fnlet/io/" + id,
	}
	if phase == ctrd.PhaseRunning {
		c.StartedAt = f.clock.Now()
	}
	f.containers[uid] = c
	return c
}

func (f *fakeRuntime) State(_ context.Context, uid string) (ctrd.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("State %s", uid)
	if err := f.stateErrs[uid]; err != nil {
		return ctrd.State{}, err
	}
	c, ok := f.containers[uid]
	if !ok {
		id := ctrd.ContainerID(uid)
		return ctrd.State{Phase: ctrd.PhaseUnknown, ContainerID: id, LogDir: "/var/lib/fnlet/io/" + id}, nil
	}
	st := *c
	if st.Result != nil {
		res := *st.Result
		st.Result = &res
	}
	return st, nil
}

func (f *fakeRuntime) Stop(_ context.Context, uid string, grace time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Stop %s %s", uid, grace)
	c, ok := f.containers[uid]
	if !ok || c.Phase == ctrd.PhaseCreated {
		return fmt.Errorf("signal %s: no task: %w", ctrd.ContainerID(uid), errdefs.ErrNotFound)
	}
	if c.Phase == ctrd.PhaseRunning && !f.ignoreSIGTERM[uid] {
		f.exitLocked(uid, ctrd.Result{ExitCode: 143, Signal: "SIGTERM"})
	}
	return nil
}

func (f *fakeRuntime) Delete(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("Delete %s", uid)
	delete(f.containers, uid)
	return nil
}

// --- test controls ---

// withImages puts refs on the node, as if pulled earlier.
func (f *fakeRuntime) withImages(refs ...string) *fakeRuntime {
	for _, r := range refs {
		f.images[r] = true
	}
	return f
}

// running gives a call a running container started at startedAt, as an
// earlier reconcile would have.
func (f *fakeRuntime) running(uid, ns, name string, startedAt time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.newContainer(uid, ns, name, ctrd.PhaseRunning).StartedAt = startedAt
}

// created gives a call a container whose task never started (a crash
// between creating the container and starting its task).
func (f *fakeRuntime) created(uid, ns, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.newContainer(uid, ns, name, ctrd.PhaseCreated)
}

// exit ends the call's process with res. FinishedAt defaults to now.
func (f *fakeRuntime) exit(uid string, res ctrd.Result) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exitLocked(uid, res)
}

func (f *fakeRuntime) exitLocked(uid string, res ctrd.Result) {
	c, ok := f.containers[uid]
	if !ok {
		panic("fakeRuntime.exit: no container for " + uid)
	}
	if res.StartedAt.IsZero() {
		res.StartedAt = c.StartedAt
	}
	if res.FinishedAt.IsZero() {
		res.FinishedAt = f.clock.Now()
	}
	c.Phase, c.Result = ctrd.PhaseExited, &res
}

// vanish removes a call's container behind the reconciler's back.
func (f *fakeRuntime) vanish(uid string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, uid)
}

// has reports whether the call has a container.
func (f *fakeRuntime) has(uid string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.containers[uid]
	return ok
}

// phase is the runtime's phase of a call.
func (f *fakeRuntime) phase(uid string) ctrd.Phase {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[uid]; ok {
		return c.Phase
	}
	return ctrd.PhaseUnknown
}

// recorded returns the calls made so far, e.g. "Run uid-a", and forgets them.
func (f *fakeRuntime) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

// lastRun is the Call of the latest Run.
func (f *fakeRuntime) lastRun() (ctrd.Call, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.runs) == 0 {
		return ctrd.Call{}, false
	}
	return f.runs[len(f.runs)-1], true
}
