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
// cap, and sends EventOutputLimit once for every call this process killed
// for its output, whichever reader killed it.
func (r *Runtime) enforceOutputLimits(ctx context.Context, fn func(Event)) {
	for _, h := range r.handles() {
		r.enforceOutputLimit(ctx, h)
	}
	r.mu.Lock()
	killed := r.limitKills
	r.limitKills = nil
	r.mu.Unlock()
	for _, ref := range killed {
		fn(Event{Kind: EventOutputLimit, Call: ref})
	}
}

// enforceOutputLimit kills h's call if its output passed its cap and it was
// not killed for that already. The marker is written before the kill, so
// the reason survives a manager restart, and makes each call killed for its
// output only once.
func (r *Runtime) enforceOutputLimit(ctx context.Context, h *callHandle) {
	d := r.dir(h.id)
	if h.hasExited() || h.limit <= 0 || d.outputSize() <= h.limit || d.has(limitMarker) {
		return
	}
	if err := d.mark(limitMarker); err != nil {
		return
	}
	r.mu.Lock()
	if r.watching > 0 {
		r.limitKills = append(r.limitKills, h.callRef())
	}
	r.mu.Unlock()
	if err := r.signal(ctx, h, syscall.SIGKILL); err != nil {
		log.G(ctx).WithError(err).WithField("id", h.id).Warn("fnlet: kill over output limit")
	}
}
