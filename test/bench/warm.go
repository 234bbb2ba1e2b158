package main

// Warm starts (FunctionPool): how fast this machine pre-starts containers
// (the refill capacity, at the runtime level), and what the fnlet-warm way
// adds after the sequential rounds: calls at a steady rate below that
// capacity (hit rate, latency and CPU per call, beside cold fnlet calls at
// the same rate) and the manager's own warm counters.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// refillStats is the refill capacity: pre-started containers per second,
// one at a time (as a node's pool reconciler starts them) and two at a
// time (what the machine could do with the pacing lifted).
type refillStats struct {
	N            int           `json:"n"`
	Serial       stats         `json:"serial"` // each Prestart, image present
	SerialRate   float64       `json:"serialPerSecond"`
	SerialCPUMs  float64       `json:"serialMachineCpuMsEach"`
	Parallel     int           `json:"parallel"`
	ParallelRate float64       `json:"parallelPerSecond"`
	ParallelCPU  float64       `json:"parallelMachineCpuMsEach"`
	DrainNs      time.Duration `json:"drainNs"` // deleting them all, one at a time
}

// measureRefill pre-starts n containers with internal/ctrd (the manager's
// runtime) one at a time, then n more two at a time, timing each, and
// removes them. It runs before the manager starts its pool, on a quiet
// machine.
func measureRefill(ctx context.Context, cfg config, n int) (*refillStats, error) {
	cw, err := newCtrdWay(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer cw.close()
	rt := cw.rt
	if _, err := rt.EnsureImage(ctx, cfg.Image, ctrd.PullIfNotPresent, nil); err != nil {
		return nil, err
	}
	spec := ctrd.WarmSpec{Pool: "bench-refill", Image: cfg.Image}
	drain := func() error {
		ws, err := rt.WarmContainers(context.WithoutCancel(ctx))
		if err != nil {
			return err
		}
		for _, w := range ws {
			if w.Pool != spec.Pool {
				continue
			}
			if err := rt.DeleteWarm(context.WithoutCancel(ctx), w.ID); err != nil {
				return err
			}
		}
		return nil
	}
	defer func() { _ = drain() }()
	// One unmeasured, so caches (image config, snapshotter) are warm.
	if _, err := rt.Prestart(ctx, spec); err != nil {
		return nil, err
	}
	rs := &refillStats{N: n, Parallel: 2}
	busy0, total0 := machineCPU()
	start := time.Now()
	var ds []time.Duration
	for range n {
		t := time.Now()
		if _, err := rt.Prestart(ctx, spec); err != nil {
			return nil, err
		}
		ds = append(ds, time.Since(t))
	}
	wall := time.Since(start)
	busy1, total1 := machineCPU()
	rs.Serial = statsOf(ds)
	rs.SerialRate = float64(n) / wall.Seconds()
	rs.SerialCPUMs = cpuMsEach(busy1-busy0, total1-total0, wall, n)
	t := time.Now()
	if err := drain(); err != nil {
		return nil, err
	}
	rs.DrainNs = time.Since(t)

	busy0, total0 = machineCPU()
	start = time.Now()
	errc := make(chan error, rs.Parallel)
	var wg sync.WaitGroup
	for k := range rs.Parallel {
		wg.Go(func() {
			for i := k; i < n; i += rs.Parallel {
				if _, err := rt.Prestart(ctx, spec); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	wall = time.Since(start)
	busy1, total1 = machineCPU()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	rs.ParallelRate = float64(n) / wall.Seconds()
	rs.ParallelCPU = cpuMsEach(busy1-busy0, total1-total0, wall, n)
	return rs, nil
}

// cpuMsEach is the machine's busy CPU time over wall, per item, from
// /proc/stat jiffy deltas.
func cpuMsEach(busy, total float64, wall time.Duration, n int) float64 {
	if total <= 0 || n == 0 {
		return 0
	}
	return busy / total * float64(numCPU()) * wall.Seconds() * 1000 / float64(n)
}

// warmStats is what the fnlet-warm way measured besides its sequential row.
type warmStats struct {
	Pool      string `json:"pool"`
	Size      int    `json:"size"`
	SeqHits   int64  `json:"sequentialHits"`
	SeqMisses int64  `json:"sequentialMisses"`
	// Calls at a steady rate (open loop) below the refill capacity: warm,
	// then cold (the fnlet way) at the same rate for comparison.
	PacedRate   float64  `json:"pacedPerSecond"`
	RateBound   string   `json:"rateBound"` // what the rate was derived from
	Paced       *loadRun `json:"paced,omitempty"`
	PacedHits   int64    `json:"pacedHits"`
	PacedMisses int64    `json:"pacedMisses"`
	PacedCold   *loadRun `json:"pacedCold,omitempty"`
	// The manager's pre-starts during the paced warm run: what refill
	// actually did while the calls came (the capacity measured before can
	// fall when the machine is busy).
	PacedPrestarts      float64 `json:"pacedPrestarts"`
	PacedPrestartMeanMs float64 `json:"pacedPrestartMeanMs"`
	// The manager's side, over the whole run: fnlet_warm_starts_total by
	// result/reason, and its pre-starts (fnlet_prestart_seconds).
	WarmStarts     map[string]float64 `json:"warmStarts,omitempty"`
	Prestarts      float64            `json:"prestarts"`
	PrestartMeanMs float64            `json:"prestartMeanMs"`
	// The pool's status entry for the manager's node at the end.
	StatusReady, StatusTarget int32
	StatusHits, StatusMisses  int64
}

func (w *warmStats) hitRate(hits, misses int64) float64 {
	if hits+misses == 0 {
		return 0
	}
	return float64(hits) / float64(hits+misses)
}

// warmPhases runs after the sequential rounds: the paced runs, then reads
// the manager's warm counters and the pool's status.
func (s *system) warmPhases(ctx context.Context, res *result) error {
	ws := &warmStats{Pool: s.pool, Size: s.cfg.PoolSize, SeqHits: s.warmHits.Load(), SeqMisses: s.warmMisses.Load()}
	res.Warm = ws
	// The rate: half of what refill sustains, bounded by the manager's
	// pacing (--pool-refill-rate) and the measured capacity.
	refill := s.cfg.PoolRefillRate
	ws.PacedRate, ws.RateBound = refill/2, fmt.Sprintf("half the manager's --pool-refill-rate %.1f/s", refill)
	if r := res.Refill; r != nil && r.SerialRate < refill {
		ws.PacedRate, ws.RateBound = r.SerialRate/2, fmt.Sprintf("half the measured serial refill capacity %.1f/s", r.SerialRate)
	}
	if s.cfg.WarmRate > 0 {
		ws.PacedRate, ws.RateBound = s.cfg.WarmRate, "set with -warm-rate"
	}
	if n := s.cfg.WarmN; n > 0 && ws.PacedRate > 0 {
		// The pool is full again before the run starts.
		if _, err := s.waitPool(ctx, time.Minute, func(e fnletv1.PoolNodeStatus) bool { return e.Ready >= int32(s.cfg.PoolSize) }); err != nil {
			res.note("pool not full before the paced run: %v", err)
		}
		fmt.Fprintf(os.Stderr, "fnlet-warm: %d calls at %.1f/s\n", n, ws.PacedRate)
		h0, m0 := s.warmHits.Load(), s.warmMisses.Load()
		before, _ := scrape(s.mgr.metricsURL(), http.DefaultClient)
		ws.Paced = s.paced(ctx, &fnletWay{sys: s, warm: true}, "warm-paced", ws.PacedRate, n)
		ws.PacedHits, ws.PacedMisses = s.warmHits.Load()-h0, s.warmMisses.Load()-m0
		if after, err := scrape(s.mgr.metricsURL(), http.DefaultClient); err == nil {
			ws.PacedPrestarts = after.sum("fnlet_prestart_seconds_count", nil) - before.sum("fnlet_prestart_seconds_count", nil)
			if ws.PacedPrestarts > 0 {
				ws.PacedPrestartMeanMs = (after.sum("fnlet_prestart_seconds_sum", nil) - before.sum("fnlet_prestart_seconds_sum", nil)) /
					ws.PacedPrestarts * 1000
			}
		}
		fmt.Fprintf(os.Stderr, "fnlet: %d calls at %.1f/s\n", n, ws.PacedRate)
		ws.PacedCold = s.paced(ctx, &fnletWay{sys: s}, "cold-paced", ws.PacedRate, n)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("warm phases: %w", err)
	}
	if m, err := scrape(s.mgr.metricsURL(), http.DefaultClient); err == nil {
		ws.WarmStarts = map[string]float64{}
		for _, smp := range m {
			if smp.Name == "fnlet_warm_starts_total" {
				k := smp.Labels["result"]
				if r := smp.Labels["reason"]; r != "" {
					k += "/" + r
				}
				ws.WarmStarts[k] += smp.Value
			}
		}
		ws.Prestarts = m.sum("fnlet_prestart_seconds_count", nil)
		if ws.Prestarts > 0 {
			ws.PrestartMeanMs = m.sum("fnlet_prestart_seconds_sum", nil) / ws.Prestarts * 1000
		}
	} else {
		res.note("manager metrics: %v", err)
	}
	// The manager writes the entry at most every 5 s: wait for the hits of
	// this run to show (a bounded wait; what it shows is reported).
	total := ws.SeqHits + ws.PacedHits
	st, _ := s.waitPool(ctx, 15*time.Second, func(e fnletv1.PoolNodeStatus) bool { return e.Hits >= total })
	ws.StatusReady, ws.StatusTarget, ws.StatusHits, ws.StatusMisses = st.Ready, st.Target, st.Hits, st.Misses
	return nil
}

// reportWarm prints the refill capacity and the warm runs, and adds the
// issue's goals for warm starts.
func reportWarm(w io.Writer, res *result, all map[string]stats, goals *[]string) {
	if r := res.Refill; r != nil {
		fmt.Fprintf(w, "\nrefill capacity (internal/ctrd Prestart, image present, a container ready when its fnlet-init waits):\n")
		fmt.Fprintf(w, "  one at a time (as a node's pool reconciler): %.1f containers/s; each p50 %s  p95 %s  mean %s ms; machine %.0f CPU-ms each\n",
			r.SerialRate, ms(r.Serial.P50), ms(r.Serial.P95), ms(r.Serial.Mean), r.SerialCPUMs)
		fmt.Fprintf(w, "  %d at a time: %.1f containers/s; machine %.0f CPU-ms each (removing %d took %s)\n",
			r.Parallel, r.ParallelRate, r.ParallelCPU, r.N, r.DrainNs.Round(time.Millisecond))
	}
	if y := res.Yield; y != nil {
		fmt.Fprintf(w, "\nrefill beside a running call (a call busy on all %d CPUs for %s; its share of the machine's CPU):\n", y.CPUs, y.Spin)
		fmt.Fprintf(w, "  alone: %.0f%%\n", 100*y.Alone)
		for _, wy := range y.Ways {
			fmt.Fprintf(w, "  beside pre-starts two at a time, %s: %.0f%% (%d pre-starts done meanwhile, %.1f/s)\n", wy.Name, 100*wy.Share, wy.Prestarts, wy.Rate)
			if wy.Name == "refill cgroup" && y.Alone > 0 {
				*goals = append(*goals, verdict("refill does not slow running calls: busy call's CPU share beside refill >= 90% of alone",
					wy.Share >= 0.9*y.Alone, fmt.Sprintf("%.0f%% of alone", 100*wy.Share/y.Alone)))
			}
		}
		if y.Note != "" {
			fmt.Fprintf(w, "  refill cgroup not measured: %s\n", y.Note)
		}
	}
	ws := res.Warm
	if ws == nil {
		return
	}
	fmt.Fprintf(w, "\nfnlet-warm: FunctionPool %s, size %d (read-only rootfs, 256Mi, 1024 pids: the fnlet way's calls do not fit it and ran cold)\n",
		ws.Pool, ws.Size)
	fmt.Fprintf(w, "  sequential rounds: %d of %d calls warm (hit rate %.0f%%)\n", ws.SeqHits, ws.SeqHits+ws.SeqMisses,
		100*ws.hitRate(ws.SeqHits, ws.SeqMisses))
	for _, l := range []*loadRun{ws.Paced, ws.PacedCold} {
		if l == nil {
			continue
		}
		fmt.Fprintf(w, "  %-10s at %.1f calls/s (%s), %d calls: p50 %s  p95 %s  p99 %s ms, errors %d%s\n", l.Way, ws.PacedRate, ws.RateBound,
			l.Calls, ms(l.Stats.P50), ms(l.Stats.P95), ms(l.Stats.P99), l.Errors, firstErr(l))
		fmt.Fprintf(w, "    phases (mean ms): %s\n", phaseLine(l.Phases))
		fmt.Fprintf(w, "    CPU per call (ms; the warm calls' include their refill): %s\n", cpuLine(l))
	}
	if ws.Paced != nil {
		fmt.Fprintf(w, "  paced warm calls: %d of %d warm (hit rate %.0f%%)\n", ws.PacedHits, ws.PacedHits+ws.PacedMisses,
			100*ws.hitRate(ws.PacedHits, ws.PacedMisses))
		if ws.PacedPrestarts > 0 {
			fmt.Fprintf(w, "  refill during the paced warm run: %.0f pre-starts, mean %.1f ms each (one at a time: at most %.1f/s)\n",
				ws.PacedPrestarts, ws.PacedPrestartMeanMs, 1000/ws.PacedPrestartMeanMs)
		}
	}
	if len(ws.WarmStarts) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(ws.WarmStarts)) {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, ws.WarmStarts[k]))
		}
		fmt.Fprintf(w, "  manager fnlet_warm_starts_total: %s (misses of the fnlet way's calls are by profile)\n", strings.Join(parts, ", "))
	}
	if ws.Prestarts > 0 {
		fmt.Fprintf(w, "  manager pre-starts: %.0f, mean %.1f ms (fnlet_prestart_seconds; paced by --pool-refill-rate)\n", ws.Prestarts, ws.PrestartMeanMs)
	}
	fmt.Fprintf(w, "  pool status on node: ready %d/%d, hits %d, misses %d (written at most every 5 s)\n",
		ws.StatusReady, ws.StatusTarget, ws.StatusHits, ws.StatusMisses)

	if f, ok := all["fnlet-warm"]; ok {
		if raw, ok := all["raw"]; ok {
			*goals = append(*goals, verdict("fnlet-warm create -> Succeeded <= 0.5x raw cold cycle (p50)",
				ratio(f.P50, raw.P50) <= 0.5, fmt.Sprintf("%s ms = %.2fx raw %s ms", ms(f.P50), ratio(f.P50, raw.P50), ms(raw.P50))))
		}
		if p, ok := all["pod"]; ok {
			*goals = append(*goals, verdict("pod >= 25x fnlet-warm (p50)", ratio(p.P50, f.P50) >= 25, fmt.Sprintf("%.1fx", ratio(p.P50, f.P50))))
		}
	}
	if ws.Paced != nil {
		capacity := "not measured"
		if r := res.Refill; r != nil {
			capacity = fmt.Sprintf("capacity %.1f/s", r.SerialRate)
		}
		hits, calls := ws.PacedHits, ws.PacedHits+ws.PacedMisses
		got := fmt.Sprintf("%d/%d", hits, calls)
		if ws.Paced.Errors > 0 {
			got += fmt.Sprintf(", %d calls failed", ws.Paced.Errors)
		}
		*goals = append(*goals, verdict(fmt.Sprintf("hit rate 100%% at a steady %.1f calls/s (refill %s; manager pacing %.1f/s)", ws.PacedRate, capacity, res.Config.PoolRefillRate),
			calls > 0 && hits == calls && ws.Paced.Errors == 0, got))
	}
}

// refillYield is what refill takes from a running call: a call busy on
// every CPU for a fixed time, alone, then while pre-starts run beside it
// two at a time (as fast as they go: the worst case), once at containerd's
// priority and once in the low-weight refill cgroup (--refill-cgroup).
type refillYield struct {
	Spin  time.Duration `json:"spinNs"`
	CPUs  int           `json:"cpus"`
	Alone float64       `json:"aloneShare"` // the call's CPU / (CPUs × spin)
	Ways  []yieldWay    `json:"ways"`
	Note  string        `json:"note,omitempty"` // why a way is missing
}

type yieldWay struct {
	Name      string  `json:"name"`
	Share     float64 `json:"share"`     // the call's CPU share beside refill
	Prestarts int     `json:"prestarts"` // done while the call ran
	Rate      float64 `json:"perSecond"`
}

// yieldSpin is how long the busy call of the yield measurement runs.
const yieldSpin = 6 * time.Second

// refillTestCgroup is the refill cgroup of the yield measurement: the
// manager's default (--refill-cgroup), so that the benchmark leaves no
// other cgroup on the host.
const refillTestCgroup = "/fnlet-refill"

// measureRefillYield runs the yield measurement (see refillYield).
func measureRefillYield(ctx context.Context, cfg config, spin time.Duration) (*refillYield, error) {
	y := &refillYield{Spin: spin, CPUs: numCPU()}
	share, _, err := spinBeside(ctx, cfg, spin, false)
	if err != nil {
		return nil, fmt.Errorf("alone: %w", err)
	}
	y.Alone = share
	for _, way := range []struct {
		name string
		opts []ctrd.Opt
	}{
		{"containerd's priority", nil},
		{"refill cgroup", []ctrd.Opt{ctrd.WithRefillCgroup(refillTestCgroup)}},
	} {
		share, n, err := spinBeside(ctx, cfg, spin, true, way.opts...)
		if errors.Is(err, errNoRefillCgroup) {
			y.Note = err.Error()
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", way.name, err)
		}
		y.Ways = append(y.Ways, yieldWay{Name: way.name, Share: share, Prestarts: n, Rate: float64(n) / spin.Seconds()})
	}
	return y, nil
}

var errNoRefillCgroup = errors.New("no refill cgroup")

// spinBeside runs the busy call on a runtime made with opts; with
// prestart, pre-starts go on beside it, two at a time, until it ends. It
// returns the call's share of the machine's CPU and the number of
// pre-starts done meanwhile.
func spinBeside(ctx context.Context, cfg config, spin time.Duration, prestart bool, opts ...ctrd.Opt) (float64, int, error) {
	cw, err := newCtrdWay(ctx, cfg, opts...)
	if err != nil {
		return 0, 0, err
	}
	defer cw.close()
	rt := cw.rt
	if len(opts) > 0 {
		if _, err := rt.RefillCgroup(); err != nil {
			return 0, 0, fmt.Errorf("%w: %v", errNoRefillCgroup, err)
		}
	}
	if _, err := rt.EnsureImage(ctx, cfg.Image, ctrd.PullIfNotPresent, nil); err != nil {
		return 0, 0, err
	}
	spec := ctrd.WarmSpec{Pool: "bench-yield", Image: cfg.Image}
	var (
		mu     sync.Mutex
		ids    []string
		preErr error // the first failed pre-start
	)
	defer func() {
		for _, id := range ids {
			_ = rt.DeleteWarm(context.WithoutCancel(ctx), id)
		}
	}()
	uid := fmt.Sprintf("bench-spin-%d", time.Now().UnixNano())
	call := ctrd.Call{UID: uid, Namespace: "bench", Name: "bench-spin", Image: cfg.Image,
		Args: []string{"-spin", spin.String(), "-spin-procs", fmt.Sprint(numCPU())}}
	if _, err := rt.Run(ctx, call); err != nil {
		_ = rt.Delete(context.WithoutCancel(ctx), uid)
		return 0, 0, err
	}
	defer func() { _ = rt.Delete(context.WithoutCancel(ctx), uid) }()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if prestart {
		for range 2 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					id, err := rt.Prestart(ctx, spec)
					mu.Lock()
					if err != nil && preErr == nil {
						preErr = fmt.Errorf("pre-start beside the busy call: %w", err)
					}
					if err == nil {
						ids = append(ids, id)
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			})
		}
	}
	s, err := rt.Wait(ctx, uid)
	close(stop)
	mu.Lock()
	n := len(ids) // those done while the call ran
	mu.Unlock()
	wg.Wait()
	if err == nil {
		err = preErr
	}
	if err != nil {
		return 0, 0, err
	}
	if s.Result == nil || s.Result.ExitCode != 0 {
		return 0, 0, fmt.Errorf("busy call did not exit 0: %+v", s.Result)
	}
	os.RemoveAll(s.LogDir)
	return s.Result.Usage.CPU.Seconds() / (float64(numCPU()) * spin.Seconds()), n, nil
}
