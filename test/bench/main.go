// Command fnlet-bench measures one full cold call — a new container from a
// present image whose program (/testfn) exits 0 at once — several ways, in
// one run, round-robin (the order rotating each round) so machine noise hits
// them alike:
//
//	fnlet  the whole system: client create of a FunctionCall (spec.nodeName
//	       = the manager's node, imagePullPolicy Never) until status.phase
//	       Succeeded is seen on one shared watch; the manager is a process of
//	       ./cmd/manager this program starts and stops.
//	ctrd   internal/ctrd: EnsureImage(IfNotPresent) + Run + Wait + Delete,
//	       with the runtime's Watch loop running, as the manager uses it.
//	raw    the containerd Go client with no fnlet code: NewContainer
//	       (WithNewSnapshot, WithNewSpec(oci.WithImageConfig)), NewTask
//	       (cio.NullIO), Wait, Start, <-exit, task.Delete, container.Delete
//	       (WithSnapshotCleanup).
//	ctr    `ctr run --rm` of the same image, with the ctr matching the daemon.
//	pod    a plain Pod (restartPolicy Never, imagePullPolicy Never) on a real
//	       kubelet node, create until phase Succeeded is seen on a watch;
//	       only a few, spread over the rounds.
//	fnlet-warm  as fnlet, for a call that names a FunctionPool this program
//	       creates (the same image) and runs in one of its pre-started
//	       containers (status.pool is checked: the hit rate).
//	ctrd-warm   internal/ctrd RunWarm + Wait + Delete of a pre-started
//	       container made after the previous call, outside the measurement.
//
// With a warm way it first measures the refill capacity (containers
// pre-started per second with internal/ctrd, before the manager starts),
// and with fnlet-warm, after the rounds, warm and cold calls at a steady
// rate below that capacity (hit rate, latency, CPU per call).
//
// With the fnlet way it then measures fnlet alone at a fixed concurrency
// (latency) and in closed loops at higher concurrencies (throughput), the
// manager's peak RSS and CPU, the apiserver writes per call, a CPU profile
// of the manager (when it has --pprof-bind-address), and after deleting the
// calls, what is left in containerd. It prints a table and writes all
// samples as JSON. hack/bench.sh (make bench) runs all of it;
// hack/bench-runtime.sh (make bench-runtime) only ctrd, raw and ctr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
)

type config struct {
	Address    string   `json:"address"`
	Namespace  string   `json:"namespace"` // of the ctrd, raw and ctr ways
	Image      string   `json:"image"`
	Args       []string `json:"args"`
	Entrypoint []string `json:"entrypoint"`
	N          int      `json:"n"`
	Warmup     int      `json:"warmup"`
	Runtime    string   `json:"runtime"`
	Init       string   `json:"init,omitempty"`
	Ctr        string   `json:"ctr"`
	CtrVersion string   `json:"ctrVersion"`
	Daemon     string   `json:"daemonVersion"`
	Modes      []string `json:"modes"`

	// The fnlet way.
	Kubeconfig       string         `json:"-"`
	KubeNamespace    string         `json:"kubeNamespace"`
	Node             string         `json:"node"`
	Manager          string         `json:"manager"`
	ManagerNamespace string         `json:"managerNamespace"` // containerd namespace of the manager
	ManagerLogDir    string         `json:"managerLogDir"`
	ManagerLog       string         `json:"managerLog"`
	MaxCalls         int            `json:"maxCalls"`
	ContainerdState  string         `json:"containerdState"`
	Concurrency      int            `json:"concurrency"`
	ConcurrencyN     int            `json:"concurrencyN"`
	Throughput       []int          `json:"throughput"`
	Duration         time.Duration  `json:"durationNs"`
	ProfileSeconds   int            `json:"profileSeconds"`
	ProfileOut       string         `json:"profileOut"`
	ManagerArgs      []string       `json:"managerArgs,omitempty"`
	CacheCalls       int            `json:"cacheCalls,omitempty"`
	Procs            map[string]int `json:"procs,omitempty"` // name -> pid, for CPU accounting
	// The fnlet-warm way and the refill measurement.
	PoolSize       int     `json:"poolSize"`
	PoolRefillRate float64 `json:"poolRefillRate"` // the manager's --pool-refill-rate
	WarmRate       float64 `json:"warmRate,omitempty"`
	WarmN          int     `json:"warmN"`
	RefillN        int     `json:"refillN"`
	// The pod way.
	PodN    int    `json:"podN"`
	PodNode string `json:"podNode"`
}

func (c config) has(mode string) bool { return slices.Contains(c.Modes, mode) }

// hasFnlet: a way through the manager (fnlet or fnlet-warm) is measured.
func (c config) hasFnlet() bool { return c.has("fnlet") || c.has("fnlet-warm") }

// sample is one measured call: its total and its phases, in order.
type sample struct {
	ID     string        `json:"id,omitempty"` // the object's name (fnlet, pod)
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

func (t *timer) lap(name string) { t.lapAt(name, time.Now()) }

// lapAt ends a phase at a time observed earlier (e.g. a watch event);
// phases never go backwards.
func (t *timer) lapAt(name string, at time.Time) {
	if at.Before(t.last) {
		at = t.last
	}
	t.phases = append(t.phases, phase{name, at.Sub(t.last)})
	t.last = at
}

func (t *timer) sample() sample { return sample{Total: t.last.Sub(t.start), Phases: t.phases} }

// way is one way of running a call.
type way interface {
	name() string
	// call runs one full call with a unique id and reports its timing.
	call(ctx context.Context, id string) (sample, error)
	close()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func main() {
	var cfg config
	var out, cpuProfile, modes, throughput string
	var timeout time.Duration
	flag.StringVar(&cfg.Address, "address", os.Getenv("FNLET_CONTAINERD_ADDRESS"), "containerd socket (default $FNLET_CONTAINERD_ADDRESS)")
	flag.StringVar(&cfg.Namespace, "namespace", "fnlet", "containerd namespace of the ctrd, raw and ctr ways (holding the image)")
	flag.StringVar(&cfg.Image, "image", "localhost/fnlet/testfn:v1", "image to run; must be present")
	flag.IntVar(&cfg.N, "n", envInt("BENCH_N", 30), "measured sequential calls per way (default $BENCH_N or 30)")
	flag.IntVar(&cfg.Warmup, "warmup", 3, "unmeasured rounds first")
	flag.StringVar(&cfg.Runtime, "runtime", "runc", "OCI runtime binary: runc or crun")
	flag.StringVar(&cfg.Init, "init", "", "fnlet-init for the ctrd way (as the manager runs calls); empty runs without")
	flag.StringVar(&cfg.Ctr, "ctr", "auto", "ctr binary; auto picks the one matching the daemon version")
	flag.StringVar(&modes, "modes", "ctrd,raw,ctr", "ways to measure, comma-separated: fnlet, fnlet-warm, pod, ctrd, ctrd-warm, ctrd-podnet (network: pod on a throwaway bridge), raw, ctr, or raw+KNOB+... (knobs spec, seccomp, files, kill, metrics, load: see rawWay)")
	flag.StringVar(&out, "out", "bench-results", "directory for the JSON results")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process (samples labelled way=...)")
	flag.DurationVar(&timeout, "timeout", 40*time.Minute, "bound on the whole run")

	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the apiserver (fnlet and pod ways)")
	flag.StringVar(&cfg.KubeNamespace, "kube-namespace", "fnlet-bench", "Kubernetes namespace of the FunctionCalls and Pods (created if missing)")
	flag.StringVar(&cfg.Node, "node", "", "node name of the manager this program starts (fnlet way)")
	flag.StringVar(&cfg.Manager, "manager", "", "manager binary (built from ./cmd/manager) to start for the fnlet way")
	flag.StringVar(&cfg.ManagerNamespace, "manager-namespace", "fnlet-bench", "containerd namespace of the manager (must differ from -namespace: its orphan collector removes fnlet-labelled containers it has no call for)")
	flag.StringVar(&cfg.ManagerLogDir, "manager-log-dir", "", "the manager's --log-dir (default: a temporary directory)")
	flag.StringVar(&cfg.ManagerLog, "manager-log", "", "file for the manager's own output (default: in the results dir)")
	flag.IntVar(&cfg.MaxCalls, "max-calls", 64, "the manager's --max-calls")
	flag.StringVar(&cfg.ContainerdState, "containerd-state", "", "containerd's state dir, to count leftover shim bundles (optional)")
	flag.IntVar(&cfg.Concurrency, "concurrency", 8, "concurrency of the fnlet latency run")
	flag.IntVar(&cfg.ConcurrencyN, "concurrency-n", 0, "calls of the fnlet concurrency run (default -n)")
	flag.StringVar(&throughput, "throughput", "8,32", "concurrencies of the fnlet throughput runs (empty: none)")
	flag.DurationVar(&cfg.Duration, "duration", durationEnv("BENCH_DURATION", 60*time.Second), "length of each throughput run (default $BENCH_DURATION or 60s)")
	flag.IntVar(&cfg.ProfileSeconds, "profile-seconds", 20, "seconds of sequential fnlet calls under the manager's CPU profiler (needs --pprof-bind-address in the manager; 0: none)")
	flag.StringVar(&cfg.ProfileOut, "profile-out", "", "where to write the manager's CPU profile (default: in the results dir)")
	var managerArgs, procs string
	flag.StringVar(&procs, "procs", "", "other processes whose CPU time is reported per load run: name=pid,... (e.g. kube-apiserver, etcd, containerd)")
	flag.StringVar(&managerArgs, "manager-args", "", "extra manager flags, space-separated (ablations, e.g. \"--workers 32\")")
	flag.IntVar(&cfg.CacheCalls, "cache-calls", 0, "after the load runs, bring the manager's cache up to this many finished calls and report its RSS (0: skip)")
	flag.IntVar(&cfg.PoolSize, "pool-size", 4, "size of the FunctionPool of the fnlet-warm way")
	flag.Float64Var(&cfg.PoolRefillRate, "pool-refill-rate", 5, "the manager's --pool-refill-rate (pre-starts per second)")
	flag.Float64Var(&cfg.WarmRate, "warm-rate", 0, "rate of the paced fnlet-warm run, calls/s (0: half the refill capacity or pacing, whichever is lower)")
	flag.IntVar(&cfg.WarmN, "warm-n", 0, "calls of the paced fnlet-warm run and of its cold twin (default -n; 0 with -n 0)")
	flag.IntVar(&cfg.RefillN, "refill-n", 16, "containers pre-started to measure the refill capacity, with fnlet-warm or ctrd-warm (0: skip)")
	flag.IntVar(&cfg.PodN, "pod-n", envInt("BENCH_POD_N", 10), "pods of the pod way, spread over the sequential rounds")
	flag.StringVar(&cfg.PodNode, "pod-node", "", "node the pods must run on (kubernetes.io/hostname)")
	flag.StringVar(&podSkipped, "pod-skipped", podSkipped, "line printed instead of the pod row when the pod way is not among -modes")
	flag.Parse()
	cfg.Args = flag.Args()
	cfg.ManagerArgs = strings.Fields(managerArgs)
	cfg.Procs = map[string]int{}
	for _, kv := range strings.Split(procs, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			if pid, err := strconv.Atoi(v); err == nil && pid > 0 {
				cfg.Procs[k] = pid
			}
		}
	}
	cfg.Modes = strings.Split(modes, ",")
	if cfg.ConcurrencyN == 0 {
		cfg.ConcurrencyN = cfg.N
	}
	if cfg.WarmN == 0 {
		cfg.WarmN = cfg.N
	}
	for _, s := range strings.Split(throughput, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		c, err := strconv.Atoi(s)
		if err != nil || c < 1 {
			fmt.Fprintf(os.Stderr, "fnlet-bench: -throughput %q: want comma-separated concurrencies\n", throughput)
			os.Exit(2)
		}
		cfg.Throughput = append(cfg.Throughput, c)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := run(ctx, cfg, out, cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "fnlet-bench:", err)
		os.Exit(1)
	}
}

func durationEnv(name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return d
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return def
}

func validate(cfg config) error {
	if cfg.Address == "" {
		return errors.New("no containerd address: set FNLET_CONTAINERD_ADDRESS or -address")
	}
	if cfg.Runtime != "runc" && cfg.Runtime != "crun" {
		return fmt.Errorf("-runtime %q: want runc or crun", cfg.Runtime)
	}
	if cfg.N < 1 {
		return fmt.Errorf("-n %d: want at least 1", cfg.N)
	}
	if cfg.has("fnlet-warm") && cfg.PoolSize < 1 {
		return fmt.Errorf("-pool-size %d: the fnlet-warm way needs a pool of at least 1", cfg.PoolSize)
	}
	if cfg.hasFnlet() {
		switch {
		case cfg.Kubeconfig == "":
			return errors.New("the fnlet way needs -kubeconfig (or $KUBECONFIG)")
		case cfg.Manager == "":
			return errors.New("the fnlet way needs -manager (a binary built from ./cmd/manager)")
		case cfg.Node == "":
			return errors.New("the fnlet way needs -node (the manager's node name)")
		case cfg.ManagerNamespace == cfg.Namespace && (cfg.has("ctrd")):
			return fmt.Errorf("-manager-namespace and -namespace are both %q: the manager's orphan collector would remove the ctrd way's containers", cfg.Namespace)
		}
	}
	if cfg.has("pod") {
		if cfg.Kubeconfig == "" || cfg.PodNode == "" {
			return errors.New("the pod way needs -kubeconfig and -pod-node")
		}
	}
	return nil
}

// result is everything one run measured; it is printed and saved.
type result struct {
	Time      time.Time           `json:"time"`
	Config    config              `json:"config"`
	LoadStart string              `json:"loadAvgStart"`
	LoadEnd   string              `json:"loadAvgEnd"`
	WallNs    time.Duration       `json:"wallNs"` // of the sequential rounds
	Seq       map[string][]sample `json:"-"`      // saved as results
	Order     []string            `json:"order"`

	Conc       *loadRun      `json:"concurrency,omitempty"`
	AfterFill  *loadRun      `json:"afterCacheFill,omitempty"`
	Throughput []*loadRun    `json:"throughput,omitempty"`
	Manager    *managerStats `json:"manager,omitempty"`
	Refill     *refillStats  `json:"refill,omitempty"`
	Yield      *refillYield  `json:"refillYield,omitempty"`
	Warm       *warmStats    `json:"warm,omitempty"`
	Writes     *writeStats   `json:"writes,omitempty"`
	Logs       *logRun       `json:"logs,omitempty"`
	Leftovers  []leftovers   `json:"leftovers,omitempty"`
	FIFODirs0  int           `json:"fifoDirsStart"` // machine-wide, see fifoDir
	FIFODirs1  int           `json:"fifoDirsEnd"`
	Notes      []string      `json:"notes,omitempty"`
	Profile    string        `json:"managerProfile,omitempty"`
	// LoadProfiles are CPU profiles of the manager under throughput load.
	LoadProfiles []string `json:"managerLoadProfiles,omitempty"`
}

func (r *result) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.Notes = append(r.Notes, s)
	fmt.Fprintln(os.Stderr, "note:", s)
}

func run(ctx context.Context, cfg config, out, cpuProfile string) (err error) {
	if err := validate(cfg); err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, cfg.Namespace)
	res := &result{Time: time.Now().UTC(), LoadStart: loadAvg(), Seq: map[string][]sample{}, FIFODirs0: countDir(fifoDir)}

	v, err := daemonVersion(ctx, cfg.Address)
	if err != nil {
		return err
	}
	cfg.Daemon = v
	if cfg.Entrypoint, err = imageEntrypoint(ctx, cfg); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}

	runID := randHex(4)
	var ways []way
	var sys *system // the manager, the apiserver client and the watches
	defer func() {
		for _, w := range ways {
			w.close()
		}
		if sys != nil {
			// Bounded cleanup, even when ctx is done (interrupt, timeout).
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
			defer cancel()
			if cerr := sys.close(cctx, res); cerr != nil {
				fmt.Fprintln(os.Stderr, "fnlet-bench: cleanup:", cerr)
				if err == nil {
					err = cerr
				}
			}
		}
	}()
	if (cfg.has("fnlet-warm") || cfg.has("ctrd-warm")) && cfg.RefillN > 0 && cfg.Init != "" {
		// Before the manager's pool and the ways' containers exist.
		fmt.Fprintf(os.Stderr, "refill capacity: pre-starting %d containers one at a time, then %d two at a time\n", cfg.RefillN, cfg.RefillN)
		if res.Refill, err = measureRefill(ctx, cfg, cfg.RefillN); err != nil {
			return fmt.Errorf("refill capacity: %w", err)
		}
		fmt.Fprintf(os.Stderr, "refill beside a running call: a call busy on every CPU for %s, alone, then beside pre-starts\n", yieldSpin)
		if res.Yield, err = measureRefillYield(ctx, cfg, yieldSpin); err != nil {
			return fmt.Errorf("refill beside a running call: %w", err)
		}
	}
	if cfg.hasFnlet() || cfg.has("pod") {
		if sys, err = newSystem(ctx, &cfg, runID, out); err != nil {
			return err
		}
	}
	for _, m := range cfg.Modes {
		var w way
		var err error
		switch base, _, _ := strings.Cut(m, "+"); {
		case m == "fnlet":
			w = &fnletWay{sys: sys}
		case m == "fnlet-warm":
			w = &fnletWay{sys: sys, warm: true}
		case m == "pod":
			w = &podWay{sys: sys}
		case m == "ctrd":
			w, err = newCtrdWay(ctx, cfg)
		case m == "ctrd-warm":
			w, err = newCtrdWarmWay(ctx, cfg)
		case m == "ctrd-podnet":
			w, err = newCtrdPodNetWay(ctx, cfg)
		case base == "raw":
			w, err = newRawWay(ctx, cfg, m)
		case m == "ctr":
			w, err = newCtrWay(ctx, &cfg)
		default:
			err = fmt.Errorf("unknown way %q (want fnlet, fnlet-warm, pod, ctrd, ctrd-warm, ctrd-podnet, raw, ctr)", m)
		}
		if err != nil {
			return fmt.Errorf("set up %s: %w", m, err)
		}
		ways = append(ways, w)
		res.Order = append(res.Order, w.name())
	}
	res.Config = cfg
	fmt.Printf("containerd %s at %s, runtime %s, image %s %q\n", cfg.Daemon, cfg.Address, cfg.Runtime, cfg.Image, cfg.Args)
	fmt.Printf("load average at start: %s (%d CPUs)\n", res.LoadStart, numCPU())

	// Warm-up doubles as a preflight: a way that cannot run a call at all
	// (crun on some hosts) is reported and the benchmark stops cleanly.
	var failed []string
	for r := 0; r < max(cfg.Warmup, 1); r++ {
		for _, w := range ways {
			if slices.Contains(failed, w.name()) || (w.name() == "pod" && r > 0) {
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

	// Sequential, round-robin. Pods are few and slow: one every podEvery
	// rounds, so they disturb the other ways evenly.
	podEvery := 0
	if cfg.has("pod") {
		podEvery = max(1, cfg.N/max(cfg.PodN, 1))
	}
	if sys != nil {
		sys.mark("sequential")
	}
	started := time.Now()
	for i := 0; i < cfg.N; i++ {
		for k := range ways {
			w := ways[(i+k)%len(ways)] // rotate who goes first
			if w.name() == "pod" && (i%podEvery != 0 || len(res.Seq["pod"]) >= cfg.PodN) {
				continue
			}
			var s sample
			var err error
			pprof.Do(ctx, pprof.Labels("way", w.name()), func(ctx context.Context) {
				s, err = oneCall(ctx, w, fmt.Sprintf("%s-%d", runID, i))
			})
			if err != nil {
				return fmt.Errorf("%s call %d: %w", w.name(), i, err)
			}
			res.Seq[w.name()] = append(res.Seq[w.name()], s)
		}
	}
	res.WallNs = time.Since(started)
	if sys != nil {
		sys.mark("sequential-end")
	}

	if cfg.has("fnlet-warm") {
		if err := sys.warmPhases(ctx, res); err != nil {
			return err
		}
	}
	if cfg.has("fnlet") {
		var raw way
		for _, w := range ways {
			if w.name() == "raw" {
				raw = w
			}
		}
		if err := sys.loadPhases(ctx, res, raw); err != nil {
			return err
		}
		sys.logPhase(ctx, res)
	}
	res.LoadEnd = loadAvg()
	var cleanupErr error
	if sys != nil {
		// Deletes the calls, waits for the manager's cleanup, counts leftovers.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		cleanupErr = sys.close(cctx, res)
		cancel()
		sys = nil
		if cleanupErr != nil {
			res.note("cleanup: %v", cleanupErr)
		}
	}
	// The warm way's spare containers go first: it shares its namespace
	// with the ctrd way, whose leftovers would count them.
	for _, w := range ways {
		if ww, ok := w.(*ctrdWarmWay); ok {
			if err := ww.drain(context.WithoutCancel(ctx)); err != nil {
				res.note("drain the warm pool: %v", err)
			}
		}
	}
	for _, w := range ways {
		if ww, ok := w.(*ctrdWarmWay); ok {
			w = ww.ctrdWay
		}
		if cw, ok := w.(*ctrdWay); ok {
			res.Leftovers = append(res.Leftovers, countLeftovers(context.WithoutCancel(ctx), cfg, cfg.Namespace, "", cw.ioRoot))
		}
	}

	res.FIFODirs1 = countDir(fifoDir)
	report(os.Stdout, res)
	path, err := writeJSON(out, res)
	if err != nil {
		return err
	}
	fmt.Printf("\nresults: %s\n", path)
	return cleanupErr
}

func oneCall(ctx context.Context, w way, id string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return w.call(ctx, id)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
