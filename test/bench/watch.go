package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// tracker is one shared watch over the objects of this run (by label),
// dispatching each event to the waiter of its object: no polling, and one
// watch however many calls are in flight. It restarts the watch from the
// last resourceVersion it saw and re-lists if that is too old.
type tracker struct {
	c        client.WithWatch
	newList  func() client.ObjectList
	ns       string
	selector map[string]string
	// observe classifies an object: the marks it has reached (first-seen
	// times are recorded), whether it is done, or why it failed.
	observe func(client.Object) (marks []string, done bool, err error)
	// kind names the write that produced a MODIFIED event, given the
	// object before and after (for counting apiserver writes per call).
	kind func(before, after client.Object) string

	mu       sync.Mutex
	waiters  map[string]*waiter
	last     map[string]client.Object
	writes   map[string]int // kind -> events over the run
	objects  int            // distinct objects seen ADDED
	restarts int
}

type waiter struct {
	seen map[string]time.Time
	done chan error // receives once: nil (done) or the failure
	sent bool
}

func newTracker(c client.WithWatch, ns string, selector map[string]string, newList func() client.ObjectList,
	observe func(client.Object) ([]string, bool, error), kind func(before, after client.Object) string) *tracker {
	return &tracker{c: c, newList: newList, ns: ns, selector: selector, observe: observe, kind: kind,
		waiters: map[string]*waiter{}, last: map[string]client.Object{}, writes: map[string]int{}}
}

// register must come before the object is created, so no event is missed.
func (t *tracker) register(name string) *waiter {
	w := &waiter{seen: map[string]time.Time{}, done: make(chan error, 1)}
	t.mu.Lock()
	t.waiters[name] = w
	t.mu.Unlock()
	return w
}

func (t *tracker) unregister(name string) {
	t.mu.Lock()
	delete(t.waiters, name)
	t.mu.Unlock()
}

// seenAt returns a copy of the waiter's mark times (under the lock).
func (t *tracker) seenAt(w *waiter) map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]time.Time, len(w.seen))
	for k, v := range w.seen {
		out[k] = v
	}
	return out
}

// lastSeen is the last copy of the named object seen on the watch.
func (t *tracker) lastSeen(name string) (client.Object, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o, ok := t.last[name]
	return o, ok
}

// counts returns the write kinds seen so far, and the objects.
func (t *tracker) counts() (map[string]int, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int, len(t.writes))
	for k, v := range t.writes {
		out[k] = v
	}
	return out, t.objects
}

func (t *tracker) dispatch(typ watch.EventType, obj client.Object, at time.Time) {
	name := obj.GetName()
	t.mu.Lock()
	defer t.mu.Unlock()
	switch typ {
	case watch.Added:
		if _, ok := t.last[name]; !ok {
			t.objects++
			t.writes["create"]++
		}
	case watch.Modified:
		if before, ok := t.last[name]; ok && t.kind != nil {
			t.writes[t.kind(before, obj)]++
		} else {
			t.writes["modified (no earlier copy)"]++
		}
	case watch.Deleted:
		delete(t.last, name)
		return
	}
	t.last[name] = obj
	w := t.waiters[name]
	if w == nil || w.sent {
		return
	}
	marks, done, err := t.observe(obj)
	for _, m := range marks {
		if _, ok := w.seen[m]; !ok {
			w.seen[m] = at
		}
	}
	if err != nil || done {
		w.sent = true
		w.done <- err
	}
}

// run watches until ctx ends. ready is closed once the first watch is open.
func (t *tracker) run(ctx context.Context, ready chan<- struct{}) {
	rv := ""
	first := true
	for ctx.Err() == nil {
		if rv == "" {
			list := t.newList()
			if err := t.c.List(ctx, list, client.InNamespace(t.ns), client.MatchingLabels(t.selector)); err != nil {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			now := time.Now()
			items, _ := meta.ExtractList(list)
			for _, o := range items {
				if obj, ok := o.(client.Object); ok {
					t.dispatch(watch.Added, obj, now)
				}
			}
			rv = list.GetResourceVersion()
		}
		w, err := t.c.Watch(ctx, t.newList(), client.InNamespace(t.ns), client.MatchingLabels(t.selector),
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true}})
		if err != nil {
			if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				rv = ""
			}
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		if first {
			close(ready)
			first = false
		}
		rv = t.consume(ctx, w, rv)
		w.Stop()
		t.mu.Lock()
		t.restarts++
		t.mu.Unlock()
	}
}

// consume reads one watch until it ends; returns the resourceVersion to
// resume from ("" to re-list).
func (t *tracker) consume(ctx context.Context, w watch.Interface, rv string) string {
	for {
		select {
		case <-ctx.Done():
			return rv
		case ev, ok := <-w.ResultChan():
			if !ok {
				return rv
			}
			at := time.Now()
			switch ev.Type {
			case watch.Error:
				if st := apierrors.FromObject(ev.Object); apierrors.IsResourceExpired(st) || apierrors.IsGone(st) {
					return ""
				}
				return rv
			case watch.Bookmark:
				if o, ok := ev.Object.(client.Object); ok {
					rv = o.GetResourceVersion()
				}
			case watch.Added, watch.Modified, watch.Deleted:
				o, ok := ev.Object.(client.Object)
				if !ok {
					continue
				}
				rv = o.GetResourceVersion()
				t.dispatch(ev.Type, o, at)
			}
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// await waits for the waiter's verdict.
func await(ctx context.Context, w *waiter, what string) error {
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}
