package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

type stats struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50Ns"`
	P95  time.Duration `json:"p95Ns"`
	P99  time.Duration `json:"p99Ns"`
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
	if len(ds) == 0 {
		return stats{}
	}
	s := slices.Sorted(slices.Values(ds))
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return stats{N: len(s), P50: percentile(s, 50), P95: percentile(s, 95), P99: percentile(s, 99),
		Mean: sum / time.Duration(len(s)), Min: s[0], Max: s[len(s)-1]}
}

func totals(ss []sample) []time.Duration {
	out := make([]time.Duration, len(ss))
	for i, s := range ss {
		out[i] = s.Total
	}
	return out
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func numCPU() int { return runtime.NumCPU() }

// podSkipped is printed instead of the pod row when the pod way did not run.
var podSkipped = "pod: skipped (not requested)"

func report(w io.Writer, res *result) {
	cfg := res.Config
	all := map[string]stats{}
	for _, n := range res.Order {
		all[n] = statsOf(totals(res.Seq[n]))
	}
	fmt.Fprintf(w, "\n== fnlet-bench %s: containerd %s, runtime %s, image %s\n", res.Time.Format(time.RFC3339), cfg.Daemon, cfg.Runtime, cfg.Image)
	fmt.Fprintf(w, "load average: %s at start, %s at end (%d CPUs; other work on this machine adds noise to every way alike)\n",
		res.LoadStart, res.LoadEnd, numCPU())
	rounds := fmt.Sprintf("%d rounds", cfg.N)
	if _, ok := all["pod"]; ok {
		rounds += fmt.Sprintf(", %d pods spread over them", all["pod"].N)
	}
	fmt.Fprintf(w, "\nsequential: one call at a time, ways round-robin (%s, %s wall):\n", rounds, res.WallNs.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "way\tn\tp50 ms\tp95 ms\tp99 ms\tmean ms\tmin ms\tmax ms\t")
	for _, n := range res.Order {
		st := all[n]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", n, st.N, ms(st.P50), ms(st.P95), ms(st.P99), ms(st.Mean), ms(st.Min), ms(st.Max))
	}
	tw.Flush()
	if _, ok := all["pod"]; !ok && cfg.hasFnlet() {
		fmt.Fprintln(w, podSkipped)
	}

	fmt.Fprintln(w, "\nratios at p50 (at p95):")
	type rr struct{ label, a, b string }
	rs := []rr{{"system/raw", "fnlet", "raw"}, {"controller/runtime", "fnlet", "ctrd"}, {"runtime/raw", "ctrd", "raw"},
		{"ctr/raw", "ctr", "raw"}, {"pod/fnlet", "pod", "fnlet"},
		{"warm/raw", "ctrd-warm", "raw"}, {"warm/cold", "ctrd-warm", "ctrd"},
		{"warm system/raw", "fnlet-warm", "raw"}, {"warm/cold system", "fnlet-warm", "fnlet"}, {"pod/fnlet-warm", "pod", "fnlet-warm"}}
	for _, n := range res.Order {
		if strings.HasPrefix(n, "raw+") {
			rs = append(rs, rr{n + "/raw", n, "raw"})
		}
	}
	for _, r := range rs {
		a, ok1 := all[r.a]
		b, ok2 := all[r.b]
		if !ok1 || !ok2 {
			continue
		}
		fmt.Fprintf(w, "  %-20s %-12s %6.2fx  (%.2fx)\n", r.label, r.a+"/"+r.b, ratio(a.P50, b.P50), ratio(a.P95, b.P95))
	}
	if _, ok := all["fnlet"]; ok {
		fmt.Fprintln(w, "  (ctrd, raw and ctr remove the container inside the measured call; fnlet removes it after writing the status, outside)")
	}
	var goals []string
	if ws := res.Seq["ctrd-warm"]; len(ws) > 0 {
		// Claim -> the process's exit (phases Claim, Run: the shim's exit
		// time), the goal; then -> that exit seen on the event
		// stream (+ Exit). Wait's result collection (Collect) and the
		// Delete follow.
		var ds, seen []time.Duration
		for _, s := range ws {
			if len(s.Phases) >= 3 && s.Phases[1].Name == "Run" {
				ds = append(ds, s.Phases[0].D+s.Phases[1].D)
				seen = append(seen, s.Phases[0].D+s.Phases[1].D+s.Phases[2].D)
			}
		}
		p50 := statsOf(ds).P50
		fmt.Fprintf(w, "  warm claim -> exit seen on the event stream: p50 %s ms\n", ms(statsOf(seen).P50))
		goals = append(goals, verdict("warm claim -> exit <= 30ms (p50)", p50 <= 30*time.Millisecond, ms(p50)+" ms"))
	}
	if f, ok := all["fnlet"]; ok {
		if raw, ok := all["raw"]; ok {
			goals = append(goals, verdict("fnlet <= 1.5x raw (p50)", ratio(f.P50, raw.P50) <= 1.5, fmt.Sprintf("%.2fx", ratio(f.P50, raw.P50))))
		}
		if p, ok := all["pod"]; ok {
			goals = append(goals, verdict("pod >= 12x fnlet (p50)", ratio(p.P50, f.P50) >= 12, fmt.Sprintf("%.1fx", ratio(p.P50, f.P50))))
		}
	}
	if c, ok := all["ctrd"]; ok {
		if _, ok := all["ctrd-podnet"]; ok {
			// Up to the exit: what a caller waits for. The teardown (CNI DEL
			// in Delete) comes after the final status, off the call's path.
			toExit := func(way string) (exit, del time.Duration) {
				var a, b []time.Duration
				for _, s := range res.Seq[way] {
					var d time.Duration
					for _, p := range s.Phases {
						if p.Name == "Delete" {
							b = append(b, p.D)
							continue
						}
						d += p.D
					}
					a = append(a, d)
				}
				return statsOf(a).P50, statsOf(b).P50
			}
			pe, pd := toExit("ctrd-podnet")
			ce, cd := toExit("ctrd")
			fmt.Fprintf(w, "  network: pod over none (p50): to the exit %+.1f ms, the delete after it %+.1f ms\n", float64(pe-ce)/1e6, float64(pd-cd)/1e6)
			goals = append(goals, verdict("network: pod adds <= 30ms to a cold call up to its exit (p50, ctrd-podnet - ctrd)", pe-ce <= 30*time.Millisecond, ms(pe-ce)+" ms"))
		}
		if raw, ok := all["raw"]; ok {
			goals = append(goals, verdict("ctrd <= 1.15x raw (p50)", ratio(c.P50, raw.P50) <= 1.15, fmt.Sprintf("%.2fx", ratio(c.P50, raw.P50))))
		}
	}

	fmt.Fprintln(w, "\nphases (mean ms; fnlet's are the watch events of the manager's writes, pod's of the scheduler's and kubelet's):")
	for _, n := range res.Order {
		ss := res.Seq[n]
		if len(ss) == 0 || len(ss[0].Phases) < 2 {
			continue
		}
		var parts []string
		for i, p := range ss[0].Phases {
			var ds []time.Duration
			for _, s := range ss {
				if i < len(s.Phases) {
					ds = append(ds, s.Phases[i].D)
				}
			}
			parts = append(parts, fmt.Sprintf("%s %s", p.Name, ms(statsOf(ds).Mean)))
		}
		fmt.Fprintf(w, "  %-6s %s\n", n, strings.Join(parts, "  "))
	}

	reportWarm(w, res, all, &goals)

	if c := res.Conc; c != nil {
		fmt.Fprintf(w, "\nfnlet at concurrency %d: %d calls in %s (%.1f calls/s): p50 %s  p95 %s  p99 %s ms, errors %d%s\n",
			c.Concurrency, c.Calls, c.WallNs.Round(100*time.Millisecond), c.Rate, ms(c.Stats.P50), ms(c.Stats.P95), ms(c.Stats.P99),
			c.Errors, firstErr(c))
		fmt.Fprintf(w, "  phases (mean ms): %s\n", phaseLine(c.Phases))
	}
	if len(res.Throughput) > 0 {
		fmt.Fprintf(w, "\nthroughput, closed loop for %s each (calls finished inside the window; raw = the containerd client alone, as baseline):\n", cfg.Duration)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "way\tconcurrency\tcalls\tcalls/s\tp50 ms\tp95 ms\tp99 ms\terrors\tmanager CPU s\t")
		best := 0.0
		for _, t := range res.Throughput {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%s\t%s\t%s\t%d\t%.1f\t\n", t.Way, t.Concurrency, t.Calls, t.Rate, ms(t.Stats.P50), ms(t.Stats.P95),
				ms(t.Stats.P99), t.Errors, t.CPUSeconds)
			if t.Way == "fnlet" {
				best = max(best, t.Rate)
			}
		}
		tw.Flush()
		fmt.Fprintln(w, "CPU per call during each run (ms; apiserver/etcd/containerd are shared with other clients) and machine busy:")
		for _, t := range res.Throughput {
			fmt.Fprintf(w, "  %-5s c=%-3d %s\n", t.Way, t.Concurrency, cpuLine(t))
		}
		for _, t := range res.Throughput {
			fmt.Fprintf(w, "  %s c=%d phases (mean ms): %s\n", t.Way, t.Concurrency, phaseLine(t.Phases))
			if t.FirstError != "" {
				fmt.Fprintf(w, "  %s c=%d first error: %s\n", t.Way, t.Concurrency, t.FirstError)
			}
		}
		goals = append(goals, verdict("fnlet >= 20 calls/s sustained", best >= 20, fmt.Sprintf("%.1f", best)))
	}
	if m := res.Manager; m != nil {
		fmt.Fprintf(w, "\nmanager (pid %d%s): RSS %.1f MiB after %d calls; CPU %.1f s in all, %.1f ms/call sequential, %.1f ms/call under load\n",
			m.Pid, strings.Join(append([]string{""}, cfg.ManagerArgs...), " "), m.RSSMiB, m.Calls, m.CPUSeconds, m.SeqCPUMsCall, m.LoadCPUMsCall)
		if m.Filled > 0 {
			fmt.Fprintf(w, "  with %d finished calls on its node (%d written directly in %s; %d of them released from its cache, labelled %s): RSS %.1f MiB\n",
				m.CachedCalls, m.Filled, m.FilledIn.Round(time.Second), m.Released, fnletv1.LabelFinished, m.FilledRSSMiB)
			goals = append(goals, verdict(fmt.Sprintf("manager RSS <= 80 MiB with %d finished calls on its node", m.CachedCalls), m.FilledRSSMiB <= 80,
				fmt.Sprintf("%.1f MiB", m.FilledRSSMiB)))
		}
		fmt.Fprintf(w, "  peak RSS (VmHWM) over the run: %.1f MiB\n", m.PeakRSSMiB)
		if a := res.AfterFill; a != nil && a.Calls > 0 {
			fmt.Fprintf(w, "  fnlet sequential with them on its node: %d calls, p50 %s  p95 %s ms; phases (mean ms): %s\n",
				a.Calls, ms(a.Stats.P50), ms(a.Stats.P95), phaseLine(a.Phases))
		}
	}
	if ws := res.Writes; ws != nil && ws.Calls > 0 {
		fmt.Fprintf(w, "\napiserver writes per fnlet call (events on the shared watch, over all %d calls): %.2f\n", ws.Calls, ws.WritesCall)
		keys := slices.Sorted(maps.Keys(ws.PerCall))
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, ws.PerCall[k]))
		}
		fmt.Fprintf(w, "  %s\n", strings.Join(parts, " | "))
		if len(ws.EventsCall) > 0 {
			parts = parts[:0]
			tot := 0.0
			for _, k := range slices.Sorted(maps.Keys(ws.EventsCall)) {
				parts = append(parts, fmt.Sprintf("%s %.2f", k, ws.EventsCall[k]))
				tot += ws.EventsCall[k]
			}
			fmt.Fprintf(w, "  plus Event objects per call: %.2f (%s)\n", tot, strings.Join(parts, ", "))
		}
		if len(ws.Apiserver) > 0 {
			fmt.Fprintf(w, "apiserver requests per fnlet call over the sequential rounds (%d fnlet calls; apiserver-wide, so other clients of a shared apiserver count too):\n", ws.SeqFnletCall)
			for _, r := range ws.Apiserver {
				fmt.Fprintf(w, "  %-36s %5.2f/call  mean %6.1f ms\n", r.What, r.PerCall, r.MeanMs)
			}
		}
		if len(ws.Manager) > 0 {
			fmt.Fprintf(w, "manager, per fnlet call over the sequential rounds (its own metrics):\n")
			for _, r := range ws.Manager {
				if r.MeanMs > 0 {
					fmt.Fprintf(w, "  %-36s %5.2f/call  mean %6.1f ms\n", r.What, r.PerCall, r.MeanMs)
				} else {
					fmt.Fprintf(w, "  %-36s %5.2f/call\n", r.What, r.PerCall)
				}
			}
		}
	}
	if res.Logs != nil {
		logLines(w, res.Logs)
	}
	if res.Profile != "" {
		fmt.Fprintf(w, "\nmanager CPU profile (%ds of sequential fnlet calls): %s\n", cfg.ProfileSeconds, res.Profile)
	}
	for _, p := range res.LoadProfiles {
		fmt.Fprintf(w, "manager CPU profile (load or full cache): %s\n", p)
	}
	if len(res.Leftovers) > 0 {
		fmt.Fprintln(w, "\nleftovers after the run (all but log dirs must be 0; log dirs are kept on purpose for --log-retention):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "namespace\tcontainers\ttasks\tactive snapshots\tleases\tshim bundles\trunc state\tstdin files\tlog dirs\t")
		leaks := 0
		for _, l := range res.Leftovers {
			shim := fmt.Sprint(l.ShimBundles)
			if l.ShimBundles < 0 {
				shim = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t\n", l.Namespace, l.Containers, l.Tasks, l.ActiveSnapshots, l.Leases,
				shim, l.RuncState, l.StdinFiles, l.LogDirs)
			leaks += l.leaks()
		}
		tw.Flush()
		for _, l := range res.Leftovers {
			if l.Error != "" {
				fmt.Fprintf(w, "  %s: %s\n", l.Namespace, l.Error)
			}
			if len(l.Names) > 0 {
				fmt.Fprintf(w, "  %s: %s\n", l.Namespace, strings.Join(l.Names, ", "))
			}
		}
		fmt.Fprintf(w, "  FIFO dirs in %s: %d at start, %d at end (machine-wide: other clients count too)\n", fifoDir, res.FIFODirs0, res.FIFODirs1)
		goals = append(goals, verdict("zero leaks", leaks == 0, fmt.Sprint(leaks)))
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if len(goals) > 0 {
		fmt.Fprintf(w, "\ngoals (this run only): %s\n", strings.Join(goals, "; "))
	}
}

func cpuLine(t *loadRun) string {
	n := float64(t.Calls + t.Late + t.Errors)
	if n == 0 {
		return ""
	}
	parts := []string{fmt.Sprintf("manager %.1f", t.CPUSeconds*1000/n)}
	for _, k := range slices.Sorted(maps.Keys(t.ProcCPU)) {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, t.ProcCPU[k]*1000/n))
	}
	parts = append(parts, fmt.Sprintf("| machine %.0f%% busy (= %.0f CPU-ms/call)", t.Busy*100, t.Busy*float64(numCPU())*t.WallNs.Seconds()*1000/n))
	return strings.Join(parts, "  ")
}

func phaseLine(ps []phase) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s %s", p.Name, ms(p.D)))
	}
	return strings.Join(parts, "  ")
}

func verdict(goal string, ok bool, got string) string {
	if ok {
		return goal + ": met (" + got + ")"
	}
	return goal + ": NOT met (" + got + ")"
}

func firstErr(l *loadRun) string {
	if l.FirstError == "" {
		return ""
	}
	return " (first: " + l.FirstError + ")"
}

func writeJSON(dir string, res *result) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	type wayResult struct {
		Stats   stats    `json:"stats"`
		Samples []sample `json:"samples"`
	}
	doc := struct {
		*result
		Results map[string]wayResult `json:"results"`
		Ratios  map[string]float64   `json:"ratiosP50,omitempty"`
	}{result: res, Results: map[string]wayResult{}, Ratios: map[string]float64{}}
	for n, ss := range res.Seq {
		doc.Results[n] = wayResult{Stats: statsOf(totals(ss)), Samples: ss}
	}
	p50 := func(n string) (time.Duration, bool) { r, ok := doc.Results[n]; return r.Stats.P50, ok }
	for _, r := range [][3]string{{"fnlet/raw", "fnlet", "raw"}, {"fnlet/ctrd", "fnlet", "ctrd"}, {"ctrd/raw", "ctrd", "raw"},
		{"ctr/raw", "ctr", "raw"}, {"pod/fnlet", "pod", "fnlet"}, {"fnlet-warm/raw", "fnlet-warm", "raw"},
		{"fnlet-warm/fnlet", "fnlet-warm", "fnlet"}, {"pod/fnlet-warm", "pod", "fnlet-warm"}, {"ctrd-warm/raw", "ctrd-warm", "raw"}} {
		a, ok1 := p50(r[1])
		b, ok2 := p50(r[2])
		if ok1 && ok2 {
			doc.Ratios[r[0]] = ratio(a, b)
		}
	}
	for n := range doc.Results {
		if strings.HasPrefix(n, "raw+") {
			a, _ := p50(n)
			if b, ok := p50("raw"); ok {
				doc.Ratios[n+"/raw"] = ratio(a, b)
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
	}, strings.TrimPrefix(res.Config.Daemon, "v"))
	kind := "runtime"
	if res.Config.hasFnlet() {
		kind = "system"
	}
	name := fmt.Sprintf("%s-%s-%s-%s.json", kind, version, res.Config.Runtime, res.Time.Format("20060102T150405Z"))
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}
