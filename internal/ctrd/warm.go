package ctrd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Warm starts. A pool's pre-started container (Prestart) is made and
// started like a call's, with fnlet-init as its only process, waiting
// (cmd/fnlet-init, warm mode). A call that fits it (RunWarm) is written to
// the container's directory and released with one byte on a FIFO: no shim,
// no runc, no snapshot, and no containerd RPC unless the call's limits are
// tighter than the pool's (one Update). Each container runs one call and is
// then deleted like a cold call's; the pool makes another.
//
// The claim is durable on the node, in the order it is made:
//   - ctl/call, ctl/stdin: the call's program, env, working dir and input;
//   - claim: the call's ref (JSON) in the container's directory;
//   - <ioRoot>/fnlet-<call UID>: a symlink to the container's directory,
//     the claim itself (created exclusively). It also makes the call's
//     files readable under the call's own path (LogPaths);
//   - started-at, then the go byte.
//
// A manager that dies anywhere in between finds the call by its symlink
// (containerOf) and finishes the release (resumeWarm); a claim file
// without its symlink is no claim.

// LabelPool names the pool of a pre-started container; the other warm
// labels hold its profile (WarmSpec), so a restarted manager adopts it.
const (
	LabelPool        = "fnlet.dev/pool"
	labelWarmProfile = "fnlet.dev/warm-profile"

	warmPrefix = containerPrefix + "warm-"
	ctlDir     = "ctl"
	claimFile  = "claim"
	// Inside the container: ctlDir, read-only (see cmd/fnlet-init).
	initCtlPath = "/dev/.fnlet/ctl"
)

// WarmSpec is a pool's profile: what its containers are made with, and so
// what a call must share with one to use it. Limits are the class: a call
// fits when each of its limits is set and within the pool's (or both are
// unset); its own limits are applied when it claims the container.
type WarmSpec struct {
	Pool  string `json:"pool"`
	Image string `json:"image"`
	// User is the process user; nil takes the image's, as for a call.
	User           *User `json:"user,omitempty"`
	ReadOnlyRootfs bool  `json:"readOnlyRootfs,omitempty"`
	HostNetwork    bool  `json:"hostNetwork,omitempty"`
	PodNetwork     bool  `json:"podNetwork,omitempty"`
	MemoryBytes    int64 `json:"memoryBytes,omitempty"`
	MilliCPU       int64 `json:"milliCPU,omitempty"`
	Pids           int64 `json:"pids,omitempty"`
}

// WarmContainer is one pre-started container of a pool.
type WarmContainer struct {
	ID     string
	Pool   string
	Digest string // of the image it was made from
	// Ready: its init waits for a call. A container not ready (its task
	// gone, e.g. after a containerd restart) is to be deleted.
	Ready bool
}

// Miss reasons: why RunWarm found no container for a call.
const (
	MissNoPool  = "NoPool"  // no pre-started container of the call's image
	MissProfile = "Profile" // user, read-only rootfs or network differ
	MissLimits  = "Limits"  // the call's limits are outside every pool's class
	MissEmpty   = "Empty"   // a pool fits, but none of its containers is ready
	MissVolumes = "Volumes" // the call has volumes or scratch, which a pre-started container lacks
)

// warmProfile is a pre-started container's WarmSpec with what Prestart
// resolved: the image digest and the process user.
type warmProfile struct {
	WarmSpec
	Digest string `json:"digest"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
}

func warmFromLabels(l map[string]string) *warmProfile {
	w := &warmProfile{}
	if err := json.Unmarshal([]byte(l[labelWarmProfile]), w); err != nil {
		w = &warmProfile{Digest: "unreadable"} // fits no call; the pool replaces it
	}
	w.Pool = l[LabelPool]
	return w
}

// containerOf is the container of a call: a pre-started one it claimed
// (held in memory, or read from the claim's symlink after a restart), else
// the one named after its UID.
func (r *Runtime) containerOf(callUID string) string {
	id := ContainerID(callUID)
	if t, err := os.Readlink(r.dir(id).path); err == nil && strings.HasPrefix(t, warmPrefix) {
		return t
	}
	return id
}

// claimOf is the call that claimed pre-started container id, zero if none.
func (r *Runtime) claimOf(id string) CallRef {
	var ref CallRef
	b, err := os.ReadFile(r.dir(id).file(claimFile))
	if err != nil || json.Unmarshal(b, &ref) != nil || ref.UID == "" {
		return CallRef{}
	}
	if t, _ := os.Readlink(r.dir(ContainerID(ref.UID)).path); t != id {
		return CallRef{} // written, but the claim was never made
	}
	return ref
}

// Prestart makes and starts one pre-started container of spec's pool and
// returns its ID once its init waits for a call. The image must have been
// made present with EnsureImage.
func (r *Runtime) Prestart(ctx context.Context, spec WarmSpec) (string, error) {
	ctx = r.ctx(ctx)
	if r.initBinary == "" {
		return "", errdefs.ErrFailedPrecondition.WithMessage("pre-started containers need fnlet-init (WithInit)")
	}
	ref, err := NormalizeImageRef(spec.Image)
	if err != nil {
		return "", errdefs.ErrInvalidArgument.WithMessage(err.Error())
	}
	ci, err := r.image(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("prestart %s: image not ready: %w", spec.Pool, err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	id := warmPrefix + hex.EncodeToString(rnd[:])
	r.prestarting.Store(id, true)
	defer r.prestarting.Delete(id)
	d := r.dir(id)
	cfg, err := d.prepare(nil, StdinFile, true)
	if err == nil {
		err = d.prepareCtl()
	}
	if err != nil {
		return "", fmt.Errorf("prestart %s: %w", id, err)
	}
	self := Call{UID: strings.TrimPrefix(id, containerPrefix), Name: "fnlet-warm", Image: spec.Image,
		Command: []string{"--warm"}, User: spec.User, ReadOnlyRootfs: spec.ReadOnlyRootfs, HostNetwork: spec.HostNetwork,
		PodNetwork: spec.PodNetwork, MemoryBytes: spec.MemoryBytes, MilliCPU: spec.MilliCPU, Pids: spec.Pids}
	pol := Policy{AllowHostNetwork: r.policy.AllowHostNetwork,
		OCIRuntime: r.runtime, InitBinary: r.initBinary, ExitFile: d.file(exitFile)}
	if spec.PodNetwork && r.net != nil {
		// Its namespace is attached before the call comes: a pool of
		// pod-network containers is also a pool of ready namespaces.
		pol.NetNS, pol.ResolvConf = r.net.nsPath(id), r.net.resolvConf
	}
	opts, err := specOpts(self, ci.config, pol)
	if err == nil && pol.NetNS != "" {
		err = r.net.want(id)
	}
	if err != nil {
		os.RemoveAll(d.path)
		return "", fmt.Errorf("prestart %s: %w", spec.Pool, err)
	}
	opts = append(opts, withWarmCtl(d.file(ctlDir)))
	p := warmProfile{WarmSpec: spec, Digest: ci.img.Target().Digest.String()}
	if p.UID, p.GID, err = effectiveUser(ci.config.User, spec.User); err != nil {
		os.RemoveAll(d.path)
		return "", err
	}
	js, _ := json.Marshal(p)
	labels := map[string]string{
		LabelManagedBy:   managedByValue,
		LabelPool:        spec.Pool,
		labelWarmProfile: string(js),
	}
	h, _, err := r.createContainer(ctx, id, labels, r.outputLimit, ref, ci, opts)
	if pol.NetNS != "" {
		r.net.made(id)
	}
	if err != nil {
		os.RemoveAll(d.path)
		return "", err
	}
	fail := func(err error) (string, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = r.deleteContainer(dctx, id)
		return "", fmt.Errorf("prestart %s: %w", id, err)
	}
	if pol.NetNS != "" {
		if err := r.net.ensure(ctx, id); err != nil {
			return fail(fmt.Errorf("pod network: %w", err))
		}
	}
	task, err := r.newTask(ctx, h, cfg, false)
	if err != nil {
		return fail(wrapErr(err, "create task"))
	}
	h.setTask(task)
	if err := task.Start(ctx); err != nil {
		return fail(wrapErr(err, "start task"))
	}
	if err := d.awaitWaiting(ctx, h); err != nil {
		return fail(err)
	}
	return id, nil
}

// image is the cached image of ref, looked up in containerd if not cached.
func (r *Runtime) image(ctx context.Context, ref string) (cachedImage, error) {
	if ci, ok := r.images.get(ref); ok {
		return ci, nil
	}
	return r.localImage(ctx, ref)
}

// withWarmCtl gives a pre-started container its control directory.
func withWarmCtl(dir string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: initCtlPath, Type: "bind", Source: dir,
			Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		return nil
	}
}

// prepareCtl makes the control directory: the go FIFO, open to any user
// the container runs as (the mount is read-only; a FIFO opens for writing
// on a read-only mount).
func (d callDir) prepareCtl() error {
	ctl := d.file(ctlDir)
	os.RemoveAll(ctl)
	if err := os.Mkdir(ctl, 0o755); err != nil {
		return fmt.Errorf("create control dir: %w", err)
	}
	goFIFO := filepath.Join(ctl, "go")
	if err := syscall.Mkfifo(goFIFO, 0o666); err != nil {
		return fmt.Errorf("create go fifo: %w", err)
	}
	return os.Chmod(goFIFO, 0o666) // past the umask
}

// release writes the go byte if the init waits: an open for writing with
// O_NONBLOCK succeeds only while a reader holds the FIFO. It reports false
// when nobody waits (the init took the call already, or is gone).
func (d callDir) release() (bool, error) {
	f, err := os.OpenFile(filepath.Join(d.file(ctlDir), "go"), os.O_WRONLY|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("release: %w", err)
	}
	defer f.Close()
	if _, err := f.Write([]byte{'g'}); err != nil {
		return false, fmt.Errorf("release: %w", err)
	}
	return true, nil
}

// waiting reports whether the init holds the go FIFO, i.e. waits for a
// call. Opening for writing and closing without a write leaves it waiting.
func (d callDir) waiting() bool {
	f, err := os.OpenFile(filepath.Join(d.file(ctlDir), "go"), os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// awaitWaiting returns once the new container's init waits for a call.
func (d callDir) awaitWaiting(ctx context.Context, h *callHandle) error {
	deadline := time.Now().Add(30 * time.Second)
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		if d.waiting() {
			return nil
		}
		if h.hasExited() {
			return errors.New("its init exited before waiting for a call")
		}
		if time.Now().After(deadline) {
			return errors.New("its init did not wait for a call within 30s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// RunWarm starts call in a ready pre-started container that fits it. On a
// miss (ok false) it says why (Miss*) and nothing was done: the caller runs
// the call cold (Run). A call that already has a container is Run's, which
// resumes it. Invalid calls fail with an error IsInvalidArgument accepts.
func (r *Runtime) RunWarm(ctx context.Context, call Call) (st State, miss string, err error) {
	ctx = r.ctx(ctx)
	if id := r.containerOf(call.UID); r.handle(id) != nil || id != ContainerID(call.UID) {
		st, err := r.Run(ctx, call)
		return st, "", err
	}
	// A pre-started container's mounts were fixed when it was made: a call
	// with volumes or scratch runs cold.
	if call.hasMounts() {
		return State{}, MissVolumes, nil
	}
	ref, err := NormalizeImageRef(call.Image)
	if err != nil {
		return State{}, "", errdefs.ErrInvalidArgument.WithMessage(err.Error())
	}
	ci, ok := r.images.get(ref)
	if !ok {
		return State{}, MissNoPool, nil
	}
	uid, gid, err := effectiveUser(ci.config.User, call.User)
	if err != nil {
		return State{}, "", err
	}
	h, miss := r.takeWarm(ci.img.Target().Digest.String(), call, uid, gid)
	if h == nil {
		return State{}, miss, nil
	}
	st, err = r.claim(ctx, h, call, ci)
	if err != nil {
		// The container may be half-claimed: it runs no other call. Delete
		// it; the call runs cold.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := r.deleteContainer(dctx, h.id); derr != nil {
			return State{}, "", errors.Join(err, derr)
		}
		os.Remove(r.dir(ContainerID(call.UID)).path)
		return State{}, "", err
	}
	return st, "", nil
}

// takeWarm picks and marks claimed a ready container that fits call, or
// says why none does.
func (r *Runtime) takeWarm(digest string, call Call, uid, gid uint32) (*callHandle, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	miss := MissNoPool
	for _, h := range r.calls {
		if h.warm == nil || h.container == nil {
			continue
		}
		h.mu.Lock()
		free := !h.claimed && h.ref.UID == "" && h.task != nil
		h.mu.Unlock()
		if h.warm.Digest != digest || len(call.Pools) > 0 && !slices.Contains(call.Pools, h.warm.Pool) {
			continue
		}
		switch why := fits(*h.warm, call, uid, gid); {
		case why != "":
			if miss == MissNoPool || why == MissLimits {
				miss = why
			}
			continue
		case !free || h.hasExited() || !r.dir(h.id).waiting():
			// Not waiting: taken, spoiled, or still being started (Prestart
			// registers the handle and its task before the init opens its
			// FIFO; a release then finds no reader and the call would
			// never start).
			miss = MissEmpty
			continue
		}
		h.mu.Lock()
		h.claimed = true
		h.mu.Unlock()
		return h, ""
	}
	return nil, miss
}

// fits says why call cannot use a container of profile w ("" when it can).
func fits(w warmProfile, call Call, uid, gid uint32) string {
	if call.Privileged || call.HostNetwork != w.HostNetwork || call.PodNetwork != w.PodNetwork || call.ReadOnlyRootfs != w.ReadOnlyRootfs || uid != w.UID || gid != w.GID {
		return MissProfile
	}
	within := func(c, p int64) bool { return p == 0 || c > 0 && c <= p }
	if !within(call.MemoryBytes, w.MemoryBytes) || !within(call.MilliCPU, w.MilliCPU) || !within(call.Pids, w.Pids) {
		return MissLimits
	}
	return ""
}

// claim writes the call into h's container, makes the claim, applies the
// call's limits and releases the init (see the file comment for the order).
func (r *Runtime) claim(ctx context.Context, h *callHandle, call Call, ci cachedImage) (State, error) {
	if err := r.writeClaim(ctx, h, call, ci); err != nil {
		return State{}, err
	}
	return r.resumeWarm(ctx, h, call)
}

// writeClaim is the claim up to its symlink: from then on the container is
// the call's, and resumeWarm releases it.
func (r *Runtime) writeClaim(ctx context.Context, h *callHandle, call Call, ci cachedImage) error {
	d := r.dir(h.id)
	args, err := processArgs(ci.config, call.Command, call.Args)
	if err != nil {
		return err
	}
	s := &oci.Spec{Process: &specs.Process{}}
	_ = withImageEnv(ci.config.Env)(ctx, nil, nil, s)
	_ = oci.WithEnv(call.Env)(ctx, nil, nil, s)
	var b strings.Builder
	for _, a := range args {
		b.WriteString("A" + a + "\x00")
	}
	for _, e := range s.Process.Env {
		if strings.IndexByte(e, 0) >= 0 {
			return errdefs.ErrInvalidArgument.WithMessage("env must not contain NUL bytes")
		}
		b.WriteString("E" + e + "\x00")
	}
	b.WriteString("C" + firstNonEmpty(call.WorkingDir, ci.config.WorkingDir, "/") + "\x00")
	ctl := d.file(ctlDir)
	if len(call.Input) > 0 {
		if err := writeFileSync(filepath.Join(ctl, stdinFile), call.Input); err != nil {
			return fmt.Errorf("claim %s: write stdin: %w", h.id, err)
		}
		if err := os.Chmod(filepath.Join(ctl, stdinFile), 0o644); err != nil {
			return fmt.Errorf("claim %s: %w", h.id, err)
		}
	}
	if err := os.WriteFile(filepath.Join(ctl, "call"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("claim %s: write call: %w", h.id, err)
	}
	ref := CallRef{UID: call.UID, Namespace: call.Namespace, Name: call.Name}
	js, _ := json.Marshal(ref)
	if err := os.WriteFile(d.file(claimFile), js, 0o600); err != nil {
		return fmt.Errorf("claim %s: %w", h.id, err)
	}
	h.mu.Lock()
	h.ref = ref
	h.mu.Unlock()
	h.limit = r.limitFor(call)
	if err := os.Symlink(h.id, r.dir(ContainerID(call.UID)).path); err != nil {
		return fmt.Errorf("claim %s for call %s: %w", h.id, call.UID, err)
	}
	return nil
}

// resumeWarm finishes the release of a claimed container: the call's
// limits, the start marker and the go byte, each done again harmlessly.
func (r *Runtime) resumeWarm(ctx context.Context, h *callHandle, call Call) (State, error) {
	d := r.dir(h.id)
	task := h.getTask()
	if task == nil || h.callRef().UID != call.UID {
		return r.state(ctx, h)
	}
	if res := tighter(h.warm.WarmSpec, call); res != nil {
		if err := task.Update(ctx, client.WithResources(res)); err != nil {
			return State{}, wrapErr(err, "apply the call's limits to %s", h.id)
		}
	}
	if d.startedAt().IsZero() {
		if err := d.recordStart(time.Now()); err != nil {
			return State{}, fmt.Errorf("run %s: %w", h.id, err)
		}
	}
	if _, err := d.release(); err != nil {
		return State{}, fmt.Errorf("run %s: %w", h.id, err)
	}
	return r.state(ctx, h)
}

// tighter is the resources to set for call in a container of profile w,
// nil when the call's limits are the pool's.
func tighter(w WarmSpec, call Call) *specs.LinuxResources {
	if call.MemoryBytes == w.MemoryBytes && call.MilliCPU == w.MilliCPU && call.Pids == w.Pids {
		return nil
	}
	res := &specs.LinuxResources{}
	if call.MemoryBytes > 0 && call.MemoryBytes != w.MemoryBytes {
		m := call.MemoryBytes
		res.Memory = &specs.LinuxMemory{Limit: &m, Swap: &m}
	}
	if call.MilliCPU > 0 && call.MilliCPU != w.MilliCPU {
		quota := max(call.MilliCPU*cfsPeriod/1000, 1000)
		period := uint64(cfsPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if call.Pids > 0 && call.Pids != w.Pids {
		n := call.Pids + 1 // + fnlet-init
		res.Pids = &specs.LinuxPids{Limit: &n}
	}
	return res
}

// WarmContainers lists the pre-started containers no call has claimed,
// adopting those an earlier process made, and removes the directories of
// those that never came to be (pruneWarmDirs).
func (r *Runtime) WarmContainers(ctx context.Context) ([]WarmContainer, error) {
	ctx = r.ctx(ctx)
	cs, err := r.client.Containers(ctx, `labels."`+LabelPool+`"`)
	if err != nil {
		return nil, wrapErr(err, "list pre-started containers")
	}
	var out []WarmContainer
	live := map[string]bool{}
	for _, c := range cs {
		live[c.ID()] = true
	}
	r.pruneWarmDirs(live)
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
		h.mu.Lock()
		free := !h.claimed && h.ref.UID == ""
		h.mu.Unlock()
		if !free {
			continue
		}
		ready := h.getTask() != nil && !h.hasExited() && r.dir(h.id).waiting()
		out = append(out, WarmContainer{ID: h.id, Pool: h.warm.Pool, Digest: h.warm.Digest, Ready: ready})
	}
	return out, nil
}

// pruneWarmDirs removes the directories of pre-started containers that
// never came to be: a manager killed inside Prestart, after making the
// directory and before containerd made the container (or a create that
// failed with containerd gone), leaves one no container, and so no
// DeleteWarm, will remove. live holds the IDs of the pre-started
// containers containerd has; a directory with a claim stays (a call's
// output, for PruneLogs), as does one this process is still making.
func (r *Runtime) pruneWarmDirs(live map[string]bool) {
	es, err := os.ReadDir(r.ioRoot)
	if err != nil {
		return
	}
	for _, e := range es {
		id := e.Name()
		if !e.IsDir() || !strings.HasPrefix(id, warmPrefix) || live[id] {
			continue
		}
		if _, busy := r.prestarting.Load(id); busy {
			continue
		}
		if _, err := os.Lstat(r.dir(id).file(claimFile)); err == nil {
			continue // a call's, or a claim being made on a live container
		}
		os.RemoveAll(r.dir(id).path)
	}
}

// DeleteWarm removes a pre-started container no call has claimed, with
// its directory. A claimed one is its call's: Delete it by the call.
func (r *Runtime) DeleteWarm(ctx context.Context, id string) error {
	ctx = r.ctx(ctx)
	if !strings.HasPrefix(id, warmPrefix) {
		return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("%s is not a pre-started container", id))
	}
	if h := r.handle(id); h != nil && h.callRef().UID != "" {
		return errdefs.ErrFailedPrecondition.WithMessage(fmt.Sprintf("%s runs call %s", id, h.callRef().UID))
	}
	return r.deleteContainer(ctx, id)
}

// removeWarmDir removes what a deleted pre-started container leaves: its
// control directory (the call's env and input) always, and the whole
// directory when no call ran in it (a call's output stays for PruneLogs).
func (r *Runtime) removeWarmDir(h *callHandle) error {
	d := r.dir(h.id)
	if h.callRef().UID == "" {
		if err := os.RemoveAll(d.path); err != nil {
			return fmt.Errorf("remove %s: %w", d.path, err)
		}
		return nil
	}
	if err := os.RemoveAll(d.file(ctlDir)); err != nil {
		return fmt.Errorf("remove the call of %s: %w", h.id, err)
	}
	return nil
}

// warmExited is told of the exit of a pre-started container no call
// holds: it is spoiled (WarmContainers reports it not ready).
func (r *Runtime) warmExited(id string) {
	if h := r.handle(id); h != nil {
		h.markExited()
	}
}
