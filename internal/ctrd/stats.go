package ctrd

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/typeurl/v2"
)

type taskMetrics struct {
	usage    Usage
	oomKills uint64
}

// metrics reads the task's cgroup metrics, for cgroup v1 and v2 hosts.
func (r *Runtime) metrics(ctx context.Context, task client.Task) (taskMetrics, error) {
	m, err := task.Metrics(ctx)
	if err != nil {
		return taskMetrics{}, wrapErr(err, "metrics of %s", task.ID())
	}
	data, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		return taskMetrics{}, fmt.Errorf("decode metrics of %s: %w", task.ID(), err)
	}
	return decodeMetrics(data)
}

func decodeMetrics(data any) (taskMetrics, error) {
	var tm taskMetrics
	switch s := data.(type) {
	case *v1.Metrics:
		if mem := s.GetMemory(); mem != nil {
			tm.usage.PeakMemoryBytes = int64(mem.GetUsage().GetMax())
		}
		if cpu := s.GetCPU(); cpu != nil {
			tm.usage.CPU = time.Duration(cpu.GetUsage().GetTotal())
		}
		tm.oomKills = s.GetMemoryOomControl().GetOomKill()
	case *v2.Metrics:
		if mem := s.GetMemory(); mem != nil {
			tm.usage.PeakMemoryBytes = int64(mem.GetMaxUsage())
		}
		if cpu := s.GetCPU(); cpu != nil {
			tm.usage.CPU = time.Duration(cpu.GetUsageUsec()) * time.Microsecond
		}
		tm.oomKills = s.GetMemoryEvents().GetOomKill()
	default:
		return tm, fmt.Errorf("unknown metrics type %T", data)
	}
	return tm, nil
}
