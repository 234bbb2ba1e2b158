package controllers

import (
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// tracker is everything the reconciler remembers about a call between two
// reconciles, keyed by the call's UID. The API object is the record; the
// tracker only holds what the informer cache cannot show yet:
//
//   - obj/past: the object our latest write returned, and the
//     resourceVersions our writes moved the call away from. A cached copy
//     at one of those versions is older than obj, so the reconcile acts on
//     obj instead: no 409 for writing an old resourceVersion, and no
//     second claim or start from a phase we already left.
//   - a pending start: this process started attempt n at t and has not
//     written Running yet (see runningWriteDue).
//   - removed: this process removed the call's container, so cleaning up a
//     finished call needs no runtime round trip.
//   - waitingSince: when this process first saw the call unassigned and
//     ranked below first for it (its claim waits a stagger; see claim).
//
// Lifetime and bounds, in one place: an entry lives while the cache lags
// behind our writes, a start is pending or a claim waits. It goes when the cache shows our
// latest write (or something newer), when the call is gone, or when a new
// call takes the name. Beyond trackerLimit entries, those without a pending
// start are evicted first. Losing an entry is safe: every write still
// carries a resourceVersion (a stale view earns a conflict, not a wrong
// write), Run is idempotent per UID, and Delete of a removed container is a
// no-op. What it costs is a conflict, a recount of the attempt, or one
// runtime round trip.
type tracker struct {
	mu    sync.Mutex
	calls map[types.UID]*tracked
	byKey map[types.NamespacedName]types.UID
}

type tracked struct {
	key            types.NamespacedName
	obj            *fnletv1.FunctionCall // nil once the cache caught up
	past           []string
	startedAttempt int32 // > 0: a start not yet written as Running
	startedAt      time.Time
	removed        bool
	waitingSince   time.Time
}

// busy: the entry holds more than a view of our writes.
func (e *tracked) busy() bool { return e.startedAttempt > 0 || !e.waitingSince.IsZero() }

// trackerLimit bounds the entries. In steady state there is about one per
// call in flight on this node plus those whose last write the cache has not
// delivered, far below this.
const trackerLimit = 4096

func keyOf(fc *fnletv1.FunctionCall) types.NamespacedName {
	return types.NamespacedName{Namespace: fc.Namespace, Name: fc.Name}
}

// resolve picks the freshest view of the call named key: the cached copy fc
// (nil if the cache has none), or our own latest write when the cache still
// shows an older version.
func (t *tracker) resolve(key types.NamespacedName, fc *fnletv1.FunctionCall) *fnletv1.FunctionCall {
	t.mu.Lock()
	defer t.mu.Unlock()
	uid, ok := t.byKey[key]
	if !ok {
		return fc
	}
	e := t.calls[uid]
	switch {
	case fc == nil:
		// Gone, or between the unassigned cache and this node's (the add
		// event reconciles it again).
		if e.startedAttempt == 0 {
			t.dropLocked(uid)
		}
		return nil
	case fc.UID != uid:
		t.dropLocked(uid) // a new call of the same name
		return fc
	}
	if fc.Status.NodeName != "" {
		e.waitingSince = time.Time{} // claimed, by us or another node
	}
	if e.obj != nil && slices.Contains(e.past, fc.ResourceVersion) {
		return e.obj.DeepCopy()
	}
	// The cache has our write, or something newer than it.
	e.obj, e.past = nil, nil
	if !e.busy() {
		t.dropLocked(uid)
	}
	return fc
}

// wrote records a successful write that moved the call from resourceVersion
// before to fc (the object the write returned).
func (t *tracker) wrote(before string, fc *fnletv1.FunctionCall) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(fc)
	if before != "" && before != fc.ResourceVersion && !slices.Contains(e.past, before) {
		e.past = append(e.past, before)
	}
	e.obj = fc.DeepCopy()
}

// started records that this process started attempt n of the call at at.
func (t *tracker) started(fc *fnletv1.FunctionCall, n int32, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(fc)
	e.startedAttempt, e.startedAt = n, at
}

// pendingStart is the attempt this process started and has not written as
// Running (0: none), and when it started it.
func (t *tracker) pendingStart(fc *fnletv1.FunctionCall) (int32, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.calls[fc.UID]; e != nil {
		return e.startedAttempt, e.startedAt
	}
	return 0, time.Time{}
}

// clearStart forgets a pending start: it was written, or the attempt ended.
func (t *tracker) clearStart(fc *fnletv1.FunctionCall) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.calls[fc.UID]; e != nil {
		e.startedAttempt, e.startedAt = 0, time.Time{}
		if e.obj == nil && !e.busy() {
			t.dropLocked(fc.UID)
		}
	}
}

// waitingSince is when this process first asked to wait before claiming
// the call (now, the first time).
func (t *tracker) waitingSince(fc *fnletv1.FunctionCall, now time.Time) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(fc)
	if e.waitingSince.IsZero() {
		e.waitingSince = now
	}
	return e.waitingSince
}

// markRemoved records that this process removed the call's container.
func (t *tracker) markRemoved(fc *fnletv1.FunctionCall) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.calls[fc.UID]; e != nil {
		e.removed = true
	}
}

func (t *tracker) removed(fc *fnletv1.FunctionCall) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.calls[fc.UID]
	return e != nil && e.removed
}

// forget drops everything remembered about a call.
func (t *tracker) forget(fc *fnletv1.FunctionCall) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.calls[fc.UID]; ok {
		t.dropLocked(fc.UID)
	}
}

func (t *tracker) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.calls)
}

func (t *tracker) entryLocked(fc *fnletv1.FunctionCall) *tracked {
	if t.calls == nil {
		t.calls = map[types.UID]*tracked{}
		t.byKey = map[types.NamespacedName]types.UID{}
	}
	if e := t.calls[fc.UID]; e != nil {
		return e
	}
	key := keyOf(fc)
	if old, ok := t.byKey[key]; ok {
		t.dropLocked(old) // an earlier call of the same name
	}
	if len(t.calls) >= trackerLimit {
		t.evictLocked()
	}
	e := &tracked{key: key}
	t.calls[fc.UID] = e
	t.byKey[key] = fc.UID
	return e
}

func (t *tracker) dropLocked(uid types.UID) {
	if e := t.calls[uid]; e != nil {
		if t.byKey[e.key] == uid {
			delete(t.byKey, e.key)
		}
		delete(t.calls, uid)
	}
}

// evictLocked drops entries without a pending start down to 3/4 of the
// limit (see tracker for why that is safe; a lost claim wait only restarts
// the stagger).
func (t *tracker) evictLocked() {
	for uid, e := range t.calls {
		if e.startedAttempt == 0 {
			t.dropLocked(uid)
			if len(t.calls) < trackerLimit*3/4 {
				return
			}
		}
	}
}
