package ctrd

import (
	"context"
	"fmt"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// A Result is assembled once per call, when its exit is first seen, and
// kept on the handle: later reads return the same Result even after the
// task (and its cgroup) is gone. It has two sources: containerd for the
// exit status and usage while the stopped task exists (collect), or only
// what the node's disk kept when containerd discarded the task (lostResult).

// collect builds the Result of a stopped task: exit status from containerd
// (the truth, whatever the events said), usage and the OOM counter from the
// cgroup (still there until the task is deleted), output tails from disk.
func (r *Runtime) collect(ctx context.Context, h *callHandle, task client.Task, st client.Status) (*Result, error) {
	res, err := r.nodeResult(h)
	if err != nil {
		return nil, err
	}
	setExit(res, int32(st.ExitStatus))
	res.FinishedAt = st.ExitTime
	if m, err := r.metrics(ctx, task); err == nil {
		res.Usage = m.usage
		res.OOMKilled = m.oomKills > 0
	}
	res.OOMKilled = res.OOMKilled || r.sawOOM(h.id)
	return r.keepResult(h, res), nil
}

// lostResult is the Result of a call whose task containerd discarded after
// it exited: what the node still knows, the output files and markers, and
// the exit code fnlet-init recorded. Without that record (no init, or the
// call was SIGKILLed) the exit status is lost. Usage and the OOM counter
// went with the cgroup.
func (r *Runtime) lostResult(h *callHandle) (*Result, error) {
	res, err := r.nodeResult(h)
	if err != nil {
		return nil, err
	}
	if code, at, ok := r.dir(h.id).exitRecord(); ok {
		setExit(res, code)
		res.FinishedAt = at
		res.OOMKilled = r.sawOOM(h.id)
	} else {
		res.ExitStatusLost, res.ExitCode = true, -1
	}
	return r.keepResult(h, res), nil
}

// nodeResult is the part of a Result kept on this node's disk: start time,
// the markers the runtime wrote and the output tails.
func (r *Runtime) nodeResult(h *callHandle) (*Result, error) {
	d := r.dir(h.id)
	res := &Result{
		StartedAt:           d.startedAt(),
		OutputLimitExceeded: d.has(limitMarker),
		InputIncomplete:     d.has(inputMarker),
	}
	var err error
	if res.Stdout, res.Stderr, err = d.tails(r.tailBytes); err != nil {
		return nil, fmt.Errorf("result of %s: %w", h.id, err)
	}
	return res, nil
}

// keepResult retains the final Result on the handle and wakes waiters.
func (r *Runtime) keepResult(h *callHandle, res *Result) *Result {
	h.mu.Lock()
	h.result = res
	h.mu.Unlock()
	h.markExited()
	return res
}

// sawOOM reports whether a TaskOOM event was seen for container id.
func (r *Runtime) sawOOM(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.oom[id]
}

// setExit fills a Result's exit code and, for 128+n, the signal's name.
func setExit(res *Result, code int32) {
	res.ExitCode = code
	if code > 128 && code < 128+65 {
		res.Signal = unix.SignalName(syscall.Signal(code - 128))
	}
}
