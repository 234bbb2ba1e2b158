package ctrd

import (
	"context"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// State reports a call's state; for an exited call it includes the Result
// (collected once, while the task still exists, and retained). A running
// call whose output passed its cap is killed (see enforceOutputLimit).
func (r *Runtime) State(ctx context.Context, callUID string) (State, error) {
	ctx = r.ctx(ctx)
	id := r.containerOf(callUID)
	h := r.handle(id)
	if h == nil {
		var err error
		if h, err = r.load(ctx, id); errdefs.IsNotFound(err) {
			return State{Phase: PhaseUnknown, ContainerID: id, LogDir: r.dir(id).path}, nil
		} else if err != nil {
			return State{}, err
		}
	}
	return r.state(ctx, h)
}

func (r *Runtime) state(ctx context.Context, h *callHandle) (State, error) {
	d := r.dir(h.id)
	s := State{Call: h.callRef(), ContainerID: h.id, LogDir: d.path, StartedAt: d.startedAt(), IP: r.ipOf(h.id)}
	if h.warm != nil {
		s.Pool = h.warm.Pool
	}
	h.mu.Lock()
	res, task := h.result, h.task
	h.mu.Unlock()
	if res != nil {
		s.Phase, s.Result = PhaseExited, res
		return s, nil
	}
	var st client.Status
	var err error = errdefs.ErrNotFound
	if task != nil {
		st, err = task.Status(ctx)
	}
	if errdefs.IsNotFound(err) {
		if s.StartedAt.IsZero() || r.neverRan(h) {
			// Never started, or started but the program never ran (see
			// neverRan): Run resumes it.
			s.Phase = PhaseCreated
			return s, nil
		}
		// Started, and the task is gone without our Delete (which removes the
		// start marker with the task): containerd restarted after the
		// process ended and discarded the task, exit status included.
		res, err := r.lostResult(h)
		if err != nil {
			return State{}, err
		}
		s.Phase, s.Result = PhaseExited, res
		return s, nil
	}
	if err != nil {
		return State{}, wrapErr(err, "status of %s", h.id)
	}
	switch st.Status {
	case client.Stopped:
		if r.neverRan(h) {
			s.Phase = PhaseCreated // runc's init died before the program: Run starts it again
			return s, nil
		}
		res, err := r.collect(ctx, h, task, st)
		if err != nil {
			return State{}, err
		}
		s.Phase, s.Result = PhaseExited, res
	case client.Created:
		s.Phase = PhaseCreated
	default:
		s.Phase = PhaseRunning
		r.enforceOutputLimit(ctx, h)
	}
	return s, nil
}

// Wait blocks until the call exits (as reported by the event stream, which
// Watch must be running for) or ctx ends, and returns its final state.
func (r *Runtime) Wait(ctx context.Context, callUID string) (State, error) {
	s, err := r.State(ctx, callUID)
	if err != nil || s.Phase == PhaseExited || s.Phase == PhaseUnknown {
		return s, err
	}
	h := r.handle(s.ContainerID)
	if h == nil {
		return r.State(ctx, callUID)
	}
	select {
	case <-h.exited:
	case <-ctx.Done():
		return State{}, ctx.Err()
	}
	return r.State(ctx, callUID)
}
