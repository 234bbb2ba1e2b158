package ctrd

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// callHandle is the retained state of one call's container (as moby's
// libcontainerd keeps its objects): no re-loading per operation. The
// Runtime holds one per container ID in its registry (r.calls) from the
// first Run, load or event until Delete.
type callHandle struct {
	id string
	// ref is the call; it changes once for a pre-started container, when a
	// call claims it (warm.go): read it with callRef.
	ref       CallRef
	container client.Container
	// limit is the call's output cap; a handle loaded without its Call (a
	// restarted manager) has the runtime's default until Run resumes it.
	limit int64

	mu        sync.Mutex
	task      client.Task
	exited    chan struct{} // closed once the task is seen stopped, or deleted
	exitOnce  sync.Once
	result    *Result // set once, when the exit is first collected
	killTimer *time.Timer
	// feeding is set while this process writes the call's FIFO stdin.
	feeding bool
	// warm is the profile of a pool's pre-started container, nil for a
	// call's own container; claimed is set once a call takes it.
	warm    *warmProfile
	claimed bool
}

func newHandle(id string, ref CallRef, c client.Container, limit int64) *callHandle {
	return &callHandle{id: id, ref: ref, container: c, limit: limit, exited: make(chan struct{})}
}

func (h *callHandle) callRef() CallRef {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ref
}

func (h *callHandle) markExited() {
	h.exitOnce.Do(func() {
		close(h.exited)
		h.mu.Lock()
		if h.killTimer != nil {
			h.killTimer.Stop()
		}
		h.mu.Unlock()
	})
}

func (h *callHandle) hasExited() bool {
	select {
	case <-h.exited:
		return true
	default:
		return false
	}
}

// isTask reports whether pid is the init process of the handle's task.
func (h *callHandle) isTask(pid uint32) bool {
	t := h.getTask()
	return t != nil && t.Pid() == pid
}

func (h *callHandle) getTask() client.Task {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.task
}

func (h *callHandle) setTask(t client.Task) {
	h.mu.Lock()
	h.task = t
	h.mu.Unlock()
}

func (h *callHandle) isFeeding() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.feeding
}

func refFromLabels(l map[string]string) CallRef {
	return CallRef{UID: l[LabelCallUID], Namespace: l[LabelCallNamespace], Name: l[LabelCallName]}
}

func (r *Runtime) handle(id string) *callHandle {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[id]
}

// putHandle registers h unless a handle for its container is registered
// already, and returns the registered one: there is never more than one
// handle per container.
func (r *Runtime) putHandle(h *callHandle) *callHandle {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.calls[h.id]; ok {
		return old
	}
	r.calls[h.id] = h
	return h
}

func (r *Runtime) dropHandle(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.calls, id)
	delete(r.oom, id)
}

// handles is a snapshot of the registry.
func (r *Runtime) handles() []*callHandle {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs := make([]*callHandle, 0, len(r.calls))
	for _, h := range r.calls {
		hs = append(hs, h)
	}
	return hs
}

// handleFor is the registered handle of a call, loaded from containerd if
// this process has none yet.
func (r *Runtime) handleFor(ctx context.Context, callUID string) (*callHandle, error) {
	id := r.containerOf(callUID)
	if h := r.handle(id); h != nil {
		return h, nil
	}
	return r.load(ctx, id)
}

// load retains an existing container and its task (if any). The shim owns
// the IO, so attaching opens nothing.
func (r *Runtime) load(ctx context.Context, id string) (*callHandle, error) {
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return nil, wrapErr(err, "load container %s", id)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		return nil, wrapErr(err, "labels of %s", id)
	}
	ref := refFromLabels(labels)
	if labels[LabelPool] != "" {
		ref = r.claimOf(id) // zero while no call claimed it
	}
	h := newHandle(id, ref, c, r.outputLimit)
	if labels[LabelPool] != "" {
		h.warm = warmFromLabels(labels)
	}
	task, err := c.Task(ctx, attachShimIO)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return nil, wrapErr(err, "load task %s", id)
	default:
		h.task = task
	}
	return r.putHandle(h), nil
}
