package chaos

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"

	"github.com/fnlet/fnlet/internal/ctrd"
)

// startTracker counts task starts per container from containerd itself:
// every /tasks/start event of the namespace, plus a listing of the tasks
// after every (re)subscription and every 250 ms (a start in the instant a
// restarted containerd was not yet subscribed to is still seen if its task
// lives longer than that). A run is one host PID of a container's init
// process: a call that ran twice has two.
type startTracker struct {
	addr, ns string

	mu        sync.Mutex
	pids      map[string]map[uint32]bool // container ID → init PIDs
	connects  int
	connected chan struct{}
	once      sync.Once
}

func newStartTracker(addr, ns string) *startTracker {
	return &startTracker{addr: addr, ns: ns, pids: map[string]map[uint32]bool{}, connected: make(chan struct{})}
}

func (s *startTracker) record(id string, pid uint32) {
	if !strings.HasPrefix(id, "fnlet-") || pid == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pids[id] == nil {
		s.pids[id] = map[uint32]bool{}
	}
	s.pids[id][pid] = true
}

// runs is how many times the call's container was started.
func (s *startTracker) runs(callUID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pids[ctrd.ContainerID(callUID)])
}

func (s *startTracker) reconnects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connects - 1
}

func (s *startTracker) waitConnected(timeout time.Duration) error {
	select {
	case <-s.connected:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("no event subscription to %s after %s", s.addr, timeout)
	}
}

func (s *startTracker) run(ctx context.Context) {
	var c *client.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		if c == nil {
			var err error
			if c, err = client.New(s.addr, client.WithDefaultNamespace(s.ns)); err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
		}
		sctx, cancel := context.WithCancel(namespaces.WithNamespace(ctx, s.ns))
		envelopes, errs := c.Subscribe(sctx, `namespace==`+s.ns+`,topic=="/tasks/start"`)
		if err := s.listTasks(sctx, c); err != nil {
			cancel()
			_ = c.Reconnect()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		s.connects++
		s.mu.Unlock()
		s.once.Do(func() { close(s.connected) })
	stream:
		for {
			select {
			case <-ctx.Done():
				break stream
			case <-errs:
				break stream
			case <-tick.C:
				_ = s.listTasks(sctx, c)
			case env := <-envelopes:
				if env == nil || env.Event == nil {
					continue
				}
				v, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					continue
				}
				if e, ok := v.(*eventstypes.TaskStart); ok {
					s.record(e.ContainerID, e.Pid)
				}
			}
		}
		cancel()
		if ctx.Err() == nil {
			_ = c.Reconnect()
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (s *startTracker) listTasks(ctx context.Context, c *client.Client) error {
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := c.TaskService().List(lctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return err
	}
	for _, p := range resp.Tasks {
		s.record(p.ContainerID, p.Pid)
	}
	return nil
}

// ctrdClient is a containerd client for the chaos namespace.
func ctrdClient(t *testing.T) (*client.Client, context.Context) {
	t.Helper()
	return ctrdClientIn(t, env.ctrdNS)
}

// ctrdClientIn is a containerd client for namespace ns.
func ctrdClientIn(t *testing.T, ns string) (*client.Client, context.Context) {
	t.Helper()
	c, err := client.New(env.containerd, client.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, namespaces.WithNamespace(context.Background(), ns)
}

func leaseIDs(ctx context.Context) (map[string]bool, error) {
	return leaseIDsIn(ctx, env.ctrdNS)
}

func leaseIDsIn(ctx context.Context, ns string) (map[string]bool, error) {
	c, err := client.New(env.containerd, client.WithDefaultNamespace(ns))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ls, err := c.LeasesService().List(namespaces.WithNamespace(ctx, ns))
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, l := range ls {
		ids[l.ID] = true
	}
	return ids, nil
}

// leaks lists what is left of the given calls (by UID) once they are all
// over: containers, tasks, snapshots, new leases, shims, processes and
// cgroups, FIFOs, stdin files. Log files are the retention policy's
// business and are checked by the tests that set one.
func leaks(t *testing.T, callUIDs []string, logDirs ...string) []string {
	t.Helper()
	return leaksIn(t, env.ctrdNS, env.baseLeases, callUIDs, logDirs...)
}

// leaksIn is leaks in containerd namespace ns, whose leases before the
// suite (or the test) were baseLeases.
func leaksIn(t *testing.T, ns string, baseLeases map[string]bool, callUIDs []string, logDirs ...string) []string {
	t.Helper()
	c, ctx := ctrdClientIn(t, ns)
	ids := map[string]bool{}
	for _, u := range callUIDs {
		ids[ctrd.ContainerID(u)] = true
	}
	var out []string
	cs, err := c.Containers(ctx)
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	for _, ct := range cs {
		if ids[ct.ID()] {
			out = append(out, "container "+ct.ID())
		}
	}
	resp, err := c.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		t.Fatalf("list tasks: %v", err)
	}
	for _, p := range resp.Tasks {
		if ids[p.ContainerID] || ids[p.ID] {
			out = append(out, fmt.Sprintf("task %s (pid %d, status %s)", p.ID, p.Pid, p.Status))
		}
	}
	err = c.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if ids[info.Name] {
			out = append(out, "snapshot "+info.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk snapshots: %v", err)
	}
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		t.Fatalf("list leases: %v", err)
	}
	for _, l := range ls {
		// The calls' own leases, and any other made during this test (a
		// client's random one) that was there before neither the suite nor it.
		if ids[l.ID] || (!baseLeases[l.ID] && !l.CreatedAt.Before(testStarted)) {
			out = append(out, "lease "+l.ID)
		}
	}
	out = append(out, hostLeaks(ns, ids)...)
	for _, dir := range logDirs {
		out = append(out, ioDirLeaks(dir)...)
	}
	return out
}

// hostLeaks looks at the host for what containerd would not report: shim
// processes of the calls, processes still in a call's cgroup (children that
// outlived the call), cgroup directories and FIFOs of cio.
func hostLeaks(ns string, ids map[string]bool) []string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			for i := 0; i+1 < len(args); i++ {
				if args[i] == "-id" && ids[args[i+1]] && hasArg(args, "-namespace", ns) {
					out = append(out, fmt.Sprintf("shim pid %s for %s", p.Name(), args[i+1]))
				}
			}
		}
		cg, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for id := range ids {
			if strings.Contains(string(cg), "/"+ns+"/"+id+"\n") {
				out = append(out, fmt.Sprintf("process %s (%s) still in the cgroup of %s", p.Name(), strings.Join(args, " "), id))
				break
			}
		}
	}
	ctrls, _ := filepath.Glob("/sys/fs/cgroup/*/" + ns)
	if fi, err := os.Stat("/sys/fs/cgroup/" + ns); err == nil && fi.IsDir() {
		ctrls = append(ctrls, "/sys/fs/cgroup/"+ns)
	}
	for _, dir := range ctrls {
		for id := range ids {
			if _, err := os.Stat(filepath.Join(dir, id)); err == nil {
				out = append(out, "cgroup "+filepath.Join(dir, id))
			}
		}
	}
	fifos, _ := filepath.Glob("/run/containerd/fifo/*/*")
	for _, f := range fifos {
		base := filepath.Base(f)
		for id := range ids {
			if strings.HasPrefix(base, id+"-") {
				out = append(out, "cio FIFO "+f)
			}
		}
	}
	return out
}

func hasArg(args []string, flag, val string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == val {
			return true
		}
	}
	return false
}

// ioDirLeaks finds FIFOs and input files left in a manager's --log-dir: a
// finished call keeps only its stdout, stderr and markers.
func ioDirLeaks(root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if d.Type()&fs.ModeNamedPipe != 0 {
			out = append(out, "FIFO "+p)
		} else if d.Name() == "stdin" {
			out = append(out, "input file "+p)
		}
		return nil
	})
	return out
}

// logDirCount is the number of call IO directories under a --log-dir.
func logDirCount(root string) int {
	es, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return -1
	}
	n := 0
	for _, e := range es {
		if e.IsDir() && strings.HasPrefix(e.Name(), "fnlet-") {
			n++
		}
	}
	return n
}
