package ctrd

import (
	"context"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
)

// Delete kills whatever still runs of the call and removes its task,
// container and snapshot. The stdout/stderr files stay for the retention
// policy (PruneLogs); the input is removed at once. Deleting a call that
// does not exist is not an error.
func (r *Runtime) Delete(ctx context.Context, callUID string) error {
	ctx = r.ctx(ctx)
	id, own := r.containerOf(callUID), ContainerID(callUID)
	if err := r.deleteContainer(ctx, id); err != nil || id == own {
		return err
	}
	// It ran in a pre-started container, but may have begun cold: a Run
	// cut short by containerd dying leaves the call's own lease (and the
	// snapshot it holds) with no container, and the retry found the pool.
	// That lease goes with the call, not two minutes later with the stray
	// ones (chaos row 1p counted it as a leak). Off the critical path.
	return r.deleteLease(ctx, own)
}

// deleteContainer is Delete of container id, a call's or a pool's.
func (r *Runtime) deleteContainer(ctx context.Context, id string) error {
	d := r.dir(id)
	h := r.handle(id)
	var err error
	if h == nil {
		h, err = r.load(ctx, id)
	}
	if errdefs.IsNotFound(err) {
		// No container, but maybe its lease (and the snapshot it holds): a
		// Run cut short between the two, by containerd dying or by a
		// manager killed (see StrayLeases).
		if err := r.deleteLease(ctx, id); err != nil {
			return err
		}
		if err := r.teardownNetwork(ctx, id); err != nil {
			return err
		}
		r.dropHandle(id)
		_ = d.removeInput()
		return d.removeVolumes()
	}
	if err != nil {
		return err
	}
	taskGone := true
	if task := h.getTask(); task != nil {
		var opts []client.ProcessDeleteOpts
		h.mu.Lock()
		exited := h.result != nil
		h.mu.Unlock()
		if !exited {
			// Only a live task needs the kill; asking runc to kill an exited
			// one costs ~10 ms on the hot path.
			opts = append(opts, client.WithProcessKill)
		}
		_, err := task.Delete(ctx, opts...)
		if err != nil && !errdefs.IsNotFound(err) {
			return wrapErr(err, "delete task %s", id)
		}
		taskGone = err != nil
	}
	// The task is ours to delete no more: without the start marker, a task
	// found missing later reads as never started, not as discarded by
	// containerd (see state).
	if err := d.clearStart(); err != nil {
		return wrapErr(err, "delete %s", id)
	}
	if taskGone {
		// A task found missing may still have its shim: only a Delete
		// through the tasks service, which needs the container, stops it,
		// so it is asked for before the container goes (docs/runtime.md,
		// "Interrupted deletes").
		_, err := r.client.TaskService().Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		if err = native(err); err != nil && !errdefs.IsNotFound(err) {
			return wrapErr(err, "delete stale task %s", id)
		}
	}
	// The task is gone, the pinned namespace not: detach it now, while the
	// container still exists for a retried Delete to find.
	if err := r.teardownNetwork(ctx, id); err != nil {
		return err
	}
	// The lease before the container (which holds its snapshot by itself):
	// a crash in between leaves the container, which the next Delete finds.
	if err := r.deleteLease(ctx, id); err != nil {
		return err
	}
	if err := h.container.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return wrapErr(err, "delete container %s", id)
	}
	h.markExited()
	r.dropHandle(id)
	if err := d.removeInput(); err != nil {
		return wrapErr(err, "delete %s", id)
	}
	if err := d.removeVolumes(); err != nil {
		return wrapErr(err, "delete %s", id)
	}
	if h.warm != nil {
		return r.removeWarmDir(h)
	}
	return nil
}

// deleteLease removes the call's lease (see createContainer), if any.
func (r *Runtime) deleteLease(ctx context.Context, id string) error {
	if err := r.client.LeasesService().Delete(ctx, leases.Lease{ID: id}); err != nil && !errdefs.IsNotFound(err) {
		return wrapErr(err, "delete lease %s", id)
	}
	r.mu.Lock()
	delete(r.leased, id)
	r.mu.Unlock()
	return nil
}
