package main

// The runtime-level ways: internal/ctrd, the raw containerd client and
// `ctr run --rm`, all against the same containerd namespace and image.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv/cninet"
)

// ---- ctrd ----

type ctrdWay struct {
	cfg    config
	rt     *ctrd.Runtime
	ioRoot string
	stop   func()
	// podNet, when set, runs every call with network: pod on this
	// throwaway bridge network (the ctrd-podnet way).
	podNet *cninet.Net
	// exits holds when the runtime's event stream delivered each call's
	// exit (call UID -> time.Time): the end of "process exit seen", before
	// Wait collects the result (task status, metrics, output tails).
	exits sync.Map
}

// exitSeen is when the exit of call uid arrived on the event stream.
func (w *ctrdWay) exitSeen(uid string) (time.Time, bool) {
	v, ok := w.exits.LoadAndDelete(uid)
	if !ok {
		return time.Time{}, false
	}
	return v.(time.Time), true
}

// newCtrdPodNetWay is the ctrd way with network: pod: its calls' extra
// cost is the namespace, CNI ADD and DEL (bridge, host-local, loopback).
func newCtrdPodNetWay(ctx context.Context, cfg config) (*ctrdWay, error) {
	if why := cninet.Missing(); why != "" {
		return nil, errors.New(why)
	}
	dir, err := os.MkdirTemp("", "fnlet-bench-cni-")
	if err != nil {
		return nil, err
	}
	n, err := cninet.New(dir)
	if err != nil {
		return nil, err
	}
	// A pool of 2, the manager's default (--pod-network-pool): attached
	// namespaces made between calls, as a manager makes them.
	w, err := newCtrdWay(ctx, cfg, ctrd.WithPodNetwork(n.ConfDir, cninet.BinDirs, n.NSDir, ""), ctrd.WithPodNetworkPool(2))
	if err != nil {
		n.Remove()
		return nil, err
	}
	w.podNet = n
	return w, nil
}

func newCtrdWay(ctx context.Context, cfg config, extra ...ctrd.Opt) (*ctrdWay, error) {
	ioRoot, err := os.MkdirTemp("", "fnlet-bench-io-")
	if err != nil {
		return nil, err
	}
	opts := append([]ctrd.Opt{ctrd.WithNamespace(cfg.Namespace), ctrd.WithIORoot(ioRoot), ctrd.WithOCIRuntime(cfg.Runtime)}, extra...)
	if cfg.Init != "" {
		opts = append(opts, ctrd.WithInit(cfg.Init))
	}
	rt, err := ctrd.New(cfg.Address, opts...)
	if err != nil {
		os.RemoveAll(ioRoot)
		return nil, err
	}
	w := &ctrdWay{cfg: cfg, rt: rt, ioRoot: ioRoot}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rt.Watch(wctx, func(ev ctrd.Event) {
			if ev.Kind == ctrd.EventExit {
				w.exits.LoadOrStore(ev.Call.UID, time.Now())
			}
		})
	}()
	// Watch subscribes asynchronously; give it a moment before the first call
	// so its exit event is not missed.
	if err := rt.Ping(ctx); err != nil {
		cancel()
		<-done
		rt.Close()
		os.RemoveAll(ioRoot)
		return nil, err
	}
	time.Sleep(300 * time.Millisecond)
	w.stop = func() { cancel(); <-done }
	return w, nil
}

func (w *ctrdWay) name() string {
	if w.podNet != nil {
		return "ctrd-podnet"
	}
	return "ctrd"
}

func (w *ctrdWay) call(ctx context.Context, id string) (sample, error) {
	uid := w.name() + "-" + id // ways run the same ids
	t := newTimer()
	if _, err := w.rt.EnsureImage(ctx, w.cfg.Image, ctrd.PullIfNotPresent, nil); err != nil {
		return sample{}, err
	}
	t.lap("EnsureImage")
	call := ctrd.Call{UID: uid, Namespace: "bench", Name: "bench", Image: w.cfg.Image, Args: w.cfg.Args, PodNetwork: w.podNet != nil}
	if _, err := w.rt.Run(ctx, call); err != nil {
		_ = w.rt.Delete(context.WithoutCancel(ctx), uid)
		return sample{}, err
	}
	t.lap("Run")
	s, err := w.rt.Wait(ctx, uid)
	if err != nil {
		_ = w.rt.Delete(context.WithoutCancel(ctx), uid)
		return sample{}, err
	}
	w.lapWait(t, uid)
	if err := w.rt.Delete(ctx, uid); err != nil {
		return sample{}, err
	}
	t.lap("Delete")
	if s.Result == nil || s.Result.ExitCode != 0 {
		return sample{}, fmt.Errorf("call did not exit 0: %+v (state %+v)", s.Result, s)
	}
	// The full logs stay for retention; the benchmark does not keep them.
	os.RemoveAll(s.LogDir)
	return t.sample(), nil
}

// lapWait ends the phases "Exit" (until the exit event arrived) and
// "Collect" (Wait reading the result); an exit found by Wait before its
// event (it reads the state first) is a zero-length Collect.
func (w *ctrdWay) lapWait(t *timer, uid string) {
	now := time.Now()
	at, ok := w.exitSeen(uid)
	if !ok || at.After(now) {
		at = now
	}
	t.lapAt("Exit", at)
	t.lapAt("Collect", now)
}

func (w *ctrdWay) close() {
	w.stop()
	w.rt.Close()
	os.RemoveAll(w.ioRoot)
	if w.podNet != nil {
		if l, err := w.podNet.Count(); err != nil || !l.Zero() {
			fmt.Fprintf(os.Stderr, "ctrd-podnet: left on its network: %s (%v)\n", l, err)
		}
		w.podNet.Remove()
	}
}

// ---- ctrd, warm ----

// ctrdWarmWay runs each call in a pre-started container (ctrd.RunWarm):
// claim, exit, delete. The container is made after the previous call,
// outside the measurement, as a pool refills in the background.
type ctrdWarmWay struct {
	*ctrdWay
	pool ctrd.WarmSpec
}

func newCtrdWarmWay(ctx context.Context, cfg config) (*ctrdWarmWay, error) {
	if cfg.Init == "" {
		return nil, fmt.Errorf("the ctrd-warm way needs -init (fnlet-init)")
	}
	cw, err := newCtrdWay(ctx, cfg)
	if err != nil {
		return nil, err
	}
	w := &ctrdWarmWay{ctrdWay: cw, pool: ctrd.WarmSpec{Pool: "bench", Image: cfg.Image}}
	if _, err := cw.rt.EnsureImage(ctx, cfg.Image, ctrd.PullIfNotPresent, nil); err != nil {
		w.close()
		return nil, err
	}
	if _, err := cw.rt.Prestart(ctx, w.pool); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

func (w *ctrdWarmWay) name() string { return "ctrd-warm" }

func (w *ctrdWarmWay) call(ctx context.Context, id string) (sample, error) {
	// Not the ctrd way's UID: both runtimes share the namespace, and each
	// retains handles of the containers it lists.
	uid := "bench-warm-" + id
	t := newTimer()
	call := ctrd.Call{UID: uid, Namespace: "bench", Name: "bench", Image: w.cfg.Image, Args: w.cfg.Args}
	if _, miss, err := w.rt.RunWarm(ctx, call); err != nil || miss != "" {
		_ = w.rt.Delete(context.WithoutCancel(ctx), uid)
		return sample{}, fmt.Errorf("warm run: miss %q: %v", miss, err)
	}
	t.lap("Claim")
	s, err := w.rt.Wait(ctx, uid)
	if err != nil {
		_ = w.rt.Delete(context.WithoutCancel(ctx), uid)
		return sample{}, err
	}
	// "Run": from the claim to the process's exit as the shim recorded it
	// (the task's exit time), before the exit event reaches the runtime.
	if s.Result != nil && !s.Result.FinishedAt.IsZero() && s.Result.FinishedAt.Before(time.Now()) {
		t.lapAt("Run", s.Result.FinishedAt)
	}
	w.lapWait(t, uid)
	if err := w.rt.Delete(ctx, uid); err != nil {
		return sample{}, err
	}
	t.lap("Delete")
	if s.Result == nil || s.Result.ExitCode != 0 {
		return sample{}, fmt.Errorf("call did not exit 0: %+v (state %+v)", s.Result, s)
	}
	os.RemoveAll(s.LogDir)
	os.Remove(filepath.Join(w.ioRoot, ctrd.ContainerID(uid)))
	smp := t.sample()
	if _, err := w.rt.Prestart(ctx, w.pool); err != nil {
		return sample{}, fmt.Errorf("refill: %w", err)
	}
	return smp, nil
}

// drain removes the spare pre-started containers, before the leftovers
// are counted.
func (w *ctrdWarmWay) drain(ctx context.Context) error {
	ws, err := w.rt.WarmContainers(ctx)
	if err != nil {
		return err
	}
	for _, c := range ws {
		if err := w.rt.DeleteWarm(ctx, c.ID); err != nil {
			return err
		}
	}
	return nil
}

func (w *ctrdWarmWay) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = w.drain(ctx)
	w.ctrdWay.close()
}

// ---- raw containerd client ----

// rawWay is the containerd client alone. Its knobs (-modes raw+spec+files+
// kill+metrics) add one fnlet behaviour each, to attribute ctrd's overhead:
//
//	spec     ctrd's OCI spec (ctrd.BuildSpec: seccomp profile, hostname, ...)
//	         instead of oci.WithImageConfig alone
//	seccomp  oci.WithImageConfig plus containerd's default seccomp profile
//	         only (the part of ctrd's spec that costs)
//	files    stdout/stderr as regular files the shim appends to (ctrd's IO)
//	         instead of cio.NullIO
//	kill     task.Delete(client.WithProcessKill), as ctrd.Delete does
//	metrics  task.Status + task.Metrics after the exit, as ctrd collects
//	load     LoadContainer before creating (NotFound), as ctrd.Run does
type rawWay struct {
	cfg    config
	label  string
	c      *client.Client
	img    client.Image
	imgCfg ocispec.ImageConfig
	ioRoot string

	spec, seccomp, files, kill, metrics, load bool
}

func newRawWay(ctx context.Context, cfg config, label string) (*rawWay, error) {
	w := &rawWay{cfg: cfg, label: label}
	knobs := strings.Split(label, "+")[1:]
	for _, k := range knobs {
		switch k {
		case "spec":
			w.spec = true
		case "seccomp":
			w.seccomp = true
		case "files":
			w.files = true
		case "kill":
			w.kill = true
		case "metrics":
			w.metrics = true
		case "load":
			w.load = true
		default:
			return nil, fmt.Errorf("unknown raw knob %q (want spec, seccomp, files, kill, metrics, load)", k)
		}
	}
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		return nil, err
	}
	w.c = c
	if w.img, err = c.GetImage(ctx, cfg.Image); err != nil {
		c.Close()
		return nil, fmt.Errorf("image %s: %w", cfg.Image, err)
	}
	ispec, err := w.img.Spec(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	w.imgCfg = ispec.Config
	if w.files {
		if w.ioRoot, err = os.MkdirTemp("", "fnlet-bench-rawio-"); err != nil {
			c.Close()
			return nil, err
		}
	}
	return w, nil
}

func (w *rawWay) name() string { return w.label }

// fileIO hands the shim fixed file paths and copies nothing itself.
type fileIO struct{ cfg cio.Config }

func (f *fileIO) Config() cio.Config { return f.cfg }
func (f *fileIO) Cancel()            {}
func (f *fileIO) Wait()              {}
func (f *fileIO) Close() error       { return nil }

func (w *rawWay) call(ctx context.Context, id string) (sample, error) {
	id = "rawbench-" + id
	t := newTimer()
	if w.load {
		if _, err := w.c.LoadContainer(ctx, id); err == nil {
			return sample{}, fmt.Errorf("container %s exists", id)
		}
	}
	specOpts := []oci.SpecOpts{oci.WithImageConfig(w.img)}
	if len(w.cfg.Args) > 0 {
		// Kubernetes args: the image entrypoint with these args instead of cmd.
		specOpts = append(specOpts, oci.WithProcessArgs(slices.Concat(w.cfg.Entrypoint, w.cfg.Args)...))
	}
	if w.seccomp {
		specOpts = append(specOpts, seccomp.WithDefaultProfile())
	}
	withSpec := client.WithNewSpec(specOpts...)
	if w.spec {
		s, err := ctrd.BuildSpec(ctx, w.cfg.Namespace, ctrd.Call{UID: id, Name: "bench", Image: w.cfg.Image, Args: w.cfg.Args},
			w.imgCfg, ctrd.Policy{OCIRuntime: w.cfg.Runtime})
		if err != nil {
			return sample{}, err
		}
		withSpec = client.WithSpec(s)
	}
	container, err := w.c.NewContainer(ctx, id,
		client.WithNewSnapshot(id, w.img),
		withSpec,
		client.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: w.cfg.Runtime}),
	)
	if err != nil {
		return sample{}, err
	}
	cleanup := func() {
		dctx := context.WithoutCancel(ctx)
		if task, err := container.Task(dctx, nil); err == nil {
			task.Delete(dctx, client.WithProcessKill)
		}
		container.Delete(dctx, client.WithSnapshotCleanup)
	}
	t.lap("NewContainer")
	creator := cio.NullIO
	if w.files {
		dir := filepath.Join(w.ioRoot, id)
		defer os.RemoveAll(dir)
		cfg := cio.Config{Stdout: filepath.Join(dir, "stdout"), Stderr: filepath.Join(dir, "stderr")}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			cleanup()
			return sample{}, err
		}
		for _, p := range []string{cfg.Stdout, cfg.Stderr} {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				cleanup()
				return sample{}, err
			}
		}
		creator = func(string) (cio.IO, error) { return &fileIO{cfg: cfg}, nil }
	}
	task, err := container.NewTask(ctx, creator)
	if err != nil {
		cleanup()
		return sample{}, err
	}
	t.lap("NewTask")
	exitC, err := task.Wait(ctx)
	if err != nil {
		cleanup()
		return sample{}, err
	}
	if err := task.Start(ctx); err != nil {
		cleanup()
		return sample{}, err
	}
	t.lap("Start")
	var st client.ExitStatus
	select {
	case st = <-exitC:
	case <-ctx.Done():
		cleanup()
		return sample{}, ctx.Err()
	}
	t.lap("exit")
	if w.metrics {
		if _, err := task.Status(ctx); err != nil {
			cleanup()
			return sample{}, err
		}
		if _, err := task.Metrics(ctx); err != nil {
			cleanup()
			return sample{}, err
		}
		t.lap("metrics")
	}
	var dopts []client.ProcessDeleteOpts
	if w.kill {
		dopts = append(dopts, client.WithProcessKill)
	}
	if _, err := task.Delete(ctx, dopts...); err != nil {
		cleanup()
		return sample{}, err
	}
	t.lap("task.Delete")
	if err := container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		return sample{}, err
	}
	t.lap("container.Delete")
	if st.ExitCode() != 0 {
		return sample{}, fmt.Errorf("exit status %d: %v", st.ExitCode(), st.Error())
	}
	return t.sample(), nil
}

func (w *rawWay) close() {
	w.c.Close()
	if w.ioRoot != "" {
		os.RemoveAll(w.ioRoot)
	}
}

// ---- ctr run --rm ----

type ctrWay struct {
	cfg config
}

func newCtrWay(ctx context.Context, cfg *config) (*ctrWay, error) {
	if cfg.Ctr == "auto" {
		var err error
		if cfg.Ctr, err = findCtr(cfg.Daemon); err != nil {
			return nil, err
		}
	}
	out, err := exec.CommandContext(ctx, cfg.Ctr, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", cfg.Ctr, err)
	}
	cfg.CtrVersion = strings.TrimSpace(string(out))
	return &ctrWay{cfg: *cfg}, nil
}

// findCtr returns the ctr of the daemon's version: the one built into the
// fnlet cache for 2.x, else the one on PATH, checked by its --version.
func findCtr(daemon string) (string, error) {
	want := strings.TrimPrefix(daemon, "v")
	cache := os.Getenv("FNLET_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "fnlet")
	}
	candidates := []string{filepath.Join(cache, "containerd-v"+want, "bin", "ctr")}
	if p, err := exec.LookPath("ctr"); err == nil {
		candidates = append(candidates, p)
	}
	var seen []string
	for _, c := range candidates {
		out, err := exec.Command(c, "--version").Output()
		if err != nil {
			continue
		}
		fields := strings.Fields(string(out))
		if len(fields) == 0 {
			continue
		}
		got := strings.TrimPrefix(fields[len(fields)-1], "v")
		if got == want {
			return c, nil
		}
		seen = append(seen, c+" is "+got)
	}
	return "", fmt.Errorf("no ctr matching containerd %s found (%s); pass -ctr", daemon, strings.Join(seen, ", "))
}

func (w *ctrWay) name() string { return "ctr" }

func (w *ctrWay) call(ctx context.Context, id string) (sample, error) {
	args := []string{"--address", w.cfg.Address, "--namespace", w.cfg.Namespace, "run", "--rm"}
	if w.cfg.Runtime != "runc" {
		args = append(args, "--runc-binary", w.cfg.Runtime)
	}
	args = append(args, w.cfg.Image, "ctrbench-"+id)
	if len(w.cfg.Args) > 0 {
		// ctr takes a full command line: the image entrypoint and the args.
		args = append(args, slices.Concat(w.cfg.Entrypoint, w.cfg.Args)...)
	}
	cmd := exec.CommandContext(ctx, w.cfg.Ctr, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t := newTimer()
	err := cmd.Run()
	t.lap("ctr run --rm")
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, lastLine(stderr.String()))
	}
	return t.sample(), nil
}

func (w *ctrWay) close() {}

// lastLine keeps the error line of ctr's stderr, not its warnings.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "ctr: ") {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}

// imageEntrypoint reads the image's entrypoint, which -args are appended to.
func imageEntrypoint(ctx context.Context, cfg config) ([]string, error) {
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	img, err := c.GetImage(ctx, cfg.Image)
	if err != nil {
		return nil, fmt.Errorf("image %s (import it with hack/build-images.sh): %w", cfg.Image, err)
	}
	spec, err := img.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", cfg.Image, err)
	}
	return spec.Config.Entrypoint, nil
}

func daemonVersion(ctx context.Context, address string) (string, error) {
	c, err := client.New(address)
	if err != nil {
		return "", err
	}
	defer c.Close()
	v, err := c.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("containerd version: %w", err)
	}
	return v.Version, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
