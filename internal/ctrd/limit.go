package ctrd

import (
	"context"
	"syscall"

	"github.com/containerd/log"
)

// The output cap. The shim writes a call's output files, so the cap can only
// be checked from outside, by their size: Watch polls every running call
// (WithOutputPollInterval), and every State of a running call checks it, so
// a caller that does not run Watch gets the cap too.

// enforceOutputLimits kills the running calls whose output passed their
// cap and sends EventOutputLimit for each.
func (r *Runtime) enforceOutputLimits(ctx context.Context, fn func(Event)) {
	for _, h := range r.handles() {
		if r.enforceOutputLimit(ctx, h) {
			fn(Event{Kind: EventOutputLimit, Call: h.ref})
		}
	}
}

// enforceOutputLimit kills h's call if its output passed its cap and it was
// not killed for that already, and reports whether it did so now. The
// marker is written before the kill, so the reason survives a manager
// restart, and only once, so each call is killed for its output only once.
func (r *Runtime) enforceOutputLimit(ctx context.Context, h *callHandle) bool {
	d := r.dir(h.id)
	if h.hasExited() || h.limit <= 0 || d.outputSize() <= h.limit || d.has(limitMarker) {
		return false
	}
	if err := d.mark(limitMarker); err != nil {
		return false
	}
	if err := r.Signal(ctx, h.ref.UID, syscall.SIGKILL); err != nil {
		log.G(ctx).WithError(err).WithField("id", h.id).Warn("fnlet: kill over output limit")
	}
	return true
}
