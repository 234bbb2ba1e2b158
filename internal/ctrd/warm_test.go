package ctrd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// testPool is a pool profile of the test image: 128 MiB, 1 CPU, 64 pids.
func testPool(mut ...func(*WarmSpec)) WarmSpec {
	w := WarmSpec{Pool: "test", Image: testfnImage, MemoryBytes: 128 << 20, MilliCPU: 1000, Pids: 64}
	for _, m := range mut {
		m(&w)
	}
	return w
}

// warmCall is a call that fits testPool.
func warmCall(t testing.TB, args ...string) Call {
	c := testCall(t, args...)
	c.MemoryBytes, c.MilliCPU, c.Pids = 128<<20, 1000, 64
	return c
}

// mustPrestart makes a pre-started container and removes it at the end of
// the test if no call took it.
func mustPrestart(t testing.TB, rt *testRuntime, spec WarmSpec) string {
	t.Helper()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := rt.EnsureImage(ctx, spec.Image, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	id, err := rt.Prestart(ctx, spec)
	if err != nil {
		t.Fatalf("Prestart: %v", err)
	}
	t.Cleanup(func() { removeContainer(t, id) })
	return id
}

// runWarm runs call in a pre-started container, failing on a miss.
func runWarm(t testing.TB, rt *testRuntime, call Call) State {
	t.Helper()
	ctx := ctxTimeout(t, 30*time.Second)
	s, miss, err := rt.RunWarm(ctx, call)
	if err != nil || miss != "" {
		t.Fatalf("RunWarm: miss %q, err %v", miss, err)
	}
	return s
}

func waitExit(t testing.TB, rt *testRuntime, uid string) State {
	t.Helper()
	s, err := rt.Wait(ctxTimeout(t, 60*time.Second), uid)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if s.Phase != PhaseExited {
		t.Fatalf("after Wait: phase %s", s.Phase)
	}
	return s
}

// TestWarmCallIsTheCall: a call in a pre-started container gets its own
// argv, env, working dir, input and exit code, its output under its own
// path, and leaves nothing behind.
func TestWarmCallIsTheCall(t *testing.T) {
	rt := newTestRuntime(t, "")
	c, rctx := rawClient(t)
	id := mustPrestart(t, rt, testPool(func(w *WarmSpec) { w.User = &User{UID: 1000, GID: 1000} }))
	ws, err := rt.WarmContainers(ctxTimeout(t, 10*time.Second))
	if err != nil || len(ws) != 1 || ws[0].ID != id || !ws[0].Ready || ws[0].Pool != "test" {
		t.Fatalf("WarmContainers = %+v, %v; want %s ready", ws, err, id)
	}
	call := warmCall(t, "-stdin-echo", "-print-env", "-print-cwd", "-print-uid", "-stderr-text", "oops", "-exit", "3")
	call.Env = []string{"FOO=bar"}
	call.WorkingDir = "/tmp"
	call.User = &User{UID: 1000, GID: 1000}
	call.Input = []byte("the input\n")
	runWarm(t, rt, call)
	s := waitExit(t, rt, call.UID)
	if s.ContainerID != id {
		t.Errorf("ran in %s, want the pre-started %s", s.ContainerID, id)
	}
	out := string(s.Result.Stdout.Data)
	for _, want := range []string{"the input\n", "FOO=bar\n", "PATH=", "cwd=/tmp\n", "uid=1000 gid=1000"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if s.Result.ExitCode != 3 || string(s.Result.Stderr.Data) != "oops\n" || s.Result.StartedAt.IsZero() {
		t.Errorf("result %+v", s.Result)
	}
	if s.Result.Usage.CPU <= 0 {
		t.Errorf("usage not collected: %+v", s.Result.Usage)
	}
	if ws, _ := rt.WarmContainers(ctxTimeout(t, 10*time.Second)); len(ws) != 0 {
		t.Errorf("a claimed container is still offered: %+v", ws)
	}
	mustDelete(t, rt, call.UID)
	stdout, _ := rt.LogPaths(call.UID)
	if b, err := os.ReadFile(stdout); err != nil || !strings.Contains(string(b), "the input") {
		t.Errorf("full stdout under the call's path: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(rt.dir(id).path, ctlDir)); !os.IsNotExist(err) {
		t.Errorf("the call's env and input outlive it: %v", err)
	}
	if _, err := c.LoadContainer(rctx, id); !IsNotFound(err) {
		t.Errorf("container %s left: %v", id, err)
	}
	assertNoWarmLeft(t)
	// The retention policy takes the directory and the symlink.
	if _, err := rt.PruneLogs(ctxTimeout(t, 10*time.Second), time.Now().Add(time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(rt.dir(ContainerID(call.UID)).path); !os.IsNotExist(err) {
		t.Errorf("symlink of the call left after PruneLogs: %v", err)
	}
}

// TestWarmCallThatBeganColdLeavesNoLease: a cold Run cut short by
// containerd dying leaves the call's own lease; when the retry runs the
// call in a pre-started container, deleting the call removes that lease
// too (chaos row 1p found it left behind).
func TestWarmCallThatBeganColdLeavesNoLease(t *testing.T) {
	rt := newTestRuntime(t, "")
	c, rctx := rawClient(t)
	mustPrestart(t, rt, testPool())
	call := warmCall(t, "-stdout-text", "warm")
	own := ContainerID(call.UID)
	if _, err := c.LeasesService().Create(rctx, leases.WithID(own)); err != nil { // what the cut-short Run made
		t.Fatal(err)
	}
	runWarm(t, rt, call)
	if s := waitExit(t, rt, call.UID); s.ContainerID == own {
		t.Fatalf("ran cold in %s, want a pre-started container", own)
	}
	mustDelete(t, rt, call.UID)
	ls, err := c.LeasesService().List(rctx, "id=="+own)
	if err != nil || len(ls) != 0 {
		t.Fatalf("the call's own lease after Delete: %v, %v", ls, err)
	}
}

// assertNoWarmLeft: no pre-started container, task, snapshot or lease.
func assertNoWarmLeft(t testing.TB) {
	t.Helper()
	c, ctx := rawClient(t)
	cs, _ := c.Containers(ctx, `labels."`+LabelPool+`"`)
	var snaps int
	_ = c.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, warmPrefix) {
			snaps++
		}
		return nil
	})
	ls, _ := c.LeasesService().List(ctx)
	var leases int
	for _, l := range ls {
		if strings.HasPrefix(l.ID, warmPrefix) {
			leases++
		}
	}
	if len(cs) != 0 || snaps != 0 || leases != 0 {
		t.Fatalf("left: %d pre-started containers, %d snapshots, %d leases", len(cs), snaps, leases)
	}
}

// TestWarmMatching: a call uses a pre-started container only when it
// shares its image, user, rootfs mode and network, its limits are within
// the pool's and it has no volumes or scratch (mounts are fixed when the
// container is made); otherwise the miss says why and nothing is taken.
func TestWarmMatching(t *testing.T) {
	rt := newTestRuntime(t, "")
	mustPrestart(t, rt, testPool())
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := rt.EnsureImage(ctx, busyboxImage, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mut  func(*Call)
		miss string
	}{
		{"other image", func(c *Call) { c.Image = busyboxImage; c.Command = []string{"true"} }, MissNoPool},
		{"other user", func(c *Call) { c.User = &User{UID: 1000, GID: 1000} }, MissProfile},
		{"read-only rootfs", func(c *Call) { c.ReadOnlyRootfs = true }, MissProfile},
		{"more memory", func(c *Call) { c.MemoryBytes = 256 << 20 }, MissLimits},
		{"no memory limit", func(c *Call) { c.MemoryBytes = 0 }, MissLimits},
		{"more pids", func(c *Call) { c.Pids = 100 }, MissLimits},
		{"a volume", func(c *Call) { c.Volumes = []Volume{{Name: "w", MountPath: "/w", TmpfsBytes: 1 << 20}} }, MissVolumes},
		{"scratch", func(c *Call) { c.ScratchBytes = 1 << 20 }, MissVolumes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			call := warmCall(t, "-exit", "0")
			tc.mut(&call)
			s, miss, err := rt.RunWarm(ctx, call)
			if err != nil || miss != tc.miss {
				t.Fatalf("RunWarm = %+v, miss %q, err %v; want miss %q", s, miss, err, tc.miss)
			}
		})
	}
	// Smaller limits fit; the container is then taken, and the next call
	// finds the pool empty.
	call := warmCall(t, "-exit", "0")
	call.MemoryBytes, call.Pids = 64<<20, 16
	runWarm(t, rt, call)
	if _, miss, err := rt.RunWarm(ctx, warmCall(t)); err != nil || miss != MissEmpty {
		t.Fatalf("second call: miss %q, err %v; want %q", miss, err, MissEmpty)
	}
	waitExit(t, rt, call.UID)
	mustDelete(t, rt, call.UID)
}

// TestWarmAppliesTheCallsLimits: the pool's class is the ceiling; the
// call's own, tighter limits hold in its container.
func TestWarmAppliesTheCallsLimits(t *testing.T) {
	rt := newTestRuntime(t, "")
	t.Run("memory", func(t *testing.T) {
		mustPrestart(t, rt, testPool())
		call := warmCall(t, "-alloc-mib", "64")
		call.MemoryBytes = 32 << 20
		runWarm(t, rt, call)
		s := waitExit(t, rt, call.UID)
		if !s.Result.OOMKilled || s.Result.ExitCode != 137 {
			t.Errorf("result %+v, want OOMKilled at the call's 32 MiB (the pool allows 128)", s.Result)
		}
		mustDelete(t, rt, call.UID)
	})
	t.Run("pids", func(t *testing.T) {
		mustPrestart(t, rt, testPool())
		call := warmCall(t, "-fork-bomb", "-fork-bomb-max", "200")
		call.Pids = 16
		runWarm(t, rt, call)
		s := waitExit(t, rt, call.UID)
		var n int
		if _, err := fmt.Sscanf(string(s.Result.Stdout.Data), "fork-bomb=%d", &n); err != nil || n >= 16 || n < 1 {
			t.Errorf("fork bomb got %d children (%v) with the call's pids limit 16 (the pool allows 64): %q", n, err, s.Result.Stdout.Data)
		}
		mustDelete(t, rt, call.UID)
	})
}

// TestWarmSurvivesRestart: a restarted runtime adopts the pre-started
// containers and finds the calls running in claimed ones, including a
// claim its predecessor made but never released.
func TestWarmSurvivesRestart(t *testing.T) {
	ioRoot := t.TempDir()
	rt1 := newTestRuntime(t, ioRoot)
	for range 3 {
		mustPrestart(t, rt1, testPool())
	}
	ctx := ctxTimeout(t, 60*time.Second)

	// One call released and running, one claimed but not released (a
	// manager that died between the claim and the go byte).
	callRun := warmCall(t, "-stdout-text", "before", "-sleep", "1s", "-exit", "4")
	runWarm(t, rt1, callRun)
	ws, err := rt1.WarmContainers(ctx)
	if err != nil || len(ws) != 2 {
		t.Fatalf("WarmContainers = %+v, %v; want 2 left", ws, err)
	}
	held := ws[0].ID
	callHeld := warmCall(t, "-stdout-text", "released after the restart")
	h := rt1.handle(held)
	h.claimed = true
	ci, _ := rt1.images.get(testfnImage)
	if err := rt1.writeClaim(ctx, h, callHeld, ci); err != nil {
		t.Fatal(err)
	}
	rt1.stop()

	rt2 := newTestRuntime(t, ioRoot)
	states, err := rt2.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasCall(states, callRun.UID, PhaseRunning) && !hasCall(states, callRun.UID, PhaseExited) {
		t.Fatalf("Recover did not find the warm call: %+v", states)
	}
	for _, s := range states {
		if s.Call.UID == "" {
			t.Errorf("Recover reports a pre-started container as a call: %+v", s)
		}
	}
	ws, err = rt2.WarmContainers(ctx)
	if err != nil || len(ws) != 1 || !ws[0].Ready {
		t.Fatalf("WarmContainers after restart = %+v, %v; want the one spare, ready", ws, err)
	}
	s := waitExit(t, rt2, callRun.UID)
	if s.Result.ExitCode != 4 || string(s.Result.Stdout.Data) != "before\n" {
		t.Errorf("warm call across the restart: %+v", s.Result)
	}
	mustDelete(t, rt2, callRun.UID)
	// Run resumes the held claim: it releases the init, once.
	if _, err := rt2.Run(ctx, callHeld); err != nil {
		t.Fatal(err)
	}
	s = waitExit(t, rt2, callHeld.UID)
	if s.ContainerID != held || string(s.Result.Stdout.Data) != "released after the restart\n" {
		t.Errorf("held claim: in %s, %+v", s.ContainerID, s.Result)
	}
	mustDelete(t, rt2, callHeld.UID)
	// The spare serves a call of the new runtime (once it knows the image:
	// RunWarm asks containerd nothing).
	if _, err := rt2.EnsureImage(ctx, testfnImage, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	call := warmCall(t, "-stdout-text", "adopted")
	runWarm(t, rt2, call)
	if s := waitExit(t, rt2, call.UID); string(s.Result.Stdout.Data) != "adopted\n" {
		t.Errorf("adopted container: %+v", s.Result)
	}
	mustDelete(t, rt2, call.UID)
	assertNoWarmLeft(t)
}

// removeContainer removes container id, its task, snapshot and lease with
// containerd's own client: the runtime that made it may be closed.
func removeContainer(t testing.TB, id string) {
	c, ctx := rawClient(t)
	if ctr, err := c.LoadContainer(ctx, id); err == nil {
		if task, err := ctr.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, client.WithProcessKill)
		}
		_ = ctr.Delete(ctx, client.WithSnapshotCleanup)
	}
	_ = c.LeasesService().Delete(ctx, leases.Lease{ID: id})
}

// stubContainer and stubTask stand for containerd objects a handle holds;
// takeWarm only checks that they are there.
type stubContainer struct{ client.Container }
type stubTask struct{ client.Task }

// TestTakeWarmOnlyWhenTheInitWaits: a pre-started container is claimable
// only once its init holds the go FIFO. Prestart registers the handle and
// its task before the init runs; a call claimed in that window was
// released to nobody and never started (seen as calls stuck in Running
// under make bench's paced warm run).
func TestTakeWarmOnlyWhenTheInitWaits(t *testing.T) {
	const id, digest = warmPrefix + "unit", "sha256:unit"
	cases := map[string]struct {
		initWaits bool
		wantMiss  string
	}{
		"init not started yet": {initWaits: false, wantMiss: MissEmpty},
		"init waits":           {initWaits: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := &Runtime{ioRoot: t.TempDir(), calls: map[string]*callHandle{}}
			h := newHandle(id, CallRef{}, stubContainer{}, 0)
			h.task = stubTask{}
			h.warm = &warmProfile{WarmSpec: WarmSpec{Pool: "ns/p"}, Digest: digest}
			r.putHandle(h)
			d := r.dir(id)
			if err := os.MkdirAll(d.path, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := d.prepareCtl(); err != nil {
				t.Fatal(err)
			}
			if tc.initWaits {
				// As fnlet-init does: hold the FIFO open for reading.
				f, err := os.OpenFile(filepath.Join(d.file(ctlDir), "go"), os.O_RDONLY|syscall.O_NONBLOCK, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
			}
			got, miss := r.takeWarm(digest, Call{UID: "c1", Pools: []string{"ns/p"}}, 0, 0)
			if miss != tc.wantMiss || (got != nil) != (tc.wantMiss == "") {
				t.Fatalf("takeWarm = %v, miss %q; want miss %q", got, miss, tc.wantMiss)
			}
		})
	}
}

// TestPruneWarmDirs: the directory of a pre-started container that never
// came to be goes; those of live containers, of containers being made,
// of claimed ones (a call's output) and of cold calls stay.
func TestPruneWarmDirs(t *testing.T) {
	r := &Runtime{ioRoot: t.TempDir(), calls: map[string]*callHandle{}}
	dirs := map[string]struct {
		claimed, live, making bool
		wantKept              bool
	}{
		warmPrefix + "orphan":  {wantKept: false},
		warmPrefix + "live":    {live: true, wantKept: true},
		warmPrefix + "making":  {making: true, wantKept: true},
		warmPrefix + "claimed": {claimed: true, wantKept: true},
		ContainerID("a-call"):  {wantKept: true},
	}
	live := map[string]bool{}
	for id, d := range dirs {
		cd := r.dir(id)
		if err := os.MkdirAll(cd.path, 0o700); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(id, warmPrefix) {
			if err := cd.prepareCtl(); err != nil {
				t.Fatal(err)
			}
		}
		if d.claimed {
			if err := os.WriteFile(cd.file(claimFile), []byte(`{"uid":"u"}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if d.live {
			live[id] = true
		}
		if d.making {
			r.prestarting.Store(id, true)
		}
	}
	r.pruneWarmDirs(live)
	for id, d := range dirs {
		_, err := os.Stat(r.dir(id).path)
		if kept := err == nil; kept != d.wantKept {
			t.Errorf("%s: kept %v, want %v", id, kept, d.wantKept)
		}
	}
}
