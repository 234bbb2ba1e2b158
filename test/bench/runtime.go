// Command runtime-bench measures the latency of one full cold call — a new
// container from a present image whose program exits 0 at once, created,
// started, waited for and removed — three ways against the same containerd:
//
//	ctrd  internal/ctrd: EnsureImage(IfNotPresent) + Run + Wait + Delete,
//	      with the runtime's Watch loop running, as the manager uses it.
//	raw   the containerd Go client with no fnlet code: NewContainer
//	      (WithNewSnapshot, WithNewSpec(oci.WithImageConfig)), NewTask
//	      (cio.NullIO), Wait, Start, <-exit, task.Delete, container.Delete
//	      (WithSnapshotCleanup).
//	ctr   `ctr run --rm` of the same image, with the ctr matching the daemon.
//
// The three run round-robin (the order rotating each round) so machine
// noise hits them alike. It prints p50/p95/mean per way, the ratios to raw
// and a per-phase breakdown, and writes all samples as JSON. It is run by
// hack/bench-runtime.sh (make bench-runtime).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fnlet/fnlet/internal/ctrd"
)

type config struct {
	Address    string   `json:"address"`
	Namespace  string   `json:"namespace"`
	Image      string   `json:"image"`
	Args       []string `json:"args"`
	Entrypoint []string `json:"entrypoint"`
	N          int      `json:"n"`
	Warmup     int      `json:"warmup"`
	Runtime    string   `json:"runtime"`
	Ctr        string   `json:"ctr"`
	CtrVersion string   `json:"ctrVersion"`
	Daemon     string   `json:"daemonVersion"`
	Modes      []string `json:"modes"`
}

// sample is one measured call: its total and its phases, in order.
type sample struct {
	Total  time.Duration `json:"totalNs"`
	Phases []phase       `json:"phases,omitempty"`
}

type phase struct {
	Name string        `json:"name"`
	D    time.Duration `json:"ns"`
}

// timer records consecutive phases of one call.
type timer struct {
	start, last time.Time
	phases      []phase
}

func newTimer() *timer { now := time.Now(); return &timer{start: now, last: now} }

func (t *timer) lap(name string) {
	now := time.Now()
	t.phases = append(t.phases, phase{name, now.Sub(t.last)})
	t.last = now
}

func (t *timer) sample() sample { return sample{Total: t.last.Sub(t.start), Phases: t.phases} }

// way is one way of running a call.
type way interface {
	name() string
	// call runs one full call with a unique id and reports its timing.
	call(ctx context.Context, id string) (sample, error)
	close()
}

func main() {
	var cfg config
	var out, cpuProfile, modes string
	defN := 30
	if v, err := strconv.Atoi(os.Getenv("BENCH_N")); err == nil && v > 0 {
		defN = v
	}
	flag.StringVar(&cfg.Address, "address", os.Getenv("FNLET_CONTAINERD_ADDRESS"), "containerd socket (default $FNLET_CONTAINERD_ADDRESS)")
	flag.StringVar(&cfg.Namespace, "namespace", "fnlet", "containerd namespace holding the image")
	flag.StringVar(&cfg.Image, "image", "localhost/fnlet/testfn:v1", "image to run; must be present")
	flag.IntVar(&cfg.N, "n", defN, "measured calls per way (default $BENCH_N or 30)")
	flag.IntVar(&cfg.Warmup, "warmup", 3, "unmeasured rounds first")
	flag.StringVar(&cfg.Runtime, "runtime", "runc", "OCI runtime binary: runc or crun")
	flag.StringVar(&cfg.Ctr, "ctr", "auto", "ctr binary; auto picks the one matching the daemon version")
	flag.StringVar(&modes, "modes", "ctrd,raw,ctr", "ways to measure, comma-separated: ctrd, raw, ctr, or raw+KNOB+... (knobs spec, seccomp, files, kill, metrics, load: see rawWay)")
	flag.StringVar(&out, "out", "bench-results", "directory for the JSON results")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process (samples labelled way=ctrd|raw|ctr)")
	flag.Parse()
	cfg.Args = flag.Args()
	cfg.Modes = strings.Split(modes, ",")
	if err := run(cfg, out, cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "runtime-bench:", err)
		os.Exit(1)
	}
}

func run(cfg config, out, cpuProfile string) error {
	if cfg.Address == "" {
		return errors.New("no containerd address: set FNLET_CONTAINERD_ADDRESS or -address")
	}
	if cfg.Runtime != "runc" && cfg.Runtime != "crun" {
		return fmt.Errorf("-runtime %q: want runc or crun", cfg.Runtime)
	}
	if cfg.N < 1 {
		return fmt.Errorf("-n %d: want at least 1", cfg.N)
	}
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), cfg.Namespace))
	defer cancel()

	v, err := daemonVersion(ctx, cfg.Address)
	if err != nil {
		return err
	}
	cfg.Daemon = v
	if cfg.Entrypoint, err = imageEntrypoint(ctx, cfg); err != nil {
		return err
	}

	runID := randHex(4)
	var ways []way
	defer func() {
		for _, w := range ways {
			w.close()
		}
	}()
	for _, m := range cfg.Modes {
		var w way
		var err error
		switch base, _, _ := strings.Cut(m, "+"); {
		case m == "ctrd":
			w, err = newCtrdWay(ctx, cfg)
		case base == "raw":
			w, err = newRawWay(ctx, cfg, m)
		case m == "ctr":
			w, err = newCtrWay(ctx, &cfg)
		default:
			err = fmt.Errorf("unknown way %q (want ctrd, raw, ctr)", m)
		}
		if err != nil {
			return fmt.Errorf("set up %s: %w", m, err)
		}
		ways = append(ways, w)
	}
	fmt.Printf("containerd %s at %s, runtime %s, image %s %q, %d calls per way (+%d warm-up rounds)\n",
		cfg.Daemon, cfg.Address, cfg.Runtime, cfg.Image, cfg.Args, cfg.N, cfg.Warmup)

	// Warm-up doubles as a preflight: a way that cannot run a call at all
	// (crun on some hosts) is reported and the benchmark stops cleanly.
	var failed []string
	for r := 0; r < max(cfg.Warmup, 1); r++ {
		for _, w := range ways {
			if slices.Contains(failed, w.name()) {
				continue
			}
			if _, err := oneCall(ctx, w, fmt.Sprintf("%s-w%d", runID, r)); err != nil {
				fmt.Fprintf(os.Stderr, "%s: a call failed: %v\n", w.name(), err)
				failed = append(failed, w.name())
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("no measurement: %s cannot run a call with runtime %s on this host (see above)", strings.Join(failed, ", "), cfg.Runtime)
	}

	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	results := map[string][]sample{}
	started := time.Now()
	for i := 0; i < cfg.N; i++ {
		for k := range ways {
			w := ways[(i+k)%len(ways)] // rotate who goes first
			var s sample
			var err error
			pprof.Do(ctx, pprof.Labels("way", w.name()), func(ctx context.Context) {
				s, err = oneCall(ctx, w, fmt.Sprintf("%s-%d", runID, i))
			})
			if err != nil {
				return fmt.Errorf("%s call %d: %w", w.name(), i, err)
			}
			results[w.name()] = append(results[w.name()], s)
		}
	}
	wall := time.Since(started)

	report(os.Stdout, cfg, ways, results)
	path, err := writeJSON(out, cfg, results, wall)
	if err != nil {
		return err
	}
	fmt.Printf("\nresults: %s\n", path)
	return nil
}

func oneCall(ctx context.Context, w way, id string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return w.call(ctx, id)
}

// ---- ctrd ----

type ctrdWay struct {
	cfg    config
	rt     *ctrd.Runtime
	ioRoot string
	stop   func()
}

func newCtrdWay(ctx context.Context, cfg config) (*ctrdWay, error) {
	ioRoot, err := os.MkdirTemp("", "fnlet-bench-io-")
	if err != nil {
		return nil, err
	}
	rt, err := ctrd.New(cfg.Address, ctrd.WithNamespace(cfg.Namespace), ctrd.WithIORoot(ioRoot), ctrd.WithOCIRuntime(cfg.Runtime))
	if err != nil {
		os.RemoveAll(ioRoot)
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rt.Watch(wctx, func(ctrd.Event) {})
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
	return &ctrdWay{cfg: cfg, rt: rt, ioRoot: ioRoot, stop: func() { cancel(); <-done }}, nil
}

func (w *ctrdWay) name() string { return "ctrd" }

func (w *ctrdWay) call(ctx context.Context, id string) (sample, error) {
	uid := "bench-" + id
	t := newTimer()
	if _, err := w.rt.EnsureImage(ctx, w.cfg.Image, ctrd.PullIfNotPresent, nil); err != nil {
		return sample{}, err
	}
	t.lap("EnsureImage")
	call := ctrd.Call{UID: uid, Namespace: "bench", Name: "bench", Image: w.cfg.Image, Args: w.cfg.Args}
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
	t.lap("Wait")
	if err := w.rt.Delete(ctx, uid); err != nil {
		return sample{}, err
	}
	t.lap("Delete")
	if s.Result == nil || s.Result.ExitCode != 0 {
		return sample{}, fmt.Errorf("call did not exit 0: %+v", s.Result)
	}
	// The full logs stay for retention; the benchmark does not keep them.
	os.RemoveAll(s.LogDir)
	return t.sample(), nil
}

func (w *ctrdWay) close() {
	w.stop()
	w.rt.Close()
	os.RemoveAll(w.ioRoot)
}

// ---- raw containerd client ----

// rawWay is the containerd client alone. Its knobs (-modes raw+spec+files+
// kill+metrics) add one fnlet behaviour each, to attribute ctrd's overhead:
//
//	spec     ctrd's OCI spec (ctrd.SpecOpts: seccomp profile, hostname, ...)
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
	if w.spec {
		var err error
		specOpts, err = ctrd.SpecOpts(ctrd.Call{UID: id, Name: "bench", Image: w.cfg.Image, Args: w.cfg.Args},
			w.imgCfg, ctrd.Policy{OCIRuntime: w.cfg.Runtime})
		if err != nil {
			return sample{}, err
		}
	}
	container, err := w.c.NewContainer(ctx, id,
		client.WithNewSnapshot(id, w.img),
		client.WithNewSpec(specOpts...),
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

// ---- reporting ----

type stats struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50Ns"`
	P95  time.Duration `json:"p95Ns"`
	Mean time.Duration `json:"meanNs"`
	Min  time.Duration `json:"minNs"`
	Max  time.Duration `json:"maxNs"`
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func statsOf(ds []time.Duration) stats {
	s := slices.Sorted(slices.Values(ds))
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return stats{N: len(s), P50: percentile(s, 50), P95: percentile(s, 95), Mean: sum / time.Duration(max(len(s), 1)),
		Min: s[0], Max: s[len(s)-1]}
}

func totals(ss []sample) []time.Duration {
	out := make([]time.Duration, len(ss))
	for i, s := range ss {
		out[i] = s.Total
	}
	return out
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func report(w *os.File, cfg config, ways []way, results map[string][]sample) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "way\tn\tp50 ms\tp95 ms\tmean ms\tmin ms\tmax ms\t")
	all := map[string]stats{}
	for _, wy := range ways {
		st := statsOf(totals(results[wy.name()]))
		all[wy.name()] = st
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", wy.name(), st.N, ms(st.P50), ms(st.P95), ms(st.Mean), ms(st.Min), ms(st.Max))
	}
	tw.Flush()
	if raw, ok := all["raw"]; ok {
		fmt.Fprintln(w)
		for _, wy := range ways {
			if n := wy.name(); n != "raw" {
				st := all[n]
				fmt.Fprintf(w, "%s/raw: p50 %.2fx  p95 %.2fx  mean %.2fx\n", n, ratio(st.P50, raw.P50), ratio(st.P95, raw.P95), ratio(st.Mean, raw.Mean))
			}
		}
		if st, ok := all["ctrd"]; ok {
			verdict := "met"
			if ratio(st.P50, raw.P50) > 1.15 {
				verdict = "NOT met (attribute it with -modes ctrd,raw,raw+seccomp,raw+spec+files+kill+metrics+load)"
			}
			fmt.Fprintf(w, "goal ctrd <= 1.15x raw (p50): %s\n", verdict)
		}
	}
	fmt.Fprintln(w, "\nphases (mean ms):")
	for _, wy := range ways {
		ss := results[wy.name()]
		if len(ss) == 0 || len(ss[0].Phases) < 2 {
			continue
		}
		var parts []string
		for i, p := range ss[0].Phases {
			var ds []time.Duration
			for _, s := range ss {
				ds = append(ds, s.Phases[i].D)
			}
			parts = append(parts, fmt.Sprintf("%s %s", p.Name, ms(statsOf(ds).Mean)))
		}
		fmt.Fprintf(w, "  %-5s %s\n", wy.name(), strings.Join(parts, "  "))
	}
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func writeJSON(dir string, cfg config, results map[string][]sample, wall time.Duration) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	type wayResult struct {
		Stats   stats    `json:"stats"`
		Samples []sample `json:"samples"`
	}
	doc := struct {
		Time    time.Time            `json:"time"`
		Config  config               `json:"config"`
		WallNs  time.Duration        `json:"wallNs"`
		Results map[string]wayResult `json:"results"`
		Ratios  map[string]float64   `json:"ratiosP50ToRaw,omitempty"`
	}{Time: time.Now().UTC(), Config: cfg, WallNs: wall, Results: map[string]wayResult{}, Ratios: map[string]float64{}}
	for n, ss := range results {
		doc.Results[n] = wayResult{Stats: statsOf(totals(ss)), Samples: ss}
	}
	if raw, ok := doc.Results["raw"]; ok {
		for n, r := range doc.Results {
			if n != "raw" {
				doc.Ratios[n] = ratio(r.Stats.P50, raw.Stats.P50)
			}
		}
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return "", err
	}
	version := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, strings.TrimPrefix(cfg.Daemon, "v"))
	name := fmt.Sprintf("runtime-%s-%s-%s.json", version, cfg.Runtime, doc.Time.Format("20060102T150405Z"))
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
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
