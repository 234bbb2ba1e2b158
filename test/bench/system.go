package main

// The system-level ways (fnlet, pod) and the phases only they have:
// concurrency, throughput, profile, writes per call, cleanup and leftovers.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

const (
	runLabel = "bench.fnlet.dev/run"
	// finalizer is the manager's (controllers.Finalizer); not imported, so
	// the benchmark sees the system only through the API.
	finalizer = "fnlet.dev/container"
)

// system is what the fnlet and pod ways share: the apiserver client, the
// watches, the manager process and the metric snapshots.
type system struct {
	cfg   *config
	runID string
	out   string

	kc      client.WithWatch
	rest    *rest.Config
	httpc   *http.Client
	mgr     *managerProc
	fcs     *tracker
	pods    *tracker
	stopW   context.CancelFunc
	wDone   sync.WaitGroup
	created atomic.Int64 // FunctionCalls created

	// The fnlet-warm way: the FunctionPool of this run (empty without the
	// way), and how many of its calls ran in one of its containers.
	pool       string
	warmHits   atomic.Int64
	warmMisses atomic.Int64

	mu    sync.Mutex
	marks map[string]snapshot
}

// snapshot is the state of the counters at one point of the run.
type snapshot struct {
	At        time.Time
	Proc      procStats
	MgrMetric promSet
	APIMetric promSet
	Created   int64
}

func newSystem(ctx context.Context, cfg *config, runID, out string) (*system, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = -1, 0 // no client-side throttling: measure the server
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := fnletv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	kc, err := client.NewWithWatch(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	httpc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, err
	}
	s := &system{cfg: cfg, runID: runID, out: out, kc: kc, rest: rc, httpc: httpc, marks: map[string]snapshot{}}
	ok := false
	defer func() {
		if !ok {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_ = s.close(cctx, &result{})
		}
	}()
	if err := s.ensureNamespace(ctx); err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopW = stop
	sel := map[string]string{runLabel: runID}
	var ready []chan struct{}
	if cfg.hasFnlet() {
		s.fcs = newTracker(kc, cfg.KubeNamespace, sel, func() client.ObjectList { return &fnletv1.FunctionCallList{} },
			observeCall, callWriteKind)
		ch := make(chan struct{})
		ready = append(ready, ch)
		s.wDone.Go(func() { s.fcs.run(wctx, ch) })
	}
	if cfg.has("pod") {
		if err := s.waitServiceAccount(ctx); err != nil {
			return nil, err
		}
		s.pods = newTracker(kc, cfg.KubeNamespace, sel, func() client.ObjectList { return &corev1.PodList{} },
			observePod, nil)
		ch := make(chan struct{})
		ready = append(ready, ch)
		s.wDone.Go(func() { s.pods.run(wctx, ch) })
	}
	for _, ch := range ready {
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
			return nil, errors.New("could not open a watch on the apiserver within 30s")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if cfg.hasFnlet() {
		if s.mgr, err = startManager(ctx, cfg, out); err != nil {
			return nil, err
		}
		fmt.Printf("manager: pid %d, node %s, containerd namespace %s, log-dir %s, metrics %s, pprof %s, log %s\n",
			s.mgr.cmd.Process.Pid, cfg.Node, cfg.ManagerNamespace, s.mgr.logDir, s.mgr.metricsAddr, orNone(s.mgr.pprofAddr), s.mgr.logPath)
	}
	if cfg.has("fnlet-warm") {
		if err := s.createPool(ctx); err != nil {
			return nil, err
		}
	}
	ok = true
	return s, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (s *system) ensureNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.cfg.KubeNamespace}}
	err := s.kc.Create(ctx, ns)
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", s.cfg.KubeNamespace, err)
	}
	return nil
}

// waitServiceAccount waits for the namespace's default ServiceAccount,
// without which the apiserver refuses Pods (a new namespace gets it from
// the controller manager within a second or so).
func (s *system) waitServiceAccount(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var sa corev1.ServiceAccount
		err := s.kc.Get(ctx, types.NamespacedName{Namespace: s.cfg.KubeNamespace, Name: "default"}, &sa)
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			return fmt.Errorf("service account %s/default (the pod way needs it): %w", s.cfg.KubeNamespace, err)
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// mark records the counters under a name; phases are differences of marks.
func (s *system) mark(name string) {
	snap := snapshot{At: time.Now(), Created: s.created.Load()}
	if s.mgr != nil {
		snap.Proc, _ = readProc(s.mgr.cmd.Process.Pid)
		snap.MgrMetric, _ = scrape(s.mgr.metricsURL(), http.DefaultClient)
	}
	snap.APIMetric, _ = scrape(strings.TrimSuffix(s.rest.Host, "/")+"/metrics", s.httpc)
	s.mu.Lock()
	s.marks[name] = snap
	s.mu.Unlock()
}

func (s *system) snap(name string) (snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.marks[name]
	return m, ok
}

// ---- the fnlet and fnlet-warm ways ----

// fnletWay is a FunctionCall from create to Succeeded seen on the watch.
// With warm set (the fnlet-warm way) the call names the run's pool and has
// its profile (read-only rootfs), so the manager runs it in a pre-started
// container; the fnlet way's calls do not fit the pool (their rootfs is
// writable) and run cold, which each call checks in status.pool.
type fnletWay struct {
	sys  *system
	warm bool
}

func (w *fnletWay) name() string {
	if w.warm {
		return "fnlet-warm"
	}
	return "fnlet"
}

func (w *fnletWay) close() {}

func (w *fnletWay) call(ctx context.Context, id string) (sample, error) {
	s := w.sys
	name := "fc-" + id
	if w.warm {
		name = "fcw-" + id
	}
	wt := s.fcs.register(name)
	defer s.fcs.unregister(name)
	fc := &fnletv1.FunctionCall{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.cfg.KubeNamespace, Labels: map[string]string{runLabel: s.runID}},
		Spec: fnletv1.FunctionCallSpec{Image: s.cfg.Image, ImagePullPolicy: corev1.PullNever, NodeName: s.cfg.Node,
			Args: s.cfg.Args},
	}
	if w.warm {
		fc.Spec.Pool = s.pool
		fc.Spec.SecurityContext = &fnletv1.CallSecurityContext{ReadOnlyRootFilesystem: ptr.To(true)}
	}
	t := newTimer()
	if err := s.kc.Create(ctx, fc); err != nil {
		return sample{}, fmt.Errorf("create %s: %w", name, err)
	}
	s.created.Add(1)
	t.lap("create")
	if err := await(ctx, wt, "FunctionCall "+name+" Succeeded"); err != nil {
		return sample{}, fmt.Errorf("%w; last seen: %s", err, s.describeCall(name))
	}
	seen := s.fcs.seenAt(wt)
	// Each mark is the watch event of one of the manager's writes.
	for _, m := range []string{"claimed", "finalizer", "running", "succeeded"} {
		if at, ok := seen[m]; ok {
			t.lapAt(m, at)
		} else {
			t.lapAt(m, t.last) // not seen separately: a zero-length phase
		}
	}
	smp := t.sample()
	smp.ID = name
	_, warm := seen[poolMark(s.pool)]
	switch {
	case w.warm && warm:
		s.warmHits.Add(1)
	case w.warm:
		// A miss ran cold; it stays in the way's samples, as a user would
		// have waited for it, and lowers the hit rate.
		s.warmMisses.Add(1)
	case s.pool != "" && warm:
		return sample{}, fmt.Errorf("FunctionCall %s of the cold way ran in pool %s: the pool must not fit cold calls", name, s.pool)
	}
	return smp, nil
}

// describeCall is what the watch last showed of a call, for errors.
func (s *system) describeCall(name string) string {
	o, ok := s.fcs.lastSeen(name)
	fc, _ := o.(*fnletv1.FunctionCall)
	if !ok || fc == nil {
		return "nothing"
	}
	st := fc.Status
	var conds []string
	for _, c := range st.Conditions {
		conds = append(conds, fmt.Sprintf("%s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message))
	}
	return fmt.Sprintf("phase %q reason %q message %q node %q container %q pool %q attempts %d finalizers %v conditions [%s]",
		st.Phase, st.Reason, st.Message, st.NodeName, st.ContainerID, st.Pool, st.Attempts, fc.Finalizers, strings.Join(conds, "; "))
}

// poolMark is the watch mark of a call that ran in pool (status.pool).
func poolMark(pool string) string { return "pool=" + pool }

// createPool makes the run's FunctionPool for the fnlet-warm way: the fnlet
// way's image, the manager's default limits (so a claim needs no Update),
// a read-only rootfs (so the fnlet way's calls do not fit it), on the
// manager's node; and waits until the node reports it full.
func (s *system) createPool(ctx context.Context) error {
	s.pool = "bench-" + s.runID
	pool := &fnletv1.FunctionPool{
		ObjectMeta: metav1.ObjectMeta{Name: s.pool, Namespace: s.cfg.KubeNamespace, Labels: map[string]string{runLabel: s.runID}},
		Spec: fnletv1.FunctionPoolSpec{Image: s.cfg.Image, ImagePullPolicy: corev1.PullNever, Size: int32(s.cfg.PoolSize),
			Resources:       &fnletv1.CallResources{Memory: ptr.To(resource.MustParse("256Mi")), Pids: ptr.To[int64](1024)},
			SecurityContext: &fnletv1.PoolSecurityContext{ReadOnlyRootFilesystem: ptr.To(true)}},
	}
	if err := s.kc.Create(ctx, pool); err != nil {
		return fmt.Errorf("create FunctionPool %s: %w", s.pool, err)
	}
	start := time.Now()
	st, err := s.waitPool(ctx, time.Minute, func(e fnletv1.PoolNodeStatus) bool { return e.Ready >= int32(s.cfg.PoolSize) })
	if err != nil {
		return err
	}
	fmt.Printf("pool: FunctionPool %s/%s, size %d, ready %d on node %s after %s (digest %s)\n", s.cfg.KubeNamespace, s.pool,
		s.cfg.PoolSize, st.Ready, s.cfg.Node, time.Since(start).Round(100*time.Millisecond), st.Digest)
	return nil
}

// waitPool polls the pool's status entry of the manager's node until ok
// holds (the manager writes it at most every 5 s) or d has passed.
func (s *system) waitPool(ctx context.Context, d time.Duration, ok func(fnletv1.PoolNodeStatus) bool) (fnletv1.PoolNodeStatus, error) {
	deadline := time.Now().Add(d)
	var last fnletv1.PoolNodeStatus
	for {
		var p fnletv1.FunctionPool
		if err := s.kc.Get(ctx, types.NamespacedName{Namespace: s.cfg.KubeNamespace, Name: s.pool}, &p); err != nil {
			return last, fmt.Errorf("FunctionPool %s: %w", s.pool, err)
		}
		for _, e := range p.Status.Nodes {
			if e.Node == s.cfg.Node {
				last = e
				if ok(e) {
					return e, nil
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return last, fmt.Errorf("FunctionPool %s on node %s not as wanted after %s: status %+v (manager log %s)", s.pool, s.cfg.Node, d, last, s.mgr.logPath)
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

// poolStatus is the pool's entry of the manager's node, as last written.
func (s *system) poolStatus(ctx context.Context) (fnletv1.PoolNodeStatus, bool) {
	var p fnletv1.FunctionPool
	if err := s.kc.Get(ctx, types.NamespacedName{Namespace: s.cfg.KubeNamespace, Name: s.pool}, &p); err != nil {
		return fnletv1.PoolNodeStatus{}, false
	}
	for _, e := range p.Status.Nodes {
		if e.Node == s.cfg.Node {
			return e, true
		}
	}
	return fnletv1.PoolNodeStatus{}, false
}

func observeCall(o client.Object) ([]string, bool, error) {
	fc, ok := o.(*fnletv1.FunctionCall)
	if !ok {
		return nil, false, nil
	}
	var marks []string
	if fc.Status.NodeName != "" {
		marks = append(marks, "claimed")
	}
	if fc.Status.Pool != "" {
		marks = append(marks, poolMark(fc.Status.Pool))
	}
	if slices.Contains(fc.Finalizers, finalizer) {
		marks = append(marks, "finalizer")
	}
	switch fc.Status.Phase {
	case fnletv1.PhaseRunning:
		marks = append(marks, "running")
	case fnletv1.PhaseSucceeded:
		marks = append(marks, "succeeded")
		return marks, true, nil
	case fnletv1.PhaseFailed:
		return marks, false, fmt.Errorf("FunctionCall %s failed: %s: %s", fc.Name, fc.Status.Reason, fc.Status.Message)
	}
	return marks, false, nil
}

// callWriteKind names the manager's write that turned before into after.
func callWriteKind(before, after client.Object) string {
	b, ok1 := before.(*fnletv1.FunctionCall)
	a, ok2 := after.(*fnletv1.FunctionCall)
	if !ok1 || !ok2 {
		return "other"
	}
	bf, af := slices.Contains(b.Finalizers, finalizer), slices.Contains(a.Finalizers, finalizer)
	switch {
	case !a.DeletionTimestamp.IsZero() && b.DeletionTimestamp.IsZero():
		return "delete (deletionTimestamp)"
	case b.Status.NodeName == "" && a.Status.NodeName != "":
		return "status: claim (Pending)"
	case !bf && af:
		return "finalizer add (patch)"
	case bf && !af:
		return "finalizer remove (patch)"
	case b.Status.Phase != a.Status.Phase && a.Status.Phase == fnletv1.PhaseRunning:
		return "status: Running"
	case b.Status.Phase != a.Status.Phase && a.IsFinished():
		return "status: final (" + string(a.Status.Phase) + ")"
	}
	return "status: other"
}

// ---- the pod way ----

type podWay struct{ sys *system }

func (w *podWay) name() string { return "pod" }
func (w *podWay) close()       {}

func (w *podWay) call(ctx context.Context, id string) (sample, error) {
	s := w.sys
	name := "pod-" + id
	wt := s.pods.register(name)
	defer s.pods.unregister(name)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.cfg.KubeNamespace, Labels: map[string]string{runLabel: s.runID}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			// Through the scheduler, as users run pods; no token volume (the
			// FunctionCall gets none either), which only helps the Pod.
			NodeSelector:                  map[string]string{corev1.LabelHostname: s.cfg.PodNode},
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "fn", Image: s.cfg.Image, ImagePullPolicy: corev1.PullNever,
				Args: s.cfg.Args}},
		},
	}
	t := newTimer()
	if err := s.kc.Create(ctx, pod); err != nil {
		return sample{}, fmt.Errorf("create pod %s: %w", name, err)
	}
	t.lap("create")
	if err := await(ctx, wt, "Pod "+name+" Succeeded"); err != nil {
		return sample{}, err
	}
	seen := s.pods.seenAt(wt)
	for _, m := range []string{"scheduled", "succeeded"} {
		if at, ok := seen[m]; ok {
			t.lapAt(m, at)
		} else {
			t.lapAt(m, t.last)
		}
	}
	smp := t.sample()
	smp.ID = name
	return smp, nil
}

func observePod(o client.Object) ([]string, bool, error) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return nil, false, nil
	}
	var marks []string
	if p.Spec.NodeName != "" {
		marks = append(marks, "scheduled")
	}
	switch p.Status.Phase {
	case corev1.PodSucceeded:
		return append(marks, "succeeded"), true, nil
	case corev1.PodFailed:
		msg := p.Status.Message
		for _, cs := range p.Status.ContainerStatuses {
			if t := cs.State.Terminated; t != nil {
				msg += fmt.Sprintf(" (container %s: %s, exit %d: %s)", cs.Name, t.Reason, t.ExitCode, t.Message)
			}
		}
		return marks, false, fmt.Errorf("pod %s failed: %s", p.Name, msg)
	}
	return marks, false, nil
}

// ---- concurrency, throughput, profile ----

// loadRun is calls of one way from several concurrent clients.
type loadRun struct {
	Way         string          `json:"way"`
	Name        string          `json:"name"`
	Concurrency int             `json:"concurrency"`
	Calls       int             `json:"calls"`  // completed (within the window for throughput)
	Errors      int             `json:"errors"` // failed calls
	FirstError  string          `json:"firstError,omitempty"`
	Late        int             `json:"late,omitempty"` // throughput: finished after the window
	WallNs      time.Duration   `json:"wallNs"`
	Rate        float64         `json:"callsPerSecond"`
	Stats       stats           `json:"stats"`
	Latencies   []time.Duration `json:"latenciesNs"`
	Phases      []phase         `json:"phaseMeans"`
	CPUSeconds  float64         `json:"managerCpuSeconds"`
	// CPU seconds of other processes over the run (apiserver, etcd,
	// containerd: shared, so other clients' work counts too) and how busy
	// the whole machine was.
	ProcCPU map[string]float64 `json:"procCpuSeconds,omitempty"`
	Busy    float64            `json:"machineBusy"` // 0..1 of all CPUs
}

// load runs calls of w from c clients until n calls were started (n > 0)
// or, for n == 0, until the window d ends (calls ending later do not count).
func (s *system) load(ctx context.Context, w way, name string, c, n int, d time.Duration) *loadRun {
	lr := &loadRun{Way: w.name(), Name: name, Concurrency: c}
	var mu sync.Mutex
	var next atomic.Int64
	var ok []sample
	start := time.Now()
	end := start.Add(d)
	account := s.startAccounting()
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1)
				if n > 0 && i > int64(n) || n == 0 && time.Now().After(end) {
					return
				}
				smp, err := oneCall(ctx, w, fmt.Sprintf("%s-%s-%d", s.runID, name, i))
				fin := time.Now()
				mu.Lock()
				switch {
				case err != nil:
					lr.Errors++
					if lr.FirstError == "" {
						lr.FirstError = err.Error()
					}
				case n == 0 && fin.After(end):
					lr.Late++
				default:
					lr.Calls++
					lr.Latencies = append(lr.Latencies, smp.Total)
					ok = append(ok, smp)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	lr.WallNs = time.Since(start)
	window := lr.WallNs
	if n == 0 {
		window = d
	}
	lr.Rate = float64(lr.Calls) / window.Seconds()
	if len(lr.Latencies) > 0 {
		lr.Stats = statsOf(lr.Latencies)
		lr.Phases = phaseMeans(ok)
	}
	account(lr)
	return lr
}

// startAccounting reads the CPU counters; the returned func writes what
// was spent since into lr: the manager's, the -procs processes' (shared
// daemons, so other clients count too) and how busy the machine was.
func (s *system) startAccounting() func(lr *loadRun) {
	before, _ := readProc(s.mgr.cmd.Process.Pid)
	procs0 := s.procCPU()
	busy0, total0 := machineCPU()
	return func(lr *loadRun) {
		if after, err := readProc(s.mgr.cmd.Process.Pid); err == nil {
			lr.CPUSeconds = after.CPUSeconds - before.CPUSeconds
		}
		busy1, total1 := machineCPU()
		if total1 > total0 {
			lr.Busy = (busy1 - busy0) / (total1 - total0)
		}
		lr.ProcCPU = map[string]float64{}
		for k, v := range s.procCPU() {
			if v0, ok := procs0[k]; ok {
				lr.ProcCPU[k] = v - v0
			}
		}
	}
}

// paced starts n calls of w at a steady rate, open loop (one every 1/rate
// seconds whether or not the earlier ones are done), and waits for them:
// the arrival pattern a pool's refill has to keep up with.
func (s *system) paced(ctx context.Context, w way, name string, rate float64, n int) *loadRun {
	lr := &loadRun{Way: w.name(), Name: name, Rate: rate}
	var mu sync.Mutex
	var ok []sample
	start := time.Now()
	account := s.startAccounting()
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
		wg.Go(func() {
			smp, err := oneCall(ctx, w, fmt.Sprintf("%s-%s-%d", s.runID, name, i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				lr.Errors++
				if lr.FirstError == "" {
					lr.FirstError = err.Error()
				}
				return
			}
			lr.Calls++
			lr.Latencies = append(lr.Latencies, smp.Total)
			ok = append(ok, smp)
		})
	}
	wg.Wait()
	lr.WallNs = time.Since(start)
	if len(lr.Latencies) > 0 {
		lr.Stats = statsOf(lr.Latencies)
		lr.Phases = phaseMeans(ok)
	}
	account(lr)
	return lr
}

// procCPU reads the CPU seconds of the -proc processes.
func (s *system) procCPU() map[string]float64 {
	out := map[string]float64{}
	for name, pid := range s.cfg.Procs {
		if ps, err := readProc(pid); err == nil {
			out[name] = ps.CPUSeconds
		}
	}
	return out
}

// phaseMeans averages the phases of samples that share the first's shape.
func phaseMeans(ss []sample) []phase {
	if len(ss) == 0 {
		return nil
	}
	out := make([]phase, len(ss[0].Phases))
	for i, p := range ss[0].Phases {
		var sum time.Duration
		n := 0
		for _, s := range ss {
			if i < len(s.Phases) && s.Phases[i].Name == p.Name {
				sum += s.Phases[i].D
				n++
			}
		}
		out[i] = phase{Name: p.Name, D: sum / time.Duration(max(n, 1))}
	}
	return out
}

// loadPhases runs everything after the sequential rounds that needs only
// the fnlet way.
func (s *system) loadPhases(ctx context.Context, res *result, raw way) error {
	cfg := s.cfg
	if cfg.ProfileSeconds > 0 {
		if s.mgr.pprofAddr == "" {
			res.note("no CPU profile of the manager: its binary has no --pprof-bind-address flag")
		} else if err := s.profile(ctx, res); err != nil {
			res.note("CPU profile of the manager failed: %v", err)
		}
	}
	fmt.Fprintf(os.Stderr, "fnlet: %d calls at concurrency %d\n", cfg.ConcurrencyN, cfg.Concurrency)
	s.mark("concurrency")
	fw := &fnletWay{sys: s}
	res.Conc = s.load(ctx, fw, fmt.Sprintf("c%d", cfg.Concurrency), cfg.Concurrency, cfg.ConcurrencyN, 0)
	for _, c := range cfg.Throughput {
		// The baseline first (raw, when measured): what this machine's
		// containerd sustains at the same concurrency, right now.
		ws := []way{fw}
		if raw != nil {
			ws = []way{raw, fw}
		}
		for _, w := range ws {
			if ctx.Err() != nil {
				break
			}
			fmt.Fprintf(os.Stderr, "%s: throughput at concurrency %d for %s\n", w.name(), c, cfg.Duration)
			var wait func() error
			var path string
			if w == fw && s.mgr.pprofAddr != "" && cfg.ProfileSeconds > 0 && len(res.LoadProfiles) == 0 {
				// The first fnlet throughput run, profiled too.
				path = s.profilePath(res, fmt.Sprintf("c%d", c))
				wait = s.startProfile(ctx, max(1, min(int(cfg.Duration.Seconds())-1, 30)), path)
			}
			res.Throughput = append(res.Throughput, s.load(ctx, w, fmt.Sprintf("t%d", c), c, 0, cfg.Duration))
			if wait != nil {
				if err := wait(); err != nil {
					res.note("CPU profile of the manager under load failed: %v", err)
				} else {
					res.LoadProfiles = append(res.LoadProfiles, path)
				}
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("load phases: %w", err)
	}
	// Let the last calls' trailing writes (the finalizer removal) arrive.
	sleepCtx(ctx, 2*time.Second)
	s.mark("load-end")
	res.Manager = s.managerStats(ctx)
	res.Writes = s.writeStats(ctx)
	if cfg.CacheCalls > 0 {
		s.fillCache(ctx, res, cfg.CacheCalls)
	}
	return nil
}

// startProfile fetches a CPU profile of the manager over the next secs
// seconds into path; the returned func waits for it.
func (s *system) startProfile(ctx context.Context, secs int, path string) func() error {
	errc := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet,
			fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.mgr.pprofAddr, secs), nil)
		if err != nil {
			errc <- err
			return
		}
		resp, err := (&http.Client{Timeout: time.Duration(secs+30) * time.Second}).Do(req)
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			errc <- fmt.Errorf("pprof: %s: %s", resp.Status, b)
			return
		}
		f, err := os.Create(path)
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		errc <- err
	}()
	return func() error { return <-errc }
}

func (s *system) profilePath(res *result, suffix string) string {
	path := s.cfg.ProfileOut
	if path == "" {
		path = filepath.Join(s.out, fmt.Sprintf("manager-cpu-%s.pprof", res.Time.Format("20060102T150405Z")))
	}
	if suffix != "" {
		path = strings.TrimSuffix(path, ".pprof") + "-" + suffix + ".pprof"
	}
	return path
}

// profile runs sequential fnlet calls while the manager's CPU profiler runs.
func (s *system) profile(ctx context.Context, res *result) error {
	secs := s.cfg.ProfileSeconds
	path := s.profilePath(res, "")
	fmt.Fprintf(os.Stderr, "fnlet: sequential calls for %ds under the manager's CPU profiler\n", secs)
	wait := s.startProfile(ctx, secs, path)
	w := &fnletWay{sys: s}
	end := time.Now().Add(time.Duration(secs) * time.Second)
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		if _, err := oneCall(ctx, w, fmt.Sprintf("%s-p%d", s.runID, i)); err != nil {
			return err
		}
	}
	if err := wait(); err != nil {
		return err
	}
	res.Profile = path
	return nil
}

// fillCache brings the calls in the manager's cache up to n with finished
// calls written directly (created for another node so the manager never
// runs them, then given a Succeeded status bound to its node, as a real
// finished call has), and reports the manager's RSS with them cached.
func (s *system) fillCache(ctx context.Context, res *result, n int) {
	have := int(s.created.Load())
	if n <= have {
		return
	}
	fmt.Fprintf(os.Stderr, "fnlet: filling the manager's cache up to %d finished calls\n", n)
	start := time.Now()
	deadline := start.Add(10 * time.Minute)
	var next, made atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				i := next.Add(1)
				if i > int64(n-have) {
					return
				}
				if err := s.finishedCall(ctx, fmt.Sprintf("fill-%s-%d", s.runID, i)); err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				made.Add(1)
			}
		})
	}
	wg.Wait()
	// Let the manager see and release them all: it labels a finished call
	// it is done with, which takes it out of its cache.
	released := s.waitReleased(ctx, int(made.Load()), 5*time.Minute)
	sleepCtx(ctx, 5*time.Second)
	ps, _ := readProc(s.mgr.cmd.Process.Pid)
	res.Manager.Released = released
	res.Manager.Filled = int(made.Load())
	res.Manager.FilledIn = time.Since(start)
	res.Manager.CachedCalls = have + int(made.Load())
	res.Manager.FilledRSSMiB = ps.RSSKiB / 1024
	res.Manager.PeakRSSMiB = ps.HWMKiB / 1024
	if e, ok := firstErr.Load().(string); ok {
		res.note("filling the cache: %s", e)
	}
	// The cold path again, now that the manager holds n calls: a claim
	// lists the cache to check capacity.
	fmt.Fprintf(os.Stderr, "fnlet: sequential calls with %d calls cached\n", res.Manager.CachedCalls)
	var wait func() error
	var path string
	if s.mgr.pprofAddr != "" && s.cfg.ProfileSeconds > 0 {
		path = s.profilePath(res, "filled")
		wait = s.startProfile(ctx, s.cfg.ProfileSeconds, path)
		// As many calls as fit in the profile.
		res.AfterFill = s.load(ctx, &fnletWay{sys: s}, "filled", 1, 0, time.Duration(s.cfg.ProfileSeconds)*time.Second)
		if err := wait(); err != nil {
			res.note("CPU profile of the manager with a full cache failed: %v", err)
		} else {
			res.LoadProfiles = append(res.LoadProfiles, path)
		}
		return
	}
	res.AfterFill = s.load(ctx, &fnletWay{sys: s}, "filled", 1, max(10, s.cfg.N/5), 0)
}

// waitReleased waits until n fill calls carry the finished label, or for
// at most d, and returns how many do.
func (s *system) waitReleased(ctx context.Context, n int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		var list fnletv1.FunctionCallList
		err := s.kc.List(ctx, &list, client.InNamespace(s.cfg.KubeNamespace),
			client.MatchingLabels{runLabel: s.runID, fnletv1.LabelFinished: "true"})
		got := 0
		for _, fc := range list.Items {
			if strings.HasPrefix(fc.Name, "fill-") {
				got++
			}
		}
		if err == nil && got >= n || ctx.Err() != nil || time.Now().After(deadline) {
			return got
		}
		sleepCtx(ctx, 2*time.Second)
	}
}

func (s *system) finishedCall(ctx context.Context, name string) error {
	fc := &fnletv1.FunctionCall{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.cfg.KubeNamespace, Labels: map[string]string{runLabel: s.runID}},
		Spec: fnletv1.FunctionCallSpec{Image: s.cfg.Image, ImagePullPolicy: corev1.PullNever, NodeName: s.cfg.Node + "-elsewhere",
			Args: s.cfg.Args},
	}
	if err := s.kc.Create(ctx, fc); err != nil {
		return err
	}
	now := metav1.Now()
	code := int32(0)
	cond := func(t, reason, msg string) metav1.Condition {
		return metav1.Condition{Type: t, Status: metav1.ConditionTrue, Reason: reason, Message: msg, LastTransitionTime: now}
	}
	fc.Status = fnletv1.FunctionCallStatus{
		Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Message: "exited with code 0", ExitCode: &code,
		NodeName: s.cfg.Node, ContainerID: "fnlet-" + string(fc.UID), Attempts: 1,
		ClaimedAt: &now, StartedAt: &now, FinishedAt: &now, LogDir: filepath.Join(s.mgr.logDir, "fnlet-"+string(fc.UID)),
		Usage: &fnletv1.Usage{PeakMemoryBytes: 1 << 20, CPUNanoseconds: 1e6},
		Conditions: []metav1.Condition{cond(fnletv1.ConditionClaimed, "Claimed", "claimed by node "+s.cfg.Node),
			cond(fnletv1.ConditionImageReady, "ImagePresent", "image "+s.cfg.Image+" is on the node"),
			cond(fnletv1.ConditionStarted, "Started", "container started"),
			cond(fnletv1.ConditionFinished, "Completed", "exited with code 0")},
	}
	return s.kc.Status().Update(ctx, fc)
}

// ---- what the manager cost, and what it wrote ----

type managerStats struct {
	Pid           int     `json:"pid"`
	PeakRSSMiB    float64 `json:"peakRssMiB"` // VmHWM
	RSSMiB        float64 `json:"rssMiB"`     // VmRSS at the end of the load
	CPUSeconds    float64 `json:"cpuSeconds"` // over its life
	Calls         int64   `json:"calls"`      // FunctionCalls created
	CachedCalls   int     `json:"cachedCalls"`
	SeqCPUMsCall  float64 `json:"sequentialCpuMsPerCall"`
	LoadCPUMsCall float64 `json:"loadCpuMsPerCall"`
	// The cache experiment (-cache-calls).
	Filled       int           `json:"filled,omitempty"`
	Released     int           `json:"released,omitempty"` // of them, labelled finished by the manager
	FilledIn     time.Duration `json:"filledInNs,omitempty"`
	FilledRSSMiB float64       `json:"filledRssMiB,omitempty"`
}

func (s *system) managerStats(ctx context.Context) *managerStats {
	end, _ := s.snap("load-end")
	ms := &managerStats{Pid: s.mgr.cmd.Process.Pid, PeakRSSMiB: end.Proc.HWMKiB / 1024, RSSMiB: end.Proc.RSSKiB / 1024,
		CPUSeconds: end.Proc.CPUSeconds, Calls: end.Created}
	var list fnletv1.FunctionCallList
	if err := s.kc.List(ctx, &list, client.InNamespace(s.cfg.KubeNamespace), client.MatchingLabels{runLabel: s.runID}); err == nil {
		ms.CachedCalls = len(list.Items) // all bound to the manager's node: all in its cache
	}
	perCall := func(a, b snapshot) float64 {
		if n := b.Created - a.Created; n > 0 {
			return (b.Proc.CPUSeconds - a.Proc.CPUSeconds) * 1000 / float64(n)
		}
		return 0
	}
	if a, ok := s.snap("sequential"); ok {
		if b, ok := s.snap("sequential-end"); ok {
			ms.SeqCPUMsCall = perCall(a, b)
		}
	}
	if a, ok := s.snap("concurrency"); ok {
		ms.LoadCPUMsCall = perCall(a, end)
	}
	return ms
}

type writeStats struct {
	Calls        int                `json:"calls"`   // FunctionCalls seen on the watch
	PerCall      map[string]float64 `json:"perCall"` // watch events by the write that made them, per call
	WritesCall   float64            `json:"writesPerCall"`
	EventsCall   map[string]float64 `json:"eventsPerCall"` // Event objects about the calls, by reason
	Apiserver    []metricRow        `json:"apiserver"`     // over the sequential rounds
	Manager      []metricRow        `json:"manager"`       // over the sequential rounds
	SeqFnletCall int                `json:"sequentialFnletCalls"`
}

type metricRow struct {
	What    string  `json:"what"`
	PerCall float64 `json:"perCall"`
	MeanMs  float64 `json:"meanMs,omitempty"`
}

func (s *system) writeStats(ctx context.Context) *writeStats {
	ws := &writeStats{PerCall: map[string]float64{}, EventsCall: map[string]float64{}}
	counts, objects := s.fcs.counts()
	ws.Calls = objects
	if objects == 0 {
		return ws
	}
	for k, v := range counts {
		ws.PerCall[k] = float64(v) / float64(objects)
		ws.WritesCall += float64(v) / float64(objects)
	}
	var evs corev1.EventList
	if err := s.kc.List(ctx, &evs, client.InNamespace(s.cfg.KubeNamespace)); err == nil {
		prefix := "fc-" + s.runID + "-"
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "FunctionCall" && strings.HasPrefix(e.InvolvedObject.Name, prefix) {
				// A repeated event is one object with a count (patched, not created).
				ws.EventsCall[e.Reason] += 1 / float64(objects)
			}
		}
	}
	a, ok1 := s.snap("sequential")
	b, ok2 := s.snap("sequential-end")
	if !ok1 || !ok2 {
		return ws
	}
	n := int(b.Created - a.Created)
	ws.SeqFnletCall = n
	if n == 0 {
		return ws
	}
	ws.Apiserver = apiserverRows(a.APIMetric, b.APIMetric, n)
	ws.Manager = managerRows(a.MgrMetric, b.MgrMetric, n)
	return ws
}

// apiserverRows: requests on functioncalls and events over the sequential
// rounds, per fnlet call, with the apiserver's mean latency.
func apiserverRows(a, b promSet, n int) []metricRow {
	var rows []metricRow
	type key struct{ res, sub, verb string }
	seen := map[key]bool{}
	for _, smp := range b {
		if smp.Name != "apiserver_request_duration_seconds_count" {
			continue
		}
		k := key{smp.Labels["resource"], smp.Labels["subresource"], smp.Labels["verb"]}
		if (k.res != "functioncalls" && k.res != "events") || seen[k] || k.verb == "WATCH" {
			continue
		}
		seen[k] = true
		f := map[string]string{"resource": k.res, "subresource": k.sub, "verb": k.verb}
		cnt := b.sum("apiserver_request_duration_seconds_count", f) - a.sum("apiserver_request_duration_seconds_count", f)
		sum := b.sum("apiserver_request_duration_seconds_sum", f) - a.sum("apiserver_request_duration_seconds_sum", f)
		if cnt <= 0 {
			continue
		}
		what := k.verb + " " + k.res
		if k.sub != "" {
			what += "/" + k.sub
		}
		rows = append(rows, metricRow{What: what, PerCall: cnt / float64(n), MeanMs: sum / cnt * 1000})
	}
	slices.SortFunc(rows, func(x, y metricRow) int { return strings.Compare(x.What, y.What) })
	// Where a write's time goes inside the apiserver.
	add := func(what, count, sum string, f map[string]string) {
		c := b.sum(count, f) - a.sum(count, f)
		if c <= 0 {
			return
		}
		rows = append(rows, metricRow{What: what, PerCall: c / float64(n), MeanMs: (b.sum(sum, f) - a.sum(sum, f)) / c * 1000})
	}
	for _, op := range []string{"create", "update", "get"} {
		add("etcd "+op+" functioncalls", "etcd_request_duration_seconds_count", "etcd_request_duration_seconds_sum",
			map[string]string{"resource": "functioncalls", "operation": op})
	}
	add("CEL evaluations (all CRDs)", "apiserver_cel_evaluation_duration_seconds_count", "apiserver_cel_evaluation_duration_seconds_sum", nil)
	add("CRD validation ratcheting", "apiextensions_apiserver_validation_ratcheting_seconds_count", "apiextensions_apiserver_validation_ratcheting_seconds_sum", nil)
	return rows
}

// managerRows: the manager's reconciles, queue waits and API requests over
// the sequential rounds, per fnlet call.
func managerRows(a, b promSet, n int) []metricRow {
	d := func(name string, f map[string]string) float64 { return b.sum(name, f) - a.sum(name, f) }
	fc := map[string]string{"controller": "functioncall"}
	q := map[string]string{"name": "functioncall"}
	var rows []metricRow
	add := func(what, count, sum string, f map[string]string) {
		c := d(count, f)
		r := metricRow{What: what, PerCall: c / float64(n)}
		if sum != "" && c > 0 {
			r.MeanMs = d(sum, f) / c * 1000
		}
		if c > 0 {
			rows = append(rows, r)
		}
	}
	add("reconciles (reconcile time)", "controller_runtime_reconcile_time_seconds_count", "controller_runtime_reconcile_time_seconds_sum", fc)
	add("queue waits (enqueue to reconcile)", "workqueue_queue_duration_seconds_count", "workqueue_queue_duration_seconds_sum", q)
	add("reconcile errors", "controller_runtime_reconcile_errors_total", "", fc)
	for _, r := range []string{"success", "error", "requeue", "requeue_after"} {
		add("  reconcile result "+r, "controller_runtime_reconcile_total", "", map[string]string{"controller": "functioncall", "result": r})
	}
	for _, verb := range []string{"GET", "LIST", "POST", "PUT", "PATCH", "DELETE"} {
		f := map[string]string{"verb": verb}
		add("API "+verb+" (client-side latency)", "rest_client_request_duration_seconds_count", "rest_client_request_duration_seconds_sum", f)
	}
	if !slices.ContainsFunc(rows, func(r metricRow) bool { return strings.HasPrefix(r.What, "API ") }) {
		for _, m := range []string{"GET", "LIST", "POST", "PUT", "PATCH", "DELETE"} {
			add("API "+m+" requests", "rest_client_requests_total", "", map[string]string{"method": m})
		}
	}
	return rows
}

// ---- cleanup ----

// close deletes what the run created (in bulk), waits for the manager to
// clean up, counts leftovers and stops the manager. Idempotent.
func (s *system) close(ctx context.Context, res *result) error {
	var errs []error
	sel := client.MatchingLabels{runLabel: s.runID}
	ns := client.InNamespace(s.cfg.KubeNamespace)
	if s.fcs != nil || s.mgr != nil {
		if err := s.deleteAll(ctx, &fnletv1.FunctionCall{}, &fnletv1.FunctionCallList{}, 6*time.Minute, ns, sel); err != nil {
			errs = append(errs, fmt.Errorf("delete FunctionCalls: %w", err))
		}
	}
	if s.pool != "" {
		// The manager removes the pool's containers once it is gone.
		if err := s.deleteAll(ctx, &fnletv1.FunctionPool{}, &fnletv1.FunctionPoolList{}, time.Minute, ns, sel); err != nil {
			errs = append(errs, fmt.Errorf("delete FunctionPools: %w", err))
		}
	}
	if s.pods != nil {
		if err := s.deleteAll(ctx, &corev1.Pod{}, &corev1.PodList{}, 2*time.Minute, ns, sel, client.GracePeriodSeconds(0)); err != nil {
			errs = append(errs, fmt.Errorf("delete pods: %w", err))
		}
	}
	if s.stopW != nil {
		s.stopW()
		s.wDone.Wait()
		s.stopW = nil
	}
	if s.mgr != nil {
		// The manager removes containers after the final status; give it a
		// bounded time to finish before counting what is left.
		waitNoContainers(ctx, *s.cfg, s.cfg.ManagerNamespace, time.Minute)
		lo := countLeftovers(ctx, *s.cfg, s.cfg.ManagerNamespace, s.mgr.logDir, "")
		res.Leftovers = append(res.Leftovers, lo)
		if err := s.mgr.stop(); err != nil {
			errs = append(errs, err)
		}
		if s.mgr.tmpLogDir {
			os.RemoveAll(s.mgr.logDir)
		}
		s.mgr = nil
	}
	return errors.Join(errs...)
}

// deleteAll deletes this run's objects with delete-collection requests
// (one request deletes many; with thousands, one may time out half way, so
// it is repeated) until none is left or d has passed.
func (s *system) deleteAll(ctx context.Context, obj client.Object, list client.ObjectList, d time.Duration, opts ...client.DeleteAllOfOption) error {
	deadline := time.Now().Add(d)
	var lastErr error
	for {
		err := s.kc.DeleteAllOf(ctx, obj, opts...)
		if err != nil && !apierrors.IsNotFound(err) {
			lastErr = err
		}
		left, lerr := s.left(ctx, list)
		if lerr == nil && left == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d objects of this run still there after %s (last error: %v)", left, d, errors.Join(lastErr, lerr))
		}
		if err == nil {
			// Accepted: deletions may wait for finalizers; give them time.
			sleepCtx(ctx, time.Second)
		}
	}
}

func (s *system) left(ctx context.Context, list client.ObjectList) (int, error) {
	err := s.kc.List(ctx, list, client.InNamespace(s.cfg.KubeNamespace), client.MatchingLabels{runLabel: s.runID})
	if err != nil {
		return -1, err
	}
	return meta.LenList(list), nil
}
