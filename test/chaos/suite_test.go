// Package chaos injects faults into a running fnlet and counts what users
// would see: calls lost, calls run twice, objects leaked, wrong statuses.
//
// It runs on real components, like test/integration (whose approach it
// reuses; a test package cannot be imported): an envtest kube-apiserver +
// etcd whose apiserver can be stopped and started again on the same port
// and certificates, the real manager binary run as subprocesses (SIGKILLed
// at will) with a kubeconfig bound to the generated ClusterRole, and a
// containerd of its own that the tests SIGKILL and restart.
//
// `make chaos` (hack/chaos.sh) starts that private containerd
// (FNLET_RUN=/run/fnlet-chaos, FNLET_STATE=/var/lib/fnlet-chaos: nothing
// another test uses) and sets:
//
//	FNLET_CHAOS_CONTAINERD_PIDFILE  PID file of the chaos containerd (enables the suite)
//	FNLET_CONTAINERD_ADDRESS        its socket
//	FNLET_CHAOS_NAMESPACE           containerd namespace of the calls (fnlet-chaos)
//	KUBEBUILDER_ASSETS              kube-apiserver + etcd
//	FNLET_CHAOS_REPORT              where the result table is written
//
// Without FNLET_CHAOS_CONTAINERD_PIDFILE every test skips: the suite kills
// the containerd it is given, so it never runs against a shared one (such as
// the one `make test` starts).
package chaos

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
	"github.com/fnlet/fnlet/internal/testenv/managerproc"
)

const (
	busyboxImage = "localhost/fnlet/busybox:v1"
)

// env is the suite's shared environment, set up once in TestMain.
var env struct {
	skip        string
	te          *envtest.Environment
	k8s         client.WithWatch
	kubeconfig  string // the manager's: bound to the generated ClusterRole only
	managerBin  string
	containerd  string // socket
	ctrdNS      string
	ctrdPIDFile string
	workDir     string
	starts      *startTracker
	baseLeases  map[string]bool
	calls       calls.Env
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	env.containerd = os.Getenv("FNLET_CONTAINERD_ADDRESS")
	env.ctrdPIDFile = os.Getenv("FNLET_CHAOS_CONTAINERD_PIDFILE")
	env.ctrdNS = envOr("FNLET_CHAOS_NAMESPACE", "fnlet-chaos")
	flag.Parse()
	switch {
	case testing.Short():
		fmt.Println("chaos suite skipped: -short (it needs kube-apiserver, containerd of its own and the manager binary)")
		env.skip = "-short: needs kube-apiserver, a containerd of its own and the manager binary"
		return m.Run()
	case env.ctrdPIDFile == "":
		// Not a missing daemon: the suite is opt-in, since it kills the
		// containerd it is given. `make test` never sets this.
		fmt.Println("chaos suite not enabled: run `make chaos` (hack/chaos.sh), which starts a containerd of its own and sets FNLET_CHAOS_CONTAINERD_PIDFILE")
		return m.Run()
	case os.Getenv("KUBEBUILDER_ASSETS") == "":
		env.skip = "KUBEBUILDER_ASSETS is not set (`hack/build-k8s.sh --apiserver-only --print-assets`; `make chaos` sets it)"
	case env.containerd == "":
		env.skip = "FNLET_CONTAINERD_ADDRESS is not set (`make chaos` sets it)"
	}
	if env.skip != "" {
		fmt.Println("chaos suite skipped:", env.skip)
		return m.Run()
	}
	// Restartable: the outage test stops and starts the apiserver.
	api, err := kubeapi.StartSuite("fnlet-chaos", kubeapi.Restartable())
	if err != nil {
		fmt.Println(err)
		return 1
	}
	env.workDir, env.managerBin = api.Dir, api.ManagerBin
	defer api.Stop()
	env.te, env.k8s, env.kubeconfig = api.Env, api.Client, api.ManagerKubeconfig
	env.calls = calls.Env{Client: api.Client}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env.starts = newStartTracker(env.containerd, env.ctrdNS)
	go env.starts.run(ctx)
	if err := env.starts.waitConnected(30 * time.Second); err != nil {
		fmt.Println("containerd events:", err)
		return 1
	}
	if env.baseLeases, err = leaseIDs(ctx); err != nil {
		fmt.Println("leases:", err)
		return 1
	}

	code := m.Run()
	printReport()
	return code
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func requireChaos(t *testing.T) {
	t.Helper()
	if env.ctrdPIDFile == "" {
		t.Skip("chaos suite not enabled: run `make chaos`")
	}
	if env.skip != "" {
		testenv.Missing(t, "%s", env.skip)
	}
}

func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	return env.calls.Namespace(t, prefix)
}

// ---- the manager process ----

// manager is one node's manager; Restart keeps node, flags, log dir and
// metrics port, like a DaemonSet pod restarted in place.
type manager struct {
	*managerproc.Process
	t      *testing.T
	node   string
	logDir string
	port   int
}

// startManager runs the manager binary for node with the suite's defaults
// and extra flags (later flags win).
func startManager(t *testing.T, node string, extra ...string) *manager {
	t.Helper()
	m := &manager{t: t, node: node, logDir: t.TempDir(), port: freePort(t)}
	m.Process = managerproc.Start(t, managerproc.Config{
		Binary: env.managerBin, Kubeconfig: env.kubeconfig, LogDir: env.workDir, Name: node, TailLines: 20,
		Args: append([]string{
			"--node-name", node,
			"--containerd-address", env.containerd,
			"--containerd-namespace", env.ctrdNS,
			"--log-dir", m.logDir,
			"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", m.port),
			"--metrics-secure=false", // scraped over plain HTTP on loopback
			"--health-probe-bind-address", "0",
			"--kill-grace", "1s",
		}, extra...),
	})
	t.Cleanup(func() {
		if t.Failed() {
			m.Stop()
			m.saveLogs()
		}
	})
	return m
}

// saveLogs copies every incarnation's log to $FNLET_CHAOS_ARTIFACTS (make
// chaos keeps them under its log directory), for a failed test.
func (m *manager) saveLogs() {
	dir := os.Getenv("FNLET_CHAOS_ARTIFACTS")
	if dir == "" {
		return
	}
	dir = filepath.Join(dir, strings.ReplaceAll(m.t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	for _, p := range m.LogPaths() {
		if b, err := os.ReadFile(p); err == nil {
			_ = os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o644)
		}
	}
	m.t.Logf("manager %s logs saved in %s", m.node, dir)
}

// metrics scrapes the manager's Prometheus endpoint: name → value of the
// unlabelled series.
func (m *manager) metrics() (map[string]float64, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", m.port))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// metric waits until the metrics endpoint answers and returns one value.
func (m *manager) metric(name string) float64 {
	m.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, err := m.metrics()
		if err == nil {
			if v, ok := ms[name]; ok {
				return v
			}
			err = fmt.Errorf("no series %s", name)
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("metric %s of manager %s: %v", name, m.node, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rssBytes is the manager's resident set size (VmRSS).
func (m *manager) rssBytes() int64 {
	m.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.Pid()))
	if err != nil {
		m.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	m.t.Fatal("no VmRSS")
	return 0
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ---- the chaos containerd ----

func containerdPID(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(env.ctrdPIDFile)
	if err != nil {
		t.Fatalf("chaos containerd PID file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("chaos containerd PID file %s: %v", env.ctrdPIDFile, err)
	}
	return pid
}

// killContainerd SIGKILLs the chaos containerd and waits until it is gone.
// Its shims, and so the calls, keep running.
func killContainerd(t *testing.T) {
	t.Helper()
	pid := containerdPID(t)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill containerd %d: %v", pid, err)
	}
	for i := 0; i < 100; i++ {
		// Not our child (setsid by containerd-up.sh): it is gone once kill -0
		// fails or it is a zombie of its reaper.
		if err := syscall.Kill(pid, 0); err != nil || isZombie(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("containerd %d still alive 5s after SIGKILL", pid)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// startContainerd starts the chaos containerd again, on the same root and
// state (hack/containerd-up.sh with the environment make chaos set).
func startContainerd(t *testing.T) {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot(), "hack", "containerd-up.sh"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("restart containerd: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(lastLine(string(out))); got != env.containerd {
		t.Fatalf("containerd-up.sh restarted the daemon on %q, the suite uses %q: is FNLET_RUN the one make chaos set?", got, env.containerd)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// ---- the report ----

// row is one line of the table make chaos prints.
type row struct {
	Fault                                string
	Faults, Calls, Lost, Dups, Leak, Bad int
	Failed                               bool
	Duration                             time.Duration
	started                              time.Time
	name                                 string
	mu                                   sync.Mutex
	extra                                []string
}

// testStarted is when the running test began (tests run one at a time):
// leases made since then are that test's.
var testStarted time.Time

var report struct {
	mu   sync.Mutex
	rows []*row
}

// newRow starts a table row for a fault; it is recorded when the test ends,
// with whatever was counted so far if the test stopped early.
func newRow(t *testing.T, fault string) *row {
	r := &row{Fault: fault, started: time.Now(), name: t.Name()}
	testStarted = r.started
	t.Cleanup(func() {
		r.Failed = t.Failed()
		r.Duration = time.Since(r.started).Round(time.Second)
		report.mu.Lock()
		report.rows = append(report.rows, r)
		report.mu.Unlock()
	})
	return r
}

// notef adds a figure to the row's notes (printed under the table).
func (r *row) notef(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.extra = append(r.extra, fmt.Sprintf(format, args...))
}

func printReport() {
	report.mu.Lock()
	defer report.mu.Unlock()
	if len(report.rows) == 0 {
		return
	}
	sort.SliceStable(report.rows, func(i, j int) bool { return report.rows[i].Fault < report.rows[j].Fault })
	var b strings.Builder
	fmt.Fprintf(&b, "\nfnlet chaos results (%s)\n", time.Now().UTC().Format(time.RFC3339))
	scale := "at the issue's targets: 100 calls under manager SIGKILLs, 50 under the apiserver outage, 1000 for leaks"
	if v := os.Getenv("FNLET_CHAOS_LEAK_CALLS"); v != "" && v != "1000" {
		scale = "SCALED: leak run with " + v + " calls instead of 1000 (FNLET_CHAOS_LEAK_CALLS)"
	}
	fmt.Fprintf(&b, "counts %s\n", scale)
	fmt.Fprintf(&b, "%-44s %7s %6s %5s %5s %6s %6s %6s %s\n", "fault", "faults", "calls", "lost", "dups", "leaked", "wrong", "time", "result")
	fmt.Fprintf(&b, "%-44s %7s %6s %5s %5s %6s %6s %6s %s\n", "", "injected", "run", "", "", "objects", "status", "", "")
	var tot row
	for _, r := range report.rows {
		res := "ok"
		if r.Failed {
			res = "FAIL"
		}
		fmt.Fprintf(&b, "%-44s %7d %6d %5d %5d %6d %6d %6s %s\n", r.Fault, r.Faults, r.Calls, r.Lost, r.Dups, r.Leak, r.Bad, r.Duration, res)
		tot.Faults += r.Faults
		tot.Calls += r.Calls
		tot.Lost += r.Lost
		tot.Dups += r.Dups
		tot.Leak += r.Leak
		tot.Bad += r.Bad
	}
	fmt.Fprintf(&b, "%-44s %7d %6d %5d %5d %6d %6d\n", "total", tot.Faults, tot.Calls, tot.Lost, tot.Dups, tot.Leak, tot.Bad)
	fmt.Fprintf(&b, "(lost, dups, leaked and wrong must all be 0)\n")
	for _, r := range report.rows {
		if len(r.extra) > 0 {
			fmt.Fprintf(&b, "\n%s (%s):\n", r.Fault, r.name)
			for _, e := range r.extra {
				fmt.Fprintf(&b, "  - %s\n", e)
			}
		}
	}
	fmt.Print(b.String())
	if p := os.Getenv("FNLET_CHAOS_REPORT"); p != "" {
		_ = os.WriteFile(p, []byte(b.String()), 0o644)
	}
}

// ---- small helpers ----

func randDur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rand.Int64N(int64(hi-lo)+1))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
