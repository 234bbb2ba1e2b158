package ctrd

import (
	"context"
	"strings"
	"syscall"
	"time"
)

var managedFilter = `labels."` + LabelManagedBy + `"==` + managedByValue

// List reports every call container in the runtime's namespace with its
// state, exited ones with their Result. It retains a handle to each
// (loading the ones this process has not seen yet, which re-attaches to
// running tasks: the shim owns their IO) and changes nothing else, so it can
// run periodically. The caller decides which are orphans and Deletes them.
func (r *Runtime) List(ctx context.Context) ([]State, error) {
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
		if h.warm != nil && h.callRef().UID == "" {
			continue // pre-started, no call yet: WarmContainers lists these
		}
		s, err := r.state(ctx, h)
		if err != nil {
			if IsNotFound(err) {
				continue
			}
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Recover is List for a runtime that has just started, run once before it
// serves: besides retaining every call it repairs what the previous process
// left unfinished (repairInputs). It returns List's states.
func (r *Runtime) Recover(ctx context.Context) ([]State, error) {
	states, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	r.repairInputs(ctx, states)
	if r.net != nil {
		ids, err := r.containerIDs(ctx)
		if err != nil {
			return nil, err
		}
		if err := r.sweepNetworks(r.ctx(ctx), ids); err != nil {
			return nil, err
		}
	}
	return states, nil
}

// repairInputs kills, in FIFO stdin mode, every running call whose input
// was never confirmed complete while no writer of this process feeds it:
// the program may have seen only part of its input and would exit
// "successfully" on a truncated stream. The input-lost marker, written
// first, gives the reason. Watch runs it too after each (re)subscribe: a
// containerd restart can cut a feed's CloseIO as a manager restart cuts
// the feed. It does nothing in file mode, where the input is complete
// before the task exists.
func (r *Runtime) repairInputs(ctx context.Context, states []State) {
	if r.stdinMode != StdinFIFO {
		return
	}
	for _, s := range states {
		h := r.handle(s.ContainerID)
		if s.Phase != PhaseRunning || h == nil || h.isFeeding() || !r.dir(h.id).inputUnconfirmed() {
			continue
		}
		_ = r.dir(h.id).mark(inputMarker)
		_ = r.signal(ctx, h, syscall.SIGKILL)
	}
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

// StrayLeases lists the calls (by UID) that hold a lease of this runtime's
// owner (WithOwner) but have no container, whose lease is older than minAge
// and not being created by this process: what a manager killed between
// creating a call's lease and its container leaves, with the snapshot the
// lease holds. The caller decides which calls are done with and Deletes
// them (Delete removes such a lease). Leases of other owners, which may
// share the namespace, are not this runtime's to judge.
func (r *Runtime) StrayLeases(ctx context.Context, minAge time.Duration) ([]string, error) {
	ctx = r.ctx(ctx)
	ls, err := r.client.LeasesService().List(ctx)
	if err != nil {
		return nil, wrapErr(err, "list leases")
	}
	ids, err := r.containerIDs(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range ls {
		if !strings.HasPrefix(l.ID, containerPrefix) || ids[l.ID] || time.Since(l.CreatedAt) < minAge || l.Labels[LabelLeaseOwner] != r.owner {
			continue
		}
		r.mu.Lock()
		inFlight := r.leased[l.ID]
		r.mu.Unlock()
		if !inFlight {
			out = append(out, strings.TrimPrefix(l.ID, containerPrefix))
		}
	}
	return out, nil
}
