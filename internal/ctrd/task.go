package ctrd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// callHandle is the retained state of one call's container (as moby's
// libcontainerd keeps its objects): no re-loading per operation.
type callHandle struct {
	id        string
	ref       CallRef
	container client.Container
	limit     int64

	mu        sync.Mutex
	task      client.Task
	exited    chan struct{} // closed once the task is seen stopped
	exitOnce  sync.Once
	result    *Result
	killTimer *time.Timer
	// feeding is set while this process writes the call's FIFO stdin.
	feeding bool
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

func refFromLabels(l map[string]string) CallRef {
	return CallRef{UID: l[LabelCallUID], Namespace: l[LabelCallNamespace], Name: l[LabelCallName]}
}

func (r *Runtime) handle(id string) *callHandle {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[id]
}

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

// Run starts a call. It is idempotent: if a container for the call's UID
// already exists (a retry, or a manager restart) it attaches to it instead
// of making a second one. The image must have been made present with
// EnsureImage. Invalid calls fail with errdefs.ErrInvalidArgument.
func (r *Runtime) Run(ctx context.Context, call Call) (State, error) {
	ctx = r.ctx(ctx)
	id := ContainerID(call.UID)
	if h := r.handle(id); h != nil {
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
	specOpts, err := SpecOpts(call, ci.config, Policy{AllowHostNetwork: r.policy.AllowHostNetwork,
		AllowPrivileged: r.policy.AllowPrivileged, OCIRuntime: r.runtime,
		InitBinary: r.initBinary, ExitFile: filepath.Join(r.callDir(id), exitFile)})
	if err != nil {
		return State{}, fmt.Errorf("run %s: %w", id, err)
	}
	labels := map[string]string{
		LabelManagedBy:     managedByValue,
		LabelCallUID:       call.UID,
		LabelCallNamespace: call.Namespace,
		LabelCallName:      call.Name,
	}
	// The call's own lease, named after its container, instead of the random
	// one NewContainer would make and drop (same RPC count): a manager killed
	// in between left that one behind for 24 h. Delete removes this one with
	// the container (a crash before the container exists leaves it to its
	// expiry only if the call then never runs: a retried Run reuses it).
	if _, err := r.client.LeasesService().Create(ctx, leases.WithID(id), leases.WithExpiration(24*time.Hour)); err != nil && !errdefs.IsAlreadyExists(err) {
		return State{}, wrapErr(err, "create lease %s", id)
	}
	r.mu.Lock()
	r.leased[id] = true
	r.mu.Unlock()
	lctx := leases.WithLease(ctx, id)
	newContainer := func() (client.Container, error) {
		return r.client.NewContainer(lctx, id,
			client.WithNewSnapshot(id, ci.img),
			client.WithNewSpec(specOpts...),
			client.WithContainerLabels(labels),
			client.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: r.runtime}),
		)
	}
	c, err := newContainer()
	if errdefs.IsAlreadyExists(err) {
		if _, lerr := r.client.LoadContainer(ctx, id); errdefs.IsNotFound(lerr) {
			// Only the snapshot exists: a crash between preparing it and
			// creating the container. Drop it and create again.
			if rerr := r.client.SnapshotService(r.snapshot).Remove(ctx, id); rerr != nil && !errdefs.IsNotFound(rerr) {
				return State{}, wrapErr(rerr, "remove stale snapshot %s", id)
			}
			c, err = newContainer()
		}
	}
	if errdefs.IsAlreadyExists(err) {
		// Made by an earlier Run (a retry, a restarted manager): attach to it.
		// Creating first and loading on conflict saves a round trip on the
		// common path, where the container is new.
		h, lerr := r.load(ctx, id)
		if lerr != nil {
			return State{}, lerr
		}
		return r.resume(ctx, h, call)
	}
	if err != nil {
		// The image may have been removed behind our cache's back.
		r.images.forget(ref)
		_ = r.deleteLease(ctx, id)
		return State{}, wrapErr(err, "create container %s", id)
	}
	h := r.putHandle(&callHandle{id: id, ref: refFromLabels(labels), container: c, limit: r.limitFor(call), exited: make(chan struct{})})
	if err := r.startTask(ctx, h, call.Input, false); err != nil {
		return State{}, err
	}
	return State{Call: h.ref, ContainerID: id, Phase: PhaseRunning, StartedAt: r.startedAt(id), LogDir: r.callDir(id)}, nil
}

func (r *Runtime) limitFor(call Call) int64 {
	if call.OutputLimit > 0 {
		return call.OutputLimit
	}
	return r.outputLimit
}

// resume continues a call whose container already exists: it starts a task
// that was never created or started, otherwise reports its state.
func (r *Runtime) resume(ctx context.Context, h *callHandle, call Call) (State, error) {
	h.limit = r.limitFor(call)
	if h.getTask() == nil {
		if !r.startedAt(h.id).IsZero() {
			// It ran and its task is gone (see Result.ExitStatusLost): never
			// start it a second time.
			return r.state(ctx, h)
		}
		// Made by an earlier Run, which may have died in NewTask: containerd
		// may still be creating or cleaning up that task.
		if err := r.startTask(ctx, h, call.Input, true); err != nil {
			return State{}, err
		}
	} else if st, err := h.task.Status(ctx); err == nil && st.Status == client.Created {
		if err := r.start(ctx, h); err != nil {
			return State{}, err
		}
	}
	return r.state(ctx, h)
}

func (r *Runtime) startTask(ctx context.Context, h *callHandle, input []byte, resumed bool) error {
	cfg, err := r.prepareIO(h.id, input)
	if err != nil {
		return fmt.Errorf("run %s: %w", h.id, err)
	}
	var stdin io.WriteCloser
	if r.stdinMode == StdinFIFO && cfg.Stdin != "" {
		w, err := openStdinFIFO(r.bg, cfg.Stdin)
		if err != nil {
			return fmt.Errorf("run %s: %w", h.id, err)
		}
		stdin = w
	}
	task, err := r.newTask(ctx, h, cfg, resumed)
	if errdefs.IsAlreadyExists(err) {
		// An earlier NewTask whose answer was lost (containerd or the manager
		// died mid-call) made the task after all. Never started, it is ours to
		// take over: in file mode its IO is the files just prepared again; a
		// FIFO stdin was made anew, so that task goes and another is made.
		if old, lerr := h.container.Task(ctx, attachShimIO); lerr == nil {
			if st, serr := old.Status(ctx); serr == nil && st.Status == client.Created {
				if r.stdinMode == StdinFile {
					task, err = old, nil
				} else if _, derr := old.Delete(ctx, client.WithProcessKill); derr == nil {
					task, err = h.container.NewTask(ctx, shimCreator(cfg))
				}
			}
		}
	}
	if err != nil {
		if stdin != nil {
			stdin.Close()
		}
		return wrapErr(err, "create task %s", h.id)
	}
	h.mu.Lock()
	h.task = task
	h.mu.Unlock()
	if err := r.start(ctx, h); err != nil {
		if stdin != nil {
			stdin.Close()
		}
		return err
	}
	if stdin != nil {
		h.mu.Lock()
		h.feeding = true
		h.mu.Unlock()
		r.feedStdin(h, task, stdin, input)
	}
	return nil
}

// staleBundleWait bounds how long newTask waits for containerd to remove
// the bundle of an interrupted create (its cleanup gives up after 2×5 s).
const staleBundleWait = 20 * time.Second

// newTask creates the call's task. When an earlier NewTask for the same ID
// was cut short (the manager killed mid-RPC), containerd goes on creating
// and then cleaning up in the background. Until that is done a new create
// fails on the bundle directory ("mkdir …: file exists"), or on the OCI
// runtime's state of the half-made container ("container with given ID
// already exists", which the failed create's own cleanup, a shim delete,
// removes). Both are waited out, bounded, instead of failing the call.
// When resuming a container an earlier Run made, which may have died in
// NewTask, any failure is retried the same way: that create's late cleanup
// can also remove the bundle of ours ("no such file or directory").
// A create that does not answer within createTimeout is most likely talking
// to a shim stuck before it ever served (see shim.go): the container moves
// to a shim of its own and the create is tried once more.
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
			killed := r.reapStuckShim(h.id)
			log.G(ctx).WithField("id", h.id).WithField("group", group).WithField("killed", killed).
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

// ErrStaleBundle: containerd kept the task directory of an earlier,
// interrupted create of the container. Its own cleanup can fail for good
// (seen: it unmounted the rootfs while runc was still setting it up, runc
// then made its mount points in the bare directory, and removing the rootfs
// failed with "directory not empty"); then no task of that container ID can
// be made until containerd restarts and cleans its state. The call fails
// with this reason instead of waiting.
var ErrStaleBundle = errors.New("containerd still holds the task directory of an earlier, interrupted create of this container; it removes it when it restarts")

// staleBundleError gives up on a bundle containerd does not remove. The
// cause is kept as text (%v): as a wrapped error its gRPC status would
// replace ErrStaleBundle when wrapErr converts it.
func staleBundleError(cause error) error {
	return fmt.Errorf("%w (waited %s): %v", ErrStaleBundle, staleBundleWait, cause)
}

func isStaleBundle(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "mkdir") && strings.Contains(msg, "file exists") ||
		strings.Contains(msg, "OCI runtime create failed") && strings.Contains(msg, "already exists")
}

func (r *Runtime) start(ctx context.Context, h *callHandle) error {
	// Written before Start, whose answer can be lost (containerd dying
	// mid-call) after the process started: a task that then vanishes reads
	// as started and reaped (see state), never as one to start again. A Start
	// that fails for good ends in Delete, which removes the marker.
	now := time.Now().UTC()
	if err := r.writeMarker(h.id, startedMarker, now.Format(time.RFC3339Nano)); err != nil {
		return fmt.Errorf("record start of %s: %w", h.id, err)
	}
	if err := h.task.Start(ctx); err != nil {
		return wrapErr(err, "start task %s", h.id)
	}
	return nil
}

// feedStdin writes the input into the FIFO, closes it and tells the shim
// (CloseIO), then records that the input is complete. The goroutine ends
// when the write ends: done, the program exited (EPIPE), or Close.
func (r *Runtime) feedStdin(h *callHandle, task client.Task, w io.WriteCloser, input []byte) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { h.mu.Lock(); h.feeding = false; h.mu.Unlock() }()
		_, werr := w.Write(input)
		w.Close()
		if werr != nil {
			return
		}
		ctx := r.ctx(r.bg)
		if err := task.CloseIO(ctx, client.WithStdinCloser); err != nil && !errdefs.IsNotFound(err) {
			return
		}
		_ = r.writeMarker(h.id, stdinDone, "")
	}()
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
	h := &callHandle{id: id, ref: refFromLabels(labels), container: c, limit: r.outputLimit, exited: make(chan struct{})}
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

// State reports a call's state; for an exited call it includes the Result
// (collected once, while the task still exists, and retained).
func (r *Runtime) State(ctx context.Context, callUID string) (State, error) {
	ctx = r.ctx(ctx)
	id := ContainerID(callUID)
	h := r.handle(id)
	if h == nil {
		var err error
		if h, err = r.load(ctx, id); errdefs.IsNotFound(err) {
			return State{Phase: PhaseUnknown, ContainerID: id, LogDir: r.callDir(id)}, nil
		} else if err != nil {
			return State{}, err
		}
	}
	return r.state(ctx, h)
}

func (r *Runtime) state(ctx context.Context, h *callHandle) (State, error) {
	s := State{Call: h.ref, ContainerID: h.id, LogDir: r.callDir(h.id), StartedAt: r.startedAt(h.id)}
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
		if s.StartedAt.IsZero() {
			s.Phase = PhaseCreated // never started: Run resumes it
			return s, nil
		}
		// Started, and the task is gone without our Delete (which removes the
		// start marker with the task): containerd restarted after the
		// process ended and reaped the shim, exit status included.
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
		res, err := r.collect(ctx, h, task, st)
		if err != nil {
			return State{}, err
		}
		s.Phase, s.Result = PhaseExited, res
	case client.Created:
		s.Phase = PhaseCreated
	default:
		s.Phase = PhaseRunning
	}
	return s, nil
}

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
	r.mu.Lock()
	res.OOMKilled = res.OOMKilled || r.oom[h.id]
	r.mu.Unlock()
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
	if code, at, ok := readExitFile(filepath.Join(r.callDir(h.id), exitFile)); ok {
		setExit(res, code)
		res.FinishedAt = at
		r.mu.Lock()
		res.OOMKilled = r.oom[h.id]
		r.mu.Unlock()
	} else {
		res.ExitStatusLost, res.ExitCode = true, -1
	}
	return r.keepResult(h, res), nil
}

// nodeResult is the part of a Result kept on this node's disk: start time,
// the markers the runtime wrote and the output tails.
func (r *Runtime) nodeResult(h *callHandle) (*Result, error) {
	res := &Result{
		StartedAt:           r.startedAt(h.id),
		OutputLimitExceeded: r.markerExists(h.id, limitMarker),
		InputIncomplete:     r.markerExists(h.id, inputMarker),
	}
	var err error
	if res.Stdout, err = readTail(filepath.Join(r.callDir(h.id), stdoutFile), r.tailBytes); err != nil {
		return nil, fmt.Errorf("read stdout of %s: %w", h.id, err)
	}
	if res.Stderr, err = readTail(filepath.Join(r.callDir(h.id), stderrFile), r.tailBytes); err != nil {
		return nil, fmt.Errorf("read stderr of %s: %w", h.id, err)
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

// Signal sends sig to every process of the call.
func (r *Runtime) Signal(ctx context.Context, callUID string, sig syscall.Signal) error {
	ctx = r.ctx(ctx)
	h, err := r.handleFor(ctx, callUID)
	if err != nil {
		return err
	}
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
// handle and is cancelled by its exit or Delete.
func (r *Runtime) Stop(ctx context.Context, callUID string, grace time.Duration) error {
	if err := r.Signal(ctx, callUID, syscall.SIGTERM); err != nil {
		return err
	}
	h := r.handle(ContainerID(callUID))
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.killTimer != nil {
		return nil
	}
	h.killTimer = time.AfterFunc(grace, func() {
		select {
		case <-h.exited:
			return
		default:
		}
		kctx, cancel := context.WithTimeout(r.bg, 10*time.Second)
		defer cancel()
		_ = r.Signal(kctx, callUID, syscall.SIGKILL)
	})
	return nil
}

func (r *Runtime) handleFor(ctx context.Context, callUID string) (*callHandle, error) {
	id := ContainerID(callUID)
	if h := r.handle(id); h != nil {
		return h, nil
	}
	return r.load(ctx, id)
}

// Delete kills whatever still runs of the call and removes its task,
// container and snapshot. The stdout/stderr files stay for the retention
// policy (PruneLogs); the input is removed at once. Deleting a call that
// does not exist is not an error.
func (r *Runtime) Delete(ctx context.Context, callUID string) error {
	ctx = r.ctx(ctx)
	id := ContainerID(callUID)
	h, err := r.handleFor(ctx, callUID)
	if errdefs.IsNotFound(err) {
		r.mu.Lock()
		leased := r.leased[id]
		r.mu.Unlock()
		if leased { // a Run whose container was never made, e.g. containerd died
			if err := r.deleteLease(ctx, id); err != nil {
				return err
			}
		}
		r.dropHandle(id)
		os.Remove(filepath.Join(r.callDir(id), stdinFile))
		return nil
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
	// found missing later reads as never started, not as reaped by
	// containerd (see state).
	if err := os.Remove(filepath.Join(r.callDir(id), startedMarker)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove start marker of %s: %w", id, err)
	}
	if taskGone {
		// A Delete cut short (containerd cancels it when the manager dies
		// mid-RPC) can leave the shim running after it deleted its task: the
		// task then reads as not found, and only a Delete through the tasks
		// service, which needs the container, stops that shim. Once the
		// container is gone the shim leaks for good.
		_, err := r.client.TaskService().Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		if err = native(err); err != nil && !errdefs.IsNotFound(err) {
			return wrapErr(err, "delete stale task %s", id)
		}
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
	if err := os.Remove(filepath.Join(r.callDir(id), stdinFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove input of %s: %w", id, err)
	}
	return nil
}

// deleteLease removes the call's lease (see Run), if any.
func (r *Runtime) deleteLease(ctx context.Context, id string) error {
	if err := r.client.LeasesService().Delete(ctx, leases.Lease{ID: id}); err != nil && !errdefs.IsNotFound(err) {
		return wrapErr(err, "delete lease %s", id)
	}
	r.mu.Lock()
	delete(r.leased, id)
	r.mu.Unlock()
	return nil
}
