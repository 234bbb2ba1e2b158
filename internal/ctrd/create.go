package ctrd

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Making a call's container and task. Run can always meet the remains of
// an earlier Run of the same call (a retry, or a manager that died in the
// middle): the container ID is derived from the call's UID, so what exists
// is found by ID and continued, never made twice. Two things can already
// exist when they are created:
//   - the container, or only its snapshot (createContainer);
//   - the task, created but never started (takeOverTask).
//
// They stay two steps: they are different objects, found by different
// calls, and a task's fate depends on the stdin mode.

// Run starts a call. It is idempotent: if a container for the call's UID
// already exists (a retry, or a manager restart) it attaches to it instead
// of making a second one. The image must have been made present with
// EnsureImage. Invalid calls fail with an error IsInvalidArgument accepts.
func (r *Runtime) Run(ctx context.Context, call Call) (State, error) {
	ctx = r.ctx(ctx)
	id := r.containerOf(call.UID)
	if h := r.handle(id); h != nil {
		return r.resume(ctx, h, call)
	}
	if id != ContainerID(call.UID) { // a pre-started container it claimed
		h, err := r.load(ctx, id)
		if err != nil {
			return State{}, err
		}
		return r.resume(ctx, h, call)
	}
	ref, err := NormalizeImageRef(call.Image)
	if err != nil {
		return State{}, errdefs.ErrInvalidArgument.WithMessage(err.Error())
	}
	ci, ok := r.images.get(ref)
	if !ok {
		if ci, err = r.localImage(ctx, ref); err != nil {
			// A container made before a restart may outlive its image.
			if h, lerr := r.load(ctx, id); lerr == nil {
				return r.resume(ctx, h, call)
			}
			return State{}, fmt.Errorf("run %s: image not ready: %w", id, err)
		}
	}
	p := Policy{AllowHostNetwork: r.policy.AllowHostNetwork,
		AllowPrivileged: r.policy.AllowPrivileged, OCIRuntime: r.runtime,
		InitBinary: r.initBinary, ExitFile: r.dir(id).file(exitFile), VolumeRoot: r.dir(id).volumeRoot()}
	if call.PodNetwork && r.net != nil {
		p.NetNS, p.ResolvConf = r.net.nsPath(id), r.net.resolvConf
	}
	opts, err := specOpts(call, ci.config, p)
	if err != nil {
		return State{}, fmt.Errorf("run %s: %w", id, err)
	}
	if p.NetNS != "" {
		if err := r.net.want(id); err != nil {
			return State{}, fmt.Errorf("run %s: %w", id, err)
		}
	}
	h, created, err := r.createContainer(ctx, id, callLabels(call), r.limitFor(call), ref, ci, opts)
	if p.NetNS != "" {
		r.net.made(id)
	}
	if err != nil {
		return State{}, err
	}
	if !created {
		return r.resume(ctx, h, call)
	}
	if err := r.startTask(ctx, h, call, false); err != nil {
		return State{}, err
	}
	d := r.dir(id)
	return State{Call: h.callRef(), ContainerID: id, Phase: PhaseRunning, StartedAt: d.startedAt(), LogDir: d.path, IP: r.ipOf(id)}, nil
}

func callLabels(call Call) map[string]string {
	return map[string]string{
		LabelManagedBy:     managedByValue,
		LabelCallUID:       call.UID,
		LabelCallNamespace: call.Namespace,
		LabelCallName:      call.Name,
	}
}

func (r *Runtime) limitFor(call Call) int64 {
	if call.OutputLimit > 0 {
		return call.OutputLimit
	}
	return r.outputLimit
}

// createContainer makes the call's container from image ref under the
// call's own lease, or returns the one an earlier Run made (created false). Creating first and
// loading on conflict saves a round trip on the common path, where the
// container is new.
func (r *Runtime) createContainer(ctx context.Context, id string, labels map[string]string, limit int64, ref string, ci cachedImage, opts []oci.SpecOpts) (h *callHandle, created bool, err error) {
	// The call's own lease, named after its container, instead of the
	// random one NewContainer would make and drop (same RPC count), so that
	// no lease outlives the call: Delete removes it with the container, and
	// a retried Run reuses it.
	leaseOpts := []leases.Opt{leases.WithID(id), leases.WithExpiration(24 * time.Hour)}
	if r.owner != "" {
		leaseOpts = append(leaseOpts, leases.WithLabel(LabelLeaseOwner, r.owner))
	}
	if _, err := r.client.LeasesService().Create(ctx, leaseOpts...); err != nil && !errdefs.IsAlreadyExists(err) {
		return nil, false, wrapErr(err, "create lease %s", id)
	}
	r.mu.Lock()
	r.leased[id] = true
	r.mu.Unlock()
	lctx := leases.WithLease(ctx, id)
	runcOpts := &options.Options{BinaryName: r.runtime}
	if labels[LabelPool] != "" {
		// A pre-start: its shim and runc yield the CPU (refill.go).
		runcOpts.ShimCgroup = r.refillCgroup
	}
	for attempt := 0; ; attempt++ {
		c, err := r.client.NewContainer(lctx, id,
			client.WithNewSnapshot(id, ci.img),
			client.WithNewSpec(opts...),
			client.WithContainerLabels(labels),
			client.WithRuntime("io.containerd.runc.v2", runcOpts),
		)
		if err == nil {
			h := newHandle(id, refFromLabels(labels), c, limit)
			if labels[LabelPool] != "" {
				h.warm = warmFromLabels(labels)
			}
			return r.putHandle(h), true, nil
		}
		if !errdefs.IsAlreadyExists(err) {
			// The image may have been removed behind our cache's back.
			r.images.forget(ref)
			_ = r.deleteLease(ctx, id)
			return nil, false, wrapErr(err, "create container %s", id)
		}
		h, lerr := r.load(ctx, id)
		if lerr == nil {
			return h, false, nil
		}
		if !IsNotFound(lerr) || attempt > 0 {
			return nil, false, lerr
		}
		// Only the snapshot exists (a crash between preparing it and
		// creating the container): drop it and create again.
		if rerr := r.client.SnapshotService(r.snapshot).Remove(ctx, id); rerr != nil && !errdefs.IsNotFound(rerr) {
			return nil, false, wrapErr(rerr, "remove stale snapshot %s", id)
		}
	}
}

// resume continues a call whose container already exists: it starts a task
// that was never created or started, otherwise reports its state.
func (r *Runtime) resume(ctx context.Context, h *callHandle, call Call) (State, error) {
	h.limit = r.limitFor(call)
	if h.warm != nil {
		return r.resumeWarm(ctx, h, call)
	}
	if task := h.getTask(); task == nil {
		if !r.dir(h.id).startedAt().IsZero() {
			if r.neverRan(h) {
				// Started, but the program never ran, and containerd,
				// restarted, discarded the dead task.
				return r.runAgain(ctx, h, call)
			}
			// It ran and its task is gone (see Result.ExitStatusLost): never
			// start it a second time.
			return r.state(ctx, h)
		}
		// Made by an earlier Run, which may have died in NewTask: containerd
		// may still be creating or cleaning up that task.
		if err := r.startTask(ctx, h, call, true); err != nil {
			return State{}, err
		}
	} else if st, err := task.Status(ctx); err == nil && st.Status == client.Created {
		if err := r.start(ctx, h); err != nil {
			return State{}, err
		}
	} else if err == nil && st.Status == client.Stopped && r.neverRan(h) {
		return r.runAgain(ctx, h, call)
	}
	return r.state(ctx, h)
}

// neverRan says whether the stopped (or, after a containerd restart,
// discarded) task of a call's own container never ran the program:
// fnlet-init marks its exit file first thing, and a task that ended
// without that mark died in runc's init, before the exec of fnlet-init.
// That happens when a Start is cut short inside "runc start" (the manager
// or containerd killed mid-RPC): runc's init gets "write exec fifo: broken
// pipe" (docs/runtime.md, "Interrupted starts").
func (r *Runtime) neverRan(h *callHandle) bool {
	d := r.dir(h.id)
	return r.initBinary != "" && h.warm == nil && !d.initBegan() && d.reruns() < maxReruns
}

// runAgain replaces a stopped task that never ran the program with a new
// one, under a fresh handle: the old one may hold that task's result
// already (a Watch resync collects it), and a Result is kept once. The
// program runs exactly once: the first task never started it.
func (r *Runtime) runAgain(ctx context.Context, h *callHandle, call Call) (State, error) {
	if task := h.getTask(); task != nil {
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			return State{}, wrapErr(err, "delete task %s that never ran", h.id)
		}
	}
	if err := r.dir(h.id).countRerun(); err != nil {
		return State{}, err
	}
	r.dropHandle(h.id)
	h, err := r.load(ctx, h.id)
	if err != nil {
		return State{}, err
	}
	h.limit = r.limitFor(call)
	if err := r.startTask(ctx, h, call, true); err != nil {
		return State{}, err
	}
	return r.state(ctx, h)
}

// startTask prepares the call's directory (its IO and the files of its
// volumes), creates the task and starts it.
func (r *Runtime) startTask(ctx context.Context, h *callHandle, call Call, resumed bool) error {
	input := call.Input
	d := r.dir(h.id)
	cfg, err := d.prepare(input, r.stdinMode, r.initBinary != "")
	if err != nil {
		return fmt.Errorf("run %s: %w", h.id, err)
	}
	if call.hasFiles() {
		uid, gid, err := volumeOwner(ctx, h)
		if err != nil {
			return fmt.Errorf("run %s: %w", h.id, err)
		}
		if err := d.writeVolumes(call.Volumes, uid, gid); err != nil {
			return fmt.Errorf("run %s: %w", h.id, err)
		}
	}
	var stdin io.WriteCloser
	if r.stdinMode == StdinFIFO && cfg.Stdin != "" {
		if stdin, err = openStdinFIFO(r.bg, cfg.Stdin); err != nil {
			return fmt.Errorf("run %s: %w", h.id, err)
		}
	}
	closeStdin := func() {
		if stdin != nil {
			stdin.Close()
		}
	}
	if r.net != nil && r.net.wanted(h.id) {
		if err := r.net.ensure(ctx, h.id); err != nil {
			closeStdin()
			return fmt.Errorf("run %s: pod network: %w", h.id, err)
		}
	}
	task, err := r.newTask(ctx, h, cfg, resumed)
	if errdefs.IsAlreadyExists(err) {
		task, err = r.takeOverTask(ctx, h, cfg, err)
	}
	if err != nil {
		closeStdin()
		return wrapErr(err, "create task %s", h.id)
	}
	h.setTask(task)
	if err := r.start(ctx, h); err != nil {
		closeStdin()
		return err
	}
	if stdin != nil {
		r.feedStdin(h, task, stdin, input)
	}
	return nil
}

// takeOverTask handles a create that found the task made already: an
// earlier NewTask whose answer was lost (containerd or the manager died
// mid-call) made it after all. Never started, it is ours to take over: in
// file mode its IO is the files just prepared again; a FIFO stdin was made
// anew, so that task goes and another is made. In any other case the
// create's error (cause) stands.
func (r *Runtime) takeOverTask(ctx context.Context, h *callHandle, cfg cio.Config, cause error) (client.Task, error) {
	old, err := h.container.Task(ctx, attachShimIO)
	if err != nil {
		return nil, cause
	}
	if st, err := old.Status(ctx); err != nil || st.Status != client.Created {
		return nil, cause
	}
	if r.stdinMode == StdinFile {
		return old, nil
	}
	if _, err := old.Delete(ctx, client.WithProcessKill); err != nil {
		return nil, cause
	}
	return h.container.NewTask(ctx, shimCreator(cfg))
}

// staleBundleWait bounds how long newTask waits for containerd to remove
// the bundle of an interrupted create. containerd's cleanup gives up after
// twice io.containerd.timeout.shim.cleanup (a delete, then a shutdown, to a
// shim that may never answer): 2×15 s with the 15 s fnlet asks nodes to set
// (docs/runtime.md, "Abandoned creates"), 2×5 s with containerd's default.
const staleBundleWait = 40 * time.Second

// newTask creates the call's task, retrying what an interrupted earlier
// create leaves in the way (docs/runtime.md, "Interrupted creates"):
//   - a bundle directory or OCI runtime state of the same ID
//     (isStaleBundle), which containerd's own cleanup removes: waited out,
//     bounded by staleBundleWait, then ErrStaleBundle;
//   - when resuming (resumed), any failure but AlreadyExists and
//     InvalidArgument, since that cleanup can also remove our new bundle.
//
// Every create is bounded by createTimeout. One that gets no answer is
// taken for a shim that never serves (docs/runtime.md, "Stuck shims"): the
// container moves to a shim of its own (moveShim) and the create is tried
// once more; a second timeout fails the Run.
func (r *Runtime) newTask(ctx context.Context, h *callHandle, cfg cio.Config, resumed bool) (client.Task, error) {
	deadline := time.Now().Add(staleBundleWait)
	moved := false
	for {
		tctx, cancel := context.WithTimeout(ctx, r.createTimeout)
		task, err := h.container.NewTask(tctx, shimCreator(cfg))
		timedOut := err != nil && tctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		cancel()
		if timedOut {
			r.createTimeouts.Add(1)
			if moved {
				return nil, fmt.Errorf("containerd did not create the task within %s, twice (the second time with a new shim): %w", r.createTimeout, err)
			}
			group, merr := r.moveShim(ctx, h)
			if merr != nil {
				return nil, fmt.Errorf("containerd did not create the task within %s: %w", r.createTimeout, merr)
			}
			log.G(ctx).WithField("id", h.id).WithField("group", group).
				Warnf("fnlet: task create got no answer within %s; retrying with a new shim", r.createTimeout)
			// containerd now cleans up the create given up on: its bundle
			// is in the way for a while, like after an interrupted create.
			moved, resumed = true, true
			deadline = time.Now().Add(staleBundleWait)
			continue
		}
		retry := err != nil && (isStaleBundle(err) || resumed && !errdefs.IsAlreadyExists(err) && !errdefs.IsInvalidArgument(err))
		if !retry {
			return task, err
		}
		if time.Now().After(deadline) {
			if isStaleBundle(err) {
				return nil, staleBundleError(err)
			}
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// staleBundleError gives up on a bundle containerd does not remove. The
// cause is kept as text (%v): as a wrapped error its gRPC status would
// replace ErrStaleBundle when wrapErr converts it.
func staleBundleError(cause error) error {
	return fmt.Errorf("%w (waited %s): %v", ErrStaleBundle, staleBundleWait, cause)
}

// isStaleBundle matches the two errors of a create that meets the remains
// of an earlier one: containerd's bundle directory ("mkdir …: file
// exists") or the OCI runtime's state of the half-made container.
func isStaleBundle(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "mkdir") && strings.Contains(msg, "file exists") ||
		strings.Contains(msg, "OCI runtime create failed") && strings.Contains(msg, "already exists")
}

// start starts the created task. The start marker is written before
// Start, whose answer can be lost after the process started (containerd
// dying mid-call): a task that then vanishes reads as started and reaped
// (see state), never as one to start again. A Start that fails for good
// ends in Delete, which removes the marker.
func (r *Runtime) start(ctx context.Context, h *callHandle) error {
	if err := r.dir(h.id).recordStart(time.Now()); err != nil {
		return fmt.Errorf("run %s: %w", h.id, err)
	}
	if err := h.getTask().Start(ctx); err != nil {
		return wrapErr(err, "start task %s", h.id)
	}
	return nil
}
