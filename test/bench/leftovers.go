package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// fifoDir is where containerd clients create stdio FIFOs by default
// (ctr run does; fnlet uses files). Shared by every client on the machine,
// so only its change over the run is reported.
const fifoDir = "/run/containerd/fifo"

// leftovers is what a containerd namespace still holds after a run. All but
// the retained log dirs must be 0.
type leftovers struct {
	Namespace       string   `json:"namespace"`
	Error           string   `json:"error,omitempty"`
	Containers      int      `json:"containers"`
	Tasks           int      `json:"tasks"`
	ActiveSnapshots int      `json:"activeSnapshots"` // committed ones are the image's layers
	Leases          int      `json:"leases"`
	ShimBundles     int      `json:"shimBundles"` // -1: not counted
	RuncState       int      `json:"runcState"`
	LogDirs         int      `json:"logDirs"`    // kept on purpose (log retention)
	StdinFiles      int      `json:"stdinFiles"` // must be 0
	Names           []string `json:"names,omitempty"`
}

func (l leftovers) leaks() int {
	return l.Containers + l.Tasks + l.ActiveSnapshots + l.Leases + max(l.ShimBundles, 0) + l.RuncState + l.StdinFiles
}

func countDir(dir string) int {
	es, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	return len(es)
}

func countLeftovers(ctx context.Context, cfg config, ns, logDir, ioRoot string) leftovers {
	lo := leftovers{Namespace: ns, ShimBundles: -1}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, ns), 30*time.Second)
	defer cancel()
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(ns))
	if err != nil {
		lo.Error = err.Error()
		return lo
	}
	defer c.Close()
	cs, err := c.Containers(ctx)
	if err != nil {
		lo.Error = err.Error()
		return lo
	}
	lo.Containers = len(cs)
	for _, x := range cs[:min(len(cs), 5)] {
		lo.Names = append(lo.Names, "container "+x.ID())
	}
	if ts, err := c.TaskService().List(ctx, &tasks.ListTasksRequest{}); err == nil {
		lo.Tasks = len(ts.Tasks)
	}
	_ = c.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind != snapshots.KindCommitted {
			lo.ActiveSnapshots++
			if len(lo.Names) < 10 {
				lo.Names = append(lo.Names, "snapshot "+i.Name)
			}
		}
		return nil
	})
	if ls, err := c.LeasesService().List(ctx); err == nil {
		lo.Leases = len(ls)
	}
	if cfg.ContainerdState != "" {
		lo.ShimBundles = countDir(filepath.Join(cfg.ContainerdState, "io.containerd.runtime.v2.task", ns))
	}
	lo.RuncState = countDir(filepath.Join("/run/containerd/runc", ns))
	for _, d := range []string{logDir, ioRoot} {
		if d == "" {
			continue
		}
		es, _ := os.ReadDir(d)
		for _, e := range es {
			if !e.IsDir() {
				continue
			}
			lo.LogDirs++
			if _, err := os.Stat(filepath.Join(d, e.Name(), "stdin")); err == nil {
				lo.StdinFiles++
			}
		}
	}
	return lo
}

// waitNoContainers waits (bounded) until the namespace has no containers.
func waitNoContainers(ctx context.Context, cfg config, ns string, d time.Duration) {
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(ns))
	if err != nil {
		return
	}
	defer c.Close()
	ctx = namespaces.WithNamespace(ctx, ns)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cs, err := c.Containers(ctx)
		if err == nil && len(cs) == 0 {
			return
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
}
