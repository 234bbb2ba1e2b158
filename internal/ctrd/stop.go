package ctrd

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Signal sends sig to every process of the call.
func (r *Runtime) Signal(ctx context.Context, callUID string, sig syscall.Signal) error {
	ctx = r.ctx(ctx)
	h, err := r.handleFor(ctx, callUID)
	if err != nil {
		return err
	}
	return r.signal(ctx, h, sig)
}

func (r *Runtime) signal(ctx context.Context, h *callHandle, sig syscall.Signal) error {
	task := h.getTask()
	if task == nil {
		return fmt.Errorf("signal %s: no task: %w", h.id, errdefs.ErrNotFound)
	}
	if err := task.Kill(ctx, sig, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return wrapErr(err, "signal %s with %s", h.id, unix.SignalName(sig))
	}
	return nil
}

// Stop sends SIGTERM now and SIGKILL after grace unless the call exited by
// then. It does not block: the escalation timer belongs to the call's
// handle, there is at most one per handle, and the call's exit, Delete or
// Close cancels it.
func (r *Runtime) Stop(ctx context.Context, callUID string, grace time.Duration) error {
	if err := r.Signal(ctx, callUID, syscall.SIGTERM); err != nil {
		return err
	}
	h := r.handle(r.containerOf(callUID))
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.killTimer != nil {
		return nil
	}
	h.killTimer = time.AfterFunc(grace, func() {
		if h.hasExited() {
			return
		}
		kctx, cancel := context.WithTimeout(r.bg, 10*time.Second)
		defer cancel()
		_ = r.Signal(kctx, callUID, syscall.SIGKILL)
	})
	return nil
}
