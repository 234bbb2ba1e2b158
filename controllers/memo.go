package controllers

import (
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// callMemo is what this process knows about one call that its informer
// cache may not show yet.
type callMemo struct {
	uid types.UID
	// obj is the object our latest write returned (with its new
	// resourceVersion); nil once the cache has caught up with it.
	obj *fnletv1.FunctionCall
	// past are the resourceVersions our writes moved the call away from:
	// a cached copy at one of them is older than obj.
	past []string
	// startedAttempt > 0: this process started that attempt's container at
	// startedAt and has not written Running yet (see runningWriteDelay).
	startedAttempt int32
	startedAt      time.Time
}

// memos remembers, per call, the object of our own latest write, so a
// reconcile that runs before the watch delivered that write acts on what
// we wrote instead of a stale cached copy (whose resourceVersion would only
// earn a 409 conflict, and whose phase could start work twice).
//
// Entries go when the cache catches up, when the call is gone, or when
// another writer moved the call past our write; entries without a pending
// start are dropped first beyond memoLimit. Losing an entry only costs a
// conflict: the resourceVersion still guards every write.
type memos struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*callMemo
}

const memoLimit = 4096

// resolve picks the freshest view of a call: the cached copy fc, or our own
// write when the cache still shows an older version. fc may be nil.
func (ms *memos) resolve(key types.NamespacedName, fc *fnletv1.FunctionCall) *fnletv1.FunctionCall {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.m[key]
	switch {
	case m == nil:
		return fc
	case fc == nil:
		// Gone, or between the unassigned cache and this node's (the add
		// event will reconcile it again).
		if m.startedAttempt == 0 {
			delete(ms.m, key)
		}
		return nil
	case fc.UID != m.uid:
		delete(ms.m, key) // a new call of the same name
		return fc
	case m.obj == nil:
		return fc
	case slices.Contains(m.past, fc.ResourceVersion):
		return m.obj.DeepCopy()
	}
	// The cache has our write, or something newer than it.
	m.obj, m.past = nil, nil
	if m.startedAttempt == 0 {
		delete(ms.m, key)
	}
	return fc
}

func (ms *memos) entry(fc *fnletv1.FunctionCall) *callMemo {
	if ms.m == nil {
		ms.m = map[types.NamespacedName]*callMemo{}
	}
	key := types.NamespacedName{Namespace: fc.Namespace, Name: fc.Name}
	m := ms.m[key]
	if m == nil || m.uid != fc.UID {
		if len(ms.m) >= memoLimit {
			ms.evictLocked()
		}
		m = &callMemo{uid: fc.UID}
		ms.m[key] = m
	}
	return m
}

func (ms *memos) evictLocked() {
	for k, m := range ms.m {
		if m.startedAttempt == 0 {
			delete(ms.m, k)
			if len(ms.m) < memoLimit*3/4 {
				return
			}
		}
	}
}

// wrote records a successful write that moved the call from resourceVersion
// before to fc (the object the write returned).
func (ms *memos) wrote(before string, fc *fnletv1.FunctionCall) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.entry(fc)
	if before != "" && before != fc.ResourceVersion && !slices.Contains(m.past, before) {
		m.past = append(m.past, before)
	}
	m.obj = fc.DeepCopy()
}

// started records that this process started attempt n of the call at t.
func (ms *memos) started(fc *fnletv1.FunctionCall, n int32, t time.Time) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.entry(fc)
	m.startedAttempt, m.startedAt = n, t
}

// pendingStart is the attempt this process started and has not recorded
// as Running (0: none), and when it started it.
func (ms *memos) pendingStart(fc *fnletv1.FunctionCall) (int32, time.Time) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.m[types.NamespacedName{Namespace: fc.Namespace, Name: fc.Name}]
	if m == nil || m.uid != fc.UID {
		return 0, time.Time{}
	}
	return m.startedAttempt, m.startedAt
}

// clearStart forgets a pending start: it was recorded, or the attempt ended.
func (ms *memos) clearStart(fc *fnletv1.FunctionCall) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	key := types.NamespacedName{Namespace: fc.Namespace, Name: fc.Name}
	if m := ms.m[key]; m != nil && m.uid == fc.UID {
		m.startedAttempt, m.startedAt = 0, time.Time{}
		if m.obj == nil {
			delete(ms.m, key)
		}
	}
}

// forget drops everything remembered about a call.
func (ms *memos) forget(fc *fnletv1.FunctionCall) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	key := types.NamespacedName{Namespace: fc.Namespace, Name: fc.Name}
	if m := ms.m[key]; m != nil && m.uid == fc.UID {
		delete(ms.m, key)
	}
}

func (ms *memos) len() int {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return len(ms.m)
}
