package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// percentile is the p-th percentile (0..100) of ds by nearest rank; 0 for
// none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// spread is the largest and the mean of per-node counts over n nodes
// (nodes missing from counts count 0).
func spread(counts map[string]int, n int) (maxv int, mean float64) {
	total := 0
	for _, c := range counts {
		total += c
		maxv = max(maxv, c)
	}
	if n == 0 {
		return 0, 0
	}
	return maxv, float64(total) / float64(n)
}

// uniformSpread is the max/mean of calls per node to expect if total
// calls went to n nodes uniformly at random (averaged over trials): the
// yardstick for the measured max/mean, which with a few calls per node is
// mostly sampling noise (at 9 calls per node on 100 nodes, about 2).
func uniformSpread(total, n, trials int) float64 {
	if total == 0 || n == 0 {
		return 0
	}
	rng := rand.New(rand.NewPCG(uint64(total), uint64(n)))
	counts := make([]int, n)
	sum := 0
	for range trials {
		clear(counts)
		for range total {
			counts[rng.IntN(n)]++
		}
		sum += slices.Max(counts)
	}
	return float64(sum) / float64(trials) / (float64(total) / float64(n))
}

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go runs on.
const clkTck = 100

// procCPU is the user+system CPU time pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime+stime (fields 14 and 15) from a /proc/<pid>/stat
// line. The command (field 2) is in parentheses and may hold spaces, so
// the fields count from the last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command field")
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields", len(f)+2)
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clkTck, nil
}

// childPID finds the child process of parent whose command is comm
// (envtest starts kube-apiserver and etcd as children of this process).
func childPID(parent int, comm string) (int, error) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 2 || s[open+1:end] != comm || f[1] != strconv.Itoa(parent) {
			continue
		}
		return strconv.Atoi(strings.Fields(s)[0])
	}
	return 0, fmt.Errorf("no child process %q of %d", comm, parent)
}

// rssMiB is pid's resident set in MiB.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
