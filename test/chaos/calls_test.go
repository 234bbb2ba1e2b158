package chaos

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv/calls"
)

// create submits a call, retrying while the apiserver is briefly away.
func create(t *testing.T, fc *fnletv1.FunctionCall) *fnletv1.FunctionCall {
	t.Helper()
	return env.calls.CreateRetrying(t, fc, 60*time.Second)
}

func ptr[T any](v T) *T { return &v }

// observer watches every call of a namespace (re-listing after any break,
// e.g. an apiserver outage) and records the first final status of each
// call and every later change of it: a call ends exactly once.
type observer struct {
	ns string

	mu        sync.Mutex
	latest    map[string]*fnletv1.FunctionCall
	final     map[string]*fnletv1.FunctionCall
	firstSeen map[string]time.Time // when the final status was first seen
	rewritten map[string][]string
	gone      map[string]bool
	relists   int
	// changed is closed (and replaced) whenever a call is recorded or
	// gone: waitFinal wakes on it.
	changed chan struct{}
}

// notify wakes the waiters; o.mu must be held.
func (o *observer) notify() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func observe(t *testing.T, ns string) *observer {
	o := &observer{ns: ns, latest: map[string]*fnletv1.FunctionCall{}, final: map[string]*fnletv1.FunctionCall{},
		firstSeen: map[string]time.Time{}, rewritten: map[string][]string{}, gone: map[string]bool{}, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return o
}

func (o *observer) run(ctx context.Context) {
	for ctx.Err() == nil {
		var list fnletv1.FunctionCallList
		if err := env.k8s.List(ctx, &list, client.InNamespace(o.ns)); err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		o.mu.Lock()
		o.relists++
		present := map[string]bool{}
		for i := range list.Items {
			present[list.Items[i].Name] = true
		}
		for name := range o.latest {
			if !present[name] {
				o.gone[name] = true
			}
		}
		o.notify()
		o.mu.Unlock()
		for i := range list.Items {
			o.record(&list.Items[i])
		}
		w, err := env.k8s.Watch(ctx, &fnletv1.FunctionCallList{}, client.InNamespace(o.ns),
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
		if err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
	events:
		for {
			select {
			case <-ctx.Done():
				break events
			case ev, ok := <-w.ResultChan():
				if !ok {
					break events
				}
				fc, isCall := ev.Object.(*fnletv1.FunctionCall)
				switch {
				case ev.Type == watch.Error || !isCall:
					break events
				case ev.Type == watch.Deleted:
					o.record(fc)
					o.mu.Lock()
					o.gone[fc.Name] = true
					o.notify()
					o.mu.Unlock()
				case ev.Type == watch.Added || ev.Type == watch.Modified:
					o.record(fc)
				}
			}
		}
		w.Stop()
	}
}

func (o *observer) record(fc *fnletv1.FunctionCall) {
	o.mu.Lock()
	defer o.mu.Unlock()
	defer o.notify()
	o.latest[fc.Name] = fc.DeepCopy()
	if !fc.IsFinished() {
		if f := o.final[fc.Name]; f != nil && f.UID == fc.UID {
			o.rewritten[fc.Name] = append(o.rewritten[fc.Name], fmt.Sprintf("final %s/%s went back to phase %q", f.Status.Phase, f.Status.Reason, fc.Status.Phase))
		}
		return
	}
	f := o.final[fc.Name]
	if f == nil || f.UID != fc.UID {
		o.final[fc.Name] = fc.DeepCopy()
		o.firstSeen[fc.Name] = time.Now()
		return
	}
	if d := outcomeDiff(f, fc); d != "" {
		o.rewritten[fc.Name] = append(o.rewritten[fc.Name], d)
	}
}

// outcomeDiff says how a later final status differs from the first one.
func outcomeDiff(a, b *fnletv1.FunctionCall) string {
	x, y := a.Status, b.Status
	ec := func(p *int32) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprint(*p)
	}
	if x.Phase != y.Phase || x.Reason != y.Reason || ec(x.ExitCode) != ec(y.ExitCode) || x.Stdout != y.Stdout ||
		x.Stderr != y.Stderr || x.Message != y.Message || !x.FinishedAt.Equal(y.FinishedAt) {
		return fmt.Sprintf("final status rewritten: %s/%s exit %s %q → %s/%s exit %s %q",
			x.Phase, x.Reason, ec(x.ExitCode), calls.Clip(x.Stdout), y.Phase, y.Reason, ec(y.ExitCode), calls.Clip(y.Stdout))
	}
	return ""
}

func (o *observer) get(name string) (latest, final *fnletv1.FunctionCall, gone bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.latest[name], o.final[name], o.gone[name]
}

func (o *observer) finishedAt(name string) time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.firstSeen[name]
}

// rewrites lists every call whose final status changed after it was set.
func (o *observer) rewrites() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for name, r := range o.rewritten {
		out = append(out, fmt.Sprintf("%s: %s", name, strings.Join(r, "; ")))
	}
	sort.Strings(out)
	return out
}

// waitFinal waits until every named call has a final status (or is gone,
// when goneOK) and returns those that never got one.
func (o *observer) waitFinal(names []string, timeout time.Duration, goneOK func(string) bool) []string {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		var missing []string
		o.mu.Lock()
		for _, n := range names {
			if o.final[n] != nil {
				continue
			}
			if o.gone[n] && goneOK != nil && goneOK(n) {
				continue
			}
			missing = append(missing, n)
		}
		changed := o.changed
		o.mu.Unlock()
		if len(missing) == 0 {
			return missing
		}
		select {
		case <-changed:
		case <-deadline.C:
			return missing
		}
	}
}

// count is how many of the named calls were last seen in a state pred
// accepts.
func (o *observer) count(names []string, pred func(*fnletv1.FunctionCall) bool) int {
	k := 0
	for _, name := range names {
		if l, _, _ := o.get(name); l != nil && pred(l) {
			k++
		}
	}
	return k
}

func isRunning(fc *fnletv1.FunctionCall) bool { return fc.Status.Phase == fnletv1.PhaseRunning }

// waitUntil waits until cond holds, re-checking it whenever the observer
// records a change; false after timeout.
func (o *observer) waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		changed := o.changed
		o.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return cond()
		}
	}
}

// describeMissing explains calls that never finished, for the failure log.
func (o *observer) describeMissing(names []string) []string {
	var out []string
	for _, n := range names {
		l, _, gone := o.get(n)
		switch {
		case l == nil:
			out = append(out, n+": never seen")
		case gone:
			out = append(out, fmt.Sprintf("%s: deleted while %s", n, l.Status.Phase))
		default:
			out = append(out, fmt.Sprintf("%s: phase %q reason %q msg %q attempts %d conds %v", n, l.Status.Phase, l.Status.Reason, l.Status.Message, l.Status.Attempts, condSummary(l)))
		}
	}
	return out
}

func condSummary(fc *fnletv1.FunctionCall) string {
	var parts []string
	for _, c := range fc.Status.Conditions {
		parts = append(parts, fmt.Sprintf("%s=%s(%s)", c.Type, c.Status, c.Reason))
	}
	return strings.Join(parts, ",")
}

// waitReleased waits until the calls have no finalizer (the manager removed
// their containers) or are gone, and returns those still held.
func (o *observer) waitReleased(names []string, timeout time.Duration) []string {
	held := func() []string {
		var out []string
		for _, n := range names {
			if l, _, gone := o.get(n); l != nil && !gone && len(l.Finalizers) > 0 {
				out = append(out, n)
			}
		}
		return out
	}
	o.waitUntil(timeout, func() bool { return len(held()) == 0 })
	return held()
}

// deleteAndWait deletes the namespace's calls and waits until every call
// the observer saw is gone.
func (o *observer) deleteAndWait(t *testing.T, timeout time.Duration) {
	t.Helper()
	if err := env.k8s.DeleteAllOf(context.Background(), &fnletv1.FunctionCall{}, client.InNamespace(o.ns)); err != nil {
		t.Errorf("delete calls of %s: %v", o.ns, err)
		return
	}
	left := func() int {
		o.mu.Lock()
		defer o.mu.Unlock()
		n := 0
		for name := range o.latest {
			if !o.gone[name] {
				n++
			}
		}
		return n
	}
	if !o.waitUntil(timeout, func() bool { return left() == 0 }) {
		t.Errorf("%d calls of %s still there %s after delete", left(), o.ns, timeout)
	}
}

func uidsOf(o *observer, names []string) []string {
	var out []string
	for _, n := range names {
		if l, _, _ := o.get(n); l != nil {
			out = append(out, string(l.UID))
		}
	}
	return out
}

// duplicates counts calls whose container containerd started more than
// once, and lists them.
func duplicates(o *observer, names []string) (int, []string) {
	n := 0
	var out []string
	for _, name := range names {
		l, _, _ := o.get(name)
		if l == nil {
			continue
		}
		if r := env.starts.runs(string(l.UID)); r > 1 {
			n += r - 1
			out = append(out, fmt.Sprintf("%s started %d times", name, r))
		}
	}
	return n, out
}

// startCount is how many of the calls containerd started at all.
func startCount(o *observer, names []string) int {
	n := 0
	for _, name := range names {
		if l, _, _ := o.get(name); l != nil && env.starts.runs(string(l.UID)) > 0 {
			n++
		}
	}
	return n
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// tally scores a row's calls: wrong statuses (bad, plus final statuses
// rewritten after they were final) and calls run more than once.
func (r *row) tally(t *testing.T, o *observer, names, bad []string) {
	t.Helper()
	rw := o.rewrites()
	r.Bad = len(bad) + len(rw)
	logList(t, "wrong statuses", bad)
	logList(t, "final statuses rewritten", rw)
	var dups []string
	r.Dups, dups = duplicates(o, names)
	logList(t, "calls run more than once (containerd /tasks/start)", dups)
}

func logList(t *testing.T, what string, items []string) {
	t.Helper()
	if len(items) == 0 {
		return
	}
	const show = 30
	total, more := len(items), ""
	if len(items) > show {
		more = fmt.Sprintf("\n  ... and %d more", len(items)-show)
		items = items[:show]
	}
	t.Errorf("%s (%d):\n  %s%s", what, total, strings.Join(items, "\n  "), more)
}
