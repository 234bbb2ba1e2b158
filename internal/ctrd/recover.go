package ctrd

import (
	"context"
	"syscall"
)

var managedFilter = `labels."` + LabelManagedBy + `"==` + managedByValue

// Recover lists every call container this runtime's namespace holds,
// retains handles to them (re-attaching to running tasks; the shim owns
// their IO) and returns their states, exited ones with their Result. The
// caller decides which are orphans and Deletes them.
func (r *Runtime) Recover(ctx context.Context) ([]State, error) {
	ctx = r.ctx(ctx)
	cs, err := r.client.Containers(ctx, managedFilter)
	if err != nil {
		return nil, wrapErr(err, "list containers")
	}
	out := make([]State, 0, len(cs))
	for _, c := range cs {
		h := r.handle(c.ID())
		if h == nil {
			if h, err = r.load(ctx, c.ID()); err != nil {
				if IsNotFound(err) {
					continue
				}
				return nil, err
			}
		}
		s, err := r.state(ctx, h)
		if err != nil {
			if IsNotFound(err) {
				continue
			}
			return nil, err
		}
		if r.stdinMode == StdinFIFO && s.Phase == PhaseRunning && r.inputIncomplete(h) {
			// The program may have seen only part of its input and would exit
			// "successfully" on a truncated stream: kill it instead.
			_ = r.writeMarker(h.id, inputMarker, "")
			_ = r.Signal(ctx, h.ref.UID, syscall.SIGKILL)
		}
		out = append(out, s)
	}
	return out, nil
}

// containerIDs is the set of call containers that exist now.
func (r *Runtime) containerIDs(ctx context.Context) (map[string]bool, error) {
	cs, err := r.client.Containers(r.ctx(ctx), managedFilter)
	if err != nil {
		return nil, wrapErr(err, "list containers")
	}
	ids := make(map[string]bool, len(cs))
	for _, c := range cs {
		ids[c.ID()] = true
	}
	return ids, nil
}
