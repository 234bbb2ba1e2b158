// Command scale is fnlet's scale harness (make scale), in the style of
// kwok or kubemark hollow nodes: N hollow managers in this one process,
// each the real node agent of internal/node (FunctionCallReconciler,
// NodeLease, NodeLossDetector, the same caches as cmd/manager) with its
// own client, user agent, node name, Node labels and Lease, over a hollow
// runtime whose calls last a sampled time. They run against a real
// kube-apiserver and etcd (envtest, KUBEBUILDER_ASSETS), fed by a
// generator that creates calls at a fixed rate. A third into each run,
// 10% of the managers are killed for good (their requests fail from that
// instant, so their Leases are not released) to time NodeLost.
//
// For each (protocol, N) it starts a fresh control plane and prints a row:
// claim writes, 409 conflicts and unassigned-call watch events per call,
// claim latency, apiserver/etcd/harness CPU per call, calls per node, the
// NodeLost takeover times, and calls lost or run twice.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/controllers"
	"github.com/fnlet/fnlet/internal/node"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
)

type config struct {
	nodes                                    []int
	protocols                                []string
	rate                                     float64
	duration, mean                           time.Duration
	killFraction                             float64
	leaseDuration, leaseRenew, nodeLostGrace time.Duration
	workers, maxCalls, startParallel         int
}

func main() {
	var c config
	var nodes, protocols string
	var verbose bool
	flag.StringVar(&nodes, "nodes", "1,10,100,500", "Comma-separated numbers of hollow managers, one run each per protocol.")
	flag.StringVar(&protocols, "protocols", "old,new", "Claim protocols: old (--claim-stagger -1 --dispatchers 0: every fitting node races), stagger (--dispatchers 0: every node watches every unassigned call, ranked and staggered) and/or new (the default: offers by 3 dispatchers).")
	flag.Float64Var(&c.rate, "rate", 20, "Calls created per second.")
	flag.DurationVar(&c.duration, "duration", 45*time.Second, "How long the generator creates calls in each run.")
	flag.DurationVar(&c.mean, "mean-run", 200*time.Millisecond, "Mean run time of a call (exponential).")
	flag.Float64Var(&c.killFraction, "kill-fraction", 0.1, "Fraction of managers killed for good a third into each run (0: none).")
	flag.DurationVar(&c.leaseDuration, "lease-duration", 0, "Lease duration of the hollow nodes (0: 3 × renew interval).")
	flag.DurationVar(&c.leaseRenew, "lease-renew-interval", 0, "Lease renew interval (0: 1s, or N/10 s when larger: every manager watches every Lease, so renewals cost N²/interval watch events; N/10 s keeps that at 10 per second per manager, as a deployment of that size would set --lease-renew-interval).")
	flag.DurationVar(&c.nodeLostGrace, "node-lost-grace", 0, "NodeLost grace (0: 2 × renew interval).")
	flag.IntVar(&c.workers, "workers", 8, "Concurrent reconciles per hollow manager (cmd/manager's default).")
	flag.IntVar(&c.maxCalls, "max-calls", 16, "Capacity of each hollow node (cmd/manager's default).")
	flag.IntVar(&c.startParallel, "start-parallel", 16, "Hollow managers set up at once.")
	flag.BoolVar(&verbose, "v", false, "Log the managers' errors.")
	flag.Parse()
	for _, s := range strings.Split(nodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fatalf("--nodes: %q is not a positive number", s)
		}
		c.nodes = append(c.nodes, n)
	}
	for _, p := range strings.Split(protocols, ",") {
		if p = strings.TrimSpace(p); p != "old" && p != "stagger" && p != "new" {
			fatalf("--protocols: %q is not old, stagger or new", p)
		}
		c.protocols = append(c.protocols, strings.TrimSpace(p))
	}
	if verbose {
		ctrl.SetLogger(zap.New())
	} else {
		ctrl.SetLogger(logr.Discard())
		klog.SetLogger(logr.Discard())
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fatalf("KUBEBUILDER_ASSETS is not set (hack/scale.sh sets it)")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		fatalf("%v", err)
	}
	ctx := ctrl.SetupSignalHandler()
	fmt.Printf("fnlet scale: nodes=%v protocols=%v rate=%.0f/s duration=%s mean run=%s kill=%.0f%% on %d CPUs\n",
		c.nodes, c.protocols, c.rate, c.duration, c.mean, 100*c.killFraction, numCPU())
	var rows []row
	start := time.Now()
	for _, n := range c.nodes {
		for _, p := range c.protocols {
			r, err := runOne(ctx, root, c, n, p)
			if err != nil {
				fatalf("N=%d %s: %v", n, p, err)
			}
			rows = append(rows, r)
			fmt.Printf("  done N=%d %s in %s\n", n, p, r.wall.Round(time.Second))
			if ctx.Err() != nil {
				break
			}
		}
	}
	fmt.Println()
	printTable(os.Stdout, rows)
	fmt.Printf("\ntotal %s, load average %s\n", time.Since(start).Round(time.Second), loadavg())
}

// orZero is v, or zero when err is set (a /proc read of a process that ran).
func orZero[T any](v T, err error) T {
	if err != nil {
		var zero T
		return zero
	}
	return v
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "scale: "+format+"\n", args...)
	os.Exit(1)
}

// leases derives the lease settings of a run with n nodes.
func (c config) leases(n int) (duration, renew, grace time.Duration) {
	renew = c.leaseRenew
	if renew == 0 {
		renew = max(time.Second, time.Duration(n)*time.Second/10)
	}
	duration, grace = c.leaseDuration, c.nodeLostGrace
	if duration == 0 {
		duration = 3 * renew
	}
	if grace == 0 {
		grace = 2 * renew
	}
	return duration, renew, grace
}

// ---- one run ----

const callNamespace = "scale"

type row struct {
	protocol                  string
	n                         int
	rate                      float64
	created                   int
	claimWrites, conflicts    float64 // per call
	offerWrites               float64 // per call
	watchEvents               float64 // per call, all unassigned informers
	p50, p99                  time.Duration
	apiCPU, etcdCPU, selfCPU  time.Duration // per call
	apiIdle                   time.Duration // apiserver CPU per second with no calls
	apiCPUOverIdle            time.Duration // per call, above the idle rate
	maxPerNode                int
	uniformSpread             float64
	meanPerNode               float64
	leaseRenew                time.Duration
	killed, takenOver         int
	detectFirst, detectLast   time.Duration
	lost, dup, dupNodeLost    int
	rssMiB                    float64
	startup, wall             time.Duration
	unclaimedAtEnd, nodeLostF int
	liveTakenOver             int
}

type hollow struct {
	name   string
	n      *node.Node
	rt     *hollowRuntime
	cancel context.CancelFunc
	dead   atomic.Bool
	done   chan struct{}
}

func runOne(ctx context.Context, root string, c config, n int, protocol string) (row, error) {
	began := time.Now()
	r := row{protocol: protocol, n: n}
	dir, err := os.MkdirTemp("", "fnlet-scale-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	srv, err := kubeapi.Start(root, dir)
	if err != nil {
		return r, err
	}
	defer func() { _ = srv.Stop() }()
	apiPID, err := childPID(os.Getpid(), "kube-apiserver")
	if err != nil {
		return r, err
	}
	etcdPID, err := childPID(os.Getpid(), "etcd")
	if err != nil {
		return r, err
	}
	admin := srv.Client
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: callNamespace}}); err != nil {
		return r, err
	}
	base, err := clientcmd.BuildConfigFromFlags("", srv.ManagerKubeconfig)
	if err != nil {
		return r, err
	}
	// What ctrl.GetConfigOrDie gives cmd/manager: no client-side rate
	// limit (the apiserver's priority and fairness decides).
	base.QPS = -1

	leaseDuration, leaseRenew, grace := c.leases(n)
	r.leaseRenew = leaseRenew
	st := newStats()
	stagger := time.Duration(0) // controllers.DefaultClaimStagger
	dispatchers := controllers.DefaultDispatchers
	switch protocol {
	case "old":
		stagger, dispatchers = -1, 0
	case "stagger":
		dispatchers = 0
	}

	// The hollow nodes: a Node object each (labels for the Lease), then the
	// agent, set up a few at a time.
	nodes := make([]*hollow, n)
	setupCtx, cancelAll := context.WithCancel(ctx)
	defer cancelAll()
	sem := make(chan struct{}, c.startParallel)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			h, err := startHollow(setupCtx, admin, base, st, c, i, stagger, dispatchers, leaseDuration, leaseRenew, grace)
			if err != nil {
				errs <- err
				return
			}
			nodes[i] = h
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return r, err
	}
	defer stopAll(nodes)
	// Ready when every Lease is there and renewed once more (everyone has
	// seen everyone), and the detectors have a whole Lease duration of
	// good renewals behind them.
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		var l coordinationv1.LeaseList
		err := admin.List(ctx, &l, client.InNamespace(kubeapi.ManagerNamespace), client.HasLabels{controllers.NodeLeaseLabel})
		return err == nil && len(l.Items) == n, err
	}); err != nil {
		return r, fmt.Errorf("leases: %w", err)
	}
	for _, h := range nodes {
		if !h.n.Unassigned.WaitForCacheSync(ctx) || !h.n.Manager.GetCache().WaitForCacheSync(ctx) {
			return r, errors.New("caches did not sync")
		}
	}
	time.Sleep(leaseRenew + time.Second)
	// The idle cost of N managers (Lease renewals and their watch events),
	// over one more renew interval (at least 10s), without calls.
	idle0, idleAt := orZero(procCPU(apiPID)), time.Now()
	time.Sleep(max(leaseRenew, 10*time.Second))
	idleRate := float64(orZero(procCPU(apiPID))-idle0) / float64(time.Since(idleAt))
	r.apiIdle = time.Duration(idleRate * float64(time.Second))
	r.startup = time.Since(began)
	r.rssMiB = rssMiB(os.Getpid())
	fmt.Printf("  N=%d %s: %d hollow managers up in %s (RSS %.0f MiB), leases %s/%s/grace %s\n",
		n, protocol, n, r.startup.Round(time.Second), r.rssMiB, leaseDuration, leaseRenew, grace)

	st.reset()
	api0, _ := procCPU(apiPID)
	etcd0, _ := procCPU(etcdPID)
	self0, _ := procCPU(os.Getpid())

	// The generator, and the kill a third of the way in.
	t0 := time.Now()
	killAt := time.AfterFunc(c.duration/3, func() { r.killed = kill(nodes, st, c.killFraction) })
	var gen sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.rate))
	inflight := make(chan struct{}, 64)
	var createErrs atomic.Int64
	one := int32(1)
	for i := 0; time.Since(t0) < c.duration && ctx.Err() == nil; i++ {
		<-tick.C
		name := fmt.Sprintf("c-%06d", i)
		gen.Add(1)
		inflight <- struct{}{}
		go func() {
			defer func() { <-inflight; gen.Done() }()
			st.created(name)
			fc := &fnletv1.FunctionCall{ObjectMeta: metav1.ObjectMeta{Namespace: callNamespace, Name: name},
				Spec: fnletv1.FunctionCallSpec{Image: "localhost/fnlet/hollow:v1", Retries: &one}}
			if err := admin.Create(ctx, fc); err != nil {
				createErrs.Add(1)
				st.notCreated(name)
			}
		}()
	}
	tick.Stop()
	gen.Wait()
	killAt.Stop()
	genTime := time.Since(t0)
	created := st.createdCount()
	r.created = created
	r.rate = float64(created) / genTime.Seconds()
	if e := createErrs.Load(); e > 0 {
		fmt.Printf("  N=%d %s: %d creates failed\n", n, protocol, e)
	}

	// Drain: every call finished (seen as its final status write), or the
	// NodeLost path had time to run.
	_ = waitFor(ctx, leaseDuration+grace+2*leaseRenew+60*time.Second, func() (bool, error) {
		return st.finishedCount() >= created, nil
	})
	api1, _ := procCPU(apiPID)
	busy := time.Since(t0)
	etcd1, _ := procCPU(etcdPID)
	self1, _ := procCPU(os.Getpid())

	var calls fnletv1.FunctionCallList
	if err := admin.List(ctx, &calls, client.InNamespace(callNamespace)); err != nil {
		return r, err
	}
	for i := range calls.Items {
		fc := &calls.Items[i]
		switch {
		case !fc.IsFinished():
			r.lost++
			if fc.Status.NodeName == "" {
				r.unclaimedAtEnd++
			}
		case fc.Status.Reason == fnletv1.ReasonNodeLost:
			r.nodeLostF++
		}
	}
	st.fill(&r, created)
	per := func(d time.Duration) time.Duration { return d / time.Duration(max(created, 1)) }
	r.apiCPU, r.etcdCPU, r.selfCPU = per(api1-api0), per(etcd1-etcd0), per(self1-self0)
	r.apiCPUOverIdle = per(api1 - api0 - time.Duration(idleRate*float64(busy)))
	r.wall = time.Since(began)
	return r, nil
}

func startHollow(ctx context.Context, admin client.Client, base *rest.Config, st *stats, c config, i int, stagger time.Duration, dispatchers int, leaseDuration, leaseRenew, grace time.Duration) (*hollow, error) {
	h := &hollow{name: fmt.Sprintf("hollow-%03d", i), done: make(chan struct{})}
	zone := fmt.Sprintf("zone-%d", i%3)
	if err := admin.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.name,
		Labels: map[string]string{"fnlet.dev/hollow": "true", "topology.kubernetes.io/zone": zone}}}); err != nil {
		return nil, fmt.Errorf("node %s: %w", h.name, err)
	}
	cfg := rest.CopyConfig(base)
	cfg.UserAgent = "fnlet-hollow/" + h.name
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return &countingTransport{next: rt, dead: &h.dead, st: st}
	})
	life, cancel := context.WithCancel(ctx)
	h.cancel = cancel
	h.rt = newHollowRuntime(h.name, c.mean, nil, life, uint64(i)+1)
	h.rt.OnRun = st.ran
	n, err := node.New(life, cfg, node.Options{
		NodeName: h.name, Runtime: h.rt,
		Manager: ctrl.Options{
			Metrics:                metricsserver.Options{BindAddress: "0"},
			HealthProbeBindAddress: "0",
			NewClient:              st.newClient(h.name),
		},
		SkipNameValidation: true,
		Workers:            c.workers,
		Capacity:           controllers.Capacity{MaxCalls: c.maxCalls},
		Limits:             controllers.Limits{DefaultMemoryBytes: 256 << 20, MaxMemoryBytes: 8 << 30, DefaultPids: 1024},
		DefaultTimeout:     5 * time.Minute, MaxTimeout: time.Hour, KillGrace: 10 * time.Second,
		LeaseNamespace: kubeapi.ManagerNamespace, LeaseDuration: leaseDuration, LeaseRenew: leaseRenew,
		NodeLostGrace: grace, ClaimStagger: stagger, Dispatchers: dispatchers,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: %w", h.name, err)
	}
	h.n, h.rt.Events = n, n.Events
	inf, err := n.Unassigned.GetInformer(life, &fnletv1.FunctionCall{})
	if err != nil {
		cancel()
		return nil, err
	}
	count := func() { st.watchEvents.Add(1) }
	if n.Dispatch != nil {
		n.Dispatch.OnEvent = count
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { count() }, UpdateFunc: func(any, any) { count() }, DeleteFunc: func(any) { count() },
	}); err != nil {
		cancel()
		return nil, err
	}
	go func() {
		defer close(h.done)
		if err := n.Manager.Start(life); err != nil && !h.dead.Load() {
			fmt.Fprintf(os.Stderr, "scale: %s: %v\n", h.name, err)
		}
	}()
	return h, nil
}

// kill stops a fraction of the nodes for good, as a SIGKILL would: their
// requests fail from now on (no Lease release, no last writes), then their
// agents stop. It prefers nodes with calls in flight, so that NodeLost has
// calls to take over. It returns how many it killed.
func kill(nodes []*hollow, st *stats, fraction float64) int {
	k := int(float64(len(nodes)) * fraction)
	if k == 0 {
		return 0
	}
	busy := slices.Clone(nodes)
	load := map[string]int{}
	for _, h := range busy {
		load[h.name] = h.rt.running()
	}
	sort.SliceStable(busy, func(a, b int) bool { return load[busy[a].name] > load[busy[b].name] })
	st.killedAt(time.Now())
	for _, h := range busy[:k] {
		st.markKilled(h.name)
		h.dead.Store(true)
		h.cancel()
	}
	return k
}

func stopAll(nodes []*hollow) {
	for _, h := range nodes {
		if h != nil {
			h.cancel()
		}
	}
	for _, h := range nodes {
		if h == nil {
			continue
		}
		select {
		case <-h.done:
		case <-time.After(15 * time.Second):
		}
	}
}

func waitFor(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := f()
		if ok {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if last == nil {
		last = errors.New("timed out")
	}
	return last
}

// ---- what the hollow managers do, counted ----

// countingTransport counts the 409s of call requests and fails every
// request of a killed node.
type countingTransport struct {
	next http.RoundTripper
	dead *atomic.Bool
	st   *stats
}

var errKilled = errors.New("hollow node killed")

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.dead.Load() {
		return nil, errKilled
	}
	resp, err := t.next.RoundTrip(req)
	if err == nil && strings.Contains(req.URL.Path, "/functioncalls") {
		if req.Method != http.MethodGet {
			t.st.callWrites.Add(1)
		}
		if resp.StatusCode == http.StatusConflict {
			t.st.conflicts.Add(1)
		}
	}
	return resp, err
}

type stats struct {
	watchEvents, conflicts, callWrites, claimWrites, offerWrites atomic.Int64

	mu        sync.Mutex
	createdAt map[string]time.Time // call name → just before its create
	claimedIn map[string]time.Duration
	claims    map[string]int       // node → successful claims
	finished  map[string]bool      // UID → final status written
	runs      map[string][]string  // UID → nodes that started it
	takeovers map[string]time.Time // UID → NodeLost takeover write
	killed    map[string]bool      // nodes killed
	killTime  time.Time
}

func newStats() *stats {
	s := &stats{}
	s.reset()
	return s
}

// reset forgets the warm-up.
func (s *stats) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchEvents.Store(0)
	s.conflicts.Store(0)
	s.callWrites.Store(0)
	s.claimWrites.Store(0)
	s.offerWrites.Store(0)
	s.createdAt, s.claimedIn, s.claims = map[string]time.Time{}, map[string]time.Duration{}, map[string]int{}
	s.finished, s.runs, s.takeovers, s.killed = map[string]bool{}, map[string][]string{}, map[string]time.Time{}, map[string]bool{}
}

func (s *stats) created(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.createdAt[name] = time.Now()
}

func (s *stats) notCreated(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.createdAt, name)
}

func (s *stats) createdCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.createdAt)
}

func (s *stats) finishedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.finished)
}

func (s *stats) ran(uid, node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.runs[uid], node) {
		s.runs[uid] = append(s.runs[uid], node)
	}
}

func (s *stats) killedAt(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killTime = t
}

func (s *stats) markKilled(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killed[node] = true
}

// writeKind classifies a call status write by what it sets.
type writeKind int

const (
	writeOther writeKind = iota
	writeClaim
	writeTakeover
)

// classify says what a status write of fc by node is: a claim binds an
// unstarted, pending call to node; a takeover (NodeLossDetector) writes a
// call bound to another node, or requeues one with reason NodeLost.
func classify(fc *fnletv1.FunctionCall, node string) writeKind {
	claimed := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionClaimed)
	switch {
	case fc.Status.NodeName == node && fc.Status.Phase == fnletv1.PhasePending && fc.Status.StartedAt == nil && !fc.IsFinished():
		return writeClaim
	case fc.Status.NodeName != "" && fc.Status.NodeName != node,
		fc.Status.NodeName == "" && claimed != nil && claimed.Reason == fnletv1.ReasonRequeuedNodeLost:
		return writeTakeover
	}
	return writeOther
}

// newClient wraps each manager's client to see its status writes.
func (s *stats) newClient(node string) client.NewClientFunc {
	return func(cfg *rest.Config, o client.Options) (client.Client, error) {
		c, err := client.NewWithWatch(cfg, o)
		if err != nil {
			return nil, err
		}
		return interceptor.NewClient(c, interceptor.Funcs{
			Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
				if _, ok := obj.(*fnletv1.FunctionCall); ok {
					if data, err := patch.Data(obj); err == nil && strings.Contains(string(data), controllers.OfferLabel) {
						s.offerWrites.Add(1)
					}
				}
				return c.Patch(ctx, obj, patch, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				fc, ok := obj.(*fnletv1.FunctionCall)
				if !ok || sub != "status" {
					return c.SubResource(sub).Update(ctx, obj, opts...)
				}
				kind := classify(fc, node)
				if kind == writeClaim {
					s.claimWrites.Add(1)
				}
				err := c.SubResource(sub).Update(ctx, obj, opts...)
				if err == nil {
					s.wrote(fc, node, kind)
				}
				return err
			},
		}), nil
	}
}

func (s *stats) wrote(fc *fnletv1.FunctionCall, node string, kind writeKind) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	uid := string(fc.UID)
	switch kind {
	case writeClaim:
		s.claims[node]++
		if t, ok := s.createdAt[fc.Name]; ok {
			if _, seen := s.claimedIn[fc.Name]; !seen {
				s.claimedIn[fc.Name] = now.Sub(t)
			}
		}
	case writeTakeover:
		if _, ok := s.takeovers[uid]; !ok {
			s.takeovers[uid] = now
		}
	}
	if fc.IsFinished() {
		s.finished[uid] = true
	}
}

// fill puts the counts into r.
func (s *stats) fill(r *row, created int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	per := func(v int64) float64 { return float64(v) / float64(max(created, 1)) }
	r.claimWrites, r.conflicts, r.watchEvents = per(s.claimWrites.Load()), per(s.conflicts.Load()), per(s.watchEvents.Load())
	r.offerWrites = per(s.offerWrites.Load())
	lat := make([]time.Duration, 0, len(s.claimedIn))
	for _, d := range s.claimedIn {
		lat = append(lat, d)
	}
	r.p50, r.p99 = percentile(lat, 50), percentile(lat, 99)
	r.maxPerNode, r.meanPerNode = spread(s.claims, r.n)
	total := 0
	for _, c := range s.claims {
		total += c
	}
	r.uniformSpread = uniformSpread(total, r.n, 50)
	// A takeover of a call a killed node ran is what NodeLost is for; one
	// of a call only live nodes ran is a live node judged lost (its Lease
	// renewals late).
	killedRan := func(uid string) bool {
		return slices.ContainsFunc(s.runs[uid], func(n string) bool { return s.killed[n] })
	}
	var after []time.Duration
	for uid, t := range s.takeovers {
		if killedRan(uid) {
			after = append(after, t.Sub(s.killTime))
		} else {
			r.liveTakenOver++
		}
	}
	r.takenOver = len(after)
	if len(after) > 0 {
		r.detectFirst, r.detectLast = slices.Min(after), slices.Max(after)
	}
	for uid, nodes := range s.runs {
		if len(nodes) < 2 {
			continue
		}
		if _, ok := s.takeovers[uid]; ok {
			r.dupNodeLost++ // at least once after NodeLost: allowed
		} else {
			r.dup++
		}
	}
}

// ---- output ----

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "protocol\tN\trate/s\tcalls\tclaim writes/call\toffer writes/call\t409s/call\twatch events/call\tclaim p50\tclaim p99\tapiserver CPU/call\tabove idle\tapiserver idle CPU/s\tetcd CPU/call\tharness CPU/call\tcalls/node max\tmean\tmax/mean\tuniform max/mean\tkilled\tNodeLost after (first-last)\ttaken over\tlive taken over\tlost\tdup\tdup after NodeLost\tlease renew\tRSS MiB\t")
	for _, r := range rows {
		ratio := 0.0
		if r.meanPerNode > 0 {
			ratio = float64(r.maxPerNode) / r.meanPerNode
		}
		detect := "-"
		if r.takenOver > 0 {
			detect = fmt.Sprintf("%.1fs-%.1fs", r.detectFirst.Seconds(), r.detectLast.Seconds())
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d\t%.2f\t%.2f\t%.2f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%.1f\t%.2f\t%.2f\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%.0f\t\n",
			r.protocol, r.n, r.rate, r.created, r.claimWrites, r.offerWrites, r.conflicts, r.watchEvents,
			ms(r.p50), ms(r.p99), ms(r.apiCPU), ms(r.apiCPUOverIdle), ms(r.apiIdle), ms(r.etcdCPU), ms(r.selfCPU),
			r.maxPerNode, r.meanPerNode, ratio, r.uniformSpread, r.killed, detect, r.takenOver, r.liveTakenOver, r.lost, r.dup, r.dupNodeLost, r.leaseRenew, r.rssMiB)
	}
	_ = tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return max(strings.Count(string(b), "processor\t:"), 1)
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
