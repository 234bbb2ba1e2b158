package ctrd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/fnlet/fnlet/test/testfn/pattern"
)

func TestRunExitZeroWithStdout(t *testing.T) {
	rt := newTestRuntime(t, "")
	s := runToExit(t, rt, testCall(t, "-stdout-text", "hello fnlet", "-stderr-text", "to stderr"))
	r := s.Result
	if r.ExitCode != 0 || r.Signal != "" || r.OOMKilled {
		t.Fatalf("result = %+v, want exit 0, no signal, no OOM", r)
	}
	if got := string(r.Stdout.Data); got != "hello fnlet\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := string(r.Stderr.Data); got != "to stderr\n" {
		t.Errorf("stderr = %q", got)
	}
	if r.StartedAt.IsZero() || r.FinishedAt.Before(r.StartedAt) {
		t.Errorf("times: started %v finished %v", r.StartedAt, r.FinishedAt)
	}
	if r.Usage.CPU <= 0 || r.Usage.PeakMemoryBytes <= 0 {
		t.Errorf("usage not collected: %+v", r.Usage)
	}
}

func TestRunNonZeroExit(t *testing.T) {
	rt := newTestRuntime(t, "")
	s := runToExit(t, rt, testCall(t, "-stderr-text", "boom", "-exit", "3"))
	if s.Result.ExitCode != 3 || s.Result.OOMKilled || s.Result.Signal != "" {
		t.Fatalf("result = %+v, want exit 3", s.Result)
	}
	if string(s.Result.Stderr.Data) != "boom\n" {
		t.Errorf("stderr = %q", s.Result.Stderr.Data)
	}
}

func TestStdinRoundTripBinary(t *testing.T) {
	for _, mode := range []struct {
		name string
		mode StdinMode
	}{{"file", StdinFile}, {"fifo", StdinFIFO}} {
		t.Run(mode.name, func(t *testing.T) {
			rt := newTestRuntime(t, "", WithStdinMode(mode.mode), WithOutputLimit(8<<20))
			input := make([]byte, 1<<20)
			if _, err := rand.Read(input); err != nil {
				t.Fatal(err)
			}
			call := testCall(t, "-stdin-echo")
			call.Input = input
			s := runToExit(t, rt, call)
			if s.Result.ExitCode != 0 {
				t.Fatalf("exit %d, stderr %q", s.Result.ExitCode, s.Result.Stderr.Data)
			}
			stdout, _ := rt.LogPaths(call.UID)
			got, err := os.ReadFile(stdout)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, input) {
				t.Fatalf("stdout differs from input: %d bytes vs %d, sha %x vs %x", len(got), len(input), sha256.Sum256(got), sha256.Sum256(input))
			}
			if _, err := os.Stat(filepath.Join(s.LogDir, stdinFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("input file left after Delete: %v", err)
			}
		})
	}
}

// TestStdinRegularFilePinned pins undocumented containerd behaviour our IO
// design relies on: a regular file as the task's stdin path is read to its
// end and the program sees EOF there (no CloseIO involved).
func TestStdinRegularFilePinned(t *testing.T) {
	rt := newTestRuntime(t, "", WithStdinMode(StdinFile))
	call := testCall(t, "-stdin-sha256")
	call.Input = []byte("exactly these bytes\x00\xff")
	s := runToExit(t, rt, call)
	sum := sha256.Sum256(call.Input)
	want := fmt.Sprintf("stdin-sha256=%s stdin-bytes=%d\n", hex.EncodeToString(sum[:]), len(call.Input))
	if got := string(s.Result.Stdout.Data); got != want {
		t.Fatalf("stdout = %q, want %q", got, want)
	}
}

func TestLargeOutputTailAndFullFile(t *testing.T) {
	rt := newTestRuntime(t, "", WithOutputLimit(64<<20), WithTailBytes(4096))
	const n = 20 << 20
	call := testCall(t, "-stdout-bytes", fmt.Sprint(n))
	s := runToExit(t, rt, call)
	r := s.Result
	if r.ExitCode != 0 {
		t.Fatalf("exit %d: %q", r.ExitCode, r.Stderr.Data)
	}
	if !r.Stdout.Truncated || len(r.Stdout.Data) != 4096 || r.Stdout.Size != n {
		t.Fatalf("tail: truncated=%v len=%d size=%d", r.Stdout.Truncated, len(r.Stdout.Data), r.Stdout.Size)
	}
	full := pattern.Bytes(pattern.Text, n)
	if !bytes.Equal(r.Stdout.Data, full[n-4096:]) {
		t.Errorf("tail is not the last 4096 bytes of the stream")
	}
	stdout, _ := rt.LogPaths(call.UID)
	got, err := os.ReadFile(stdout)
	if err != nil {
		t.Fatal(err)
	}
	if err := pattern.Check(pattern.Text, n, got); err != nil {
		t.Fatalf("full log: %v", err)
	}
}

func TestOutputOverCapEndsCall(t *testing.T) {
	rt := newTestRuntime(t, "", WithOutputLimit(1<<20), WithOutputPollInterval(50*time.Millisecond))
	// Writes forever-ish: far more than the cap, then sleeps so only the cap ends it.
	call := testCall(t, "-no-newline-bytes", "200M", "-sleep", "60s")
	s := runToExit(t, rt, call)
	r := s.Result
	if !r.OutputLimitExceeded {
		t.Fatalf("OutputLimitExceeded not set: %+v", r)
	}
	if r.Signal != "SIGKILL" {
		t.Errorf("signal = %q, want SIGKILL", r.Signal)
	}
	if r.Stdout.Size > 200<<20 || r.Stdout.Size < 1<<20 {
		t.Errorf("stdout size %d: want over the 1 MiB cap and well under 200 MiB", r.Stdout.Size)
	}
	if rt.eventsFor(call.UID, EventOutputLimit) != 1 {
		t.Errorf("want exactly one OutputLimit event")
	}
}

// TestOutputCapWithoutWatch: a caller that only reads State, with no Watch
// running, gets the cap too.
func TestOutputCapWithoutWatch(t *testing.T) {
	rt, err := New(daemonAddress(t), WithNamespace(testNS), WithIORoot(t.TempDir()), WithInit(initBinary(t)), WithOutputLimit(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	ctx := ctxTimeout(t, 60*time.Second)
	call := testCall(t, "-no-newline-bytes", "200M", "-sleep", "60s")
	if _, err := rt.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Run(ctx, call); err != nil {
		t.Fatal(err)
	}
	var s State
	poll(t, 30*time.Second, "the call ends", func() bool {
		if s, err = rt.State(ctx, call.UID); err != nil {
			t.Fatal(err)
		}
		return s.Phase == PhaseExited
	})
	if !s.Result.OutputLimitExceeded || s.Result.Signal != "SIGKILL" {
		t.Fatalf("result %+v, want killed for its output", s.Result)
	}
	if err := rt.Delete(ctx, call.UID); err != nil {
		t.Fatal(err)
	}
}

func TestOOMKilled(t *testing.T) {
	rt := newTestRuntime(t, "")
	call := testCall(t, "-alloc-mib", "64")
	call.MemoryBytes = 32 << 20
	s := runToExit(t, rt, call)
	if !s.Result.OOMKilled || s.Result.ExitCode != 137 {
		t.Fatalf("result = %+v, want OOMKilled with exit 137", s.Result)
	}
	if rt.eventsFor(call.UID, EventOOM) != 1 {
		t.Errorf("OOM events = %d, want 1 (de-duplicated)", rt.eventsFor(call.UID, EventOOM))
	}
	if s.Result.Usage.PeakMemoryBytes < 16<<20 || s.Result.Usage.PeakMemoryBytes > 33<<20 {
		t.Errorf("peak memory %d, want near the 32 MiB limit", s.Result.Usage.PeakMemoryBytes)
	}
}

func TestKilledFromOutsideIsNotOOM(t *testing.T) {
	rt := newTestRuntime(t, "")
	ctx := ctxTimeout(t, 60*time.Second)
	call := testCall(t, "-sleep", "60s")
	call.MemoryBytes = 64 << 20
	mustRun(t, rt, call)
	if err := rt.Signal(ctx, call.UID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s, err := rt.Wait(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Result.ExitCode != 137 || s.Result.OOMKilled || s.Result.Signal != "SIGKILL" {
		t.Fatalf("result = %+v, want exit 137 by SIGKILL and no OOM", s.Result)
	}
	mustDelete(t, rt, call.UID)
}

func TestStopWithGrace(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantExit int32
		minTime  time.Duration
	}{
		{"exits on TERM", []string{"-stdout-text", "ready", "-sleep", "60s"}, 143, 0},
		{"ignores TERM, killed after grace", []string{"-trap-term", "-stdout-text", "ready", "-sleep", "60s"}, 137, 900 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rt := newTestRuntime(t, "")
			ctx := ctxTimeout(t, 60*time.Second)
			call := testCall(t, tc.args...)
			mustRun(t, rt, call)
			waitOutput(t, rt, call.UID, "ready") // its signal handling is set up
			start := time.Now()
			if err := rt.Stop(ctx, call.UID, time.Second); err != nil {
				t.Fatal(err)
			}
			s, err := rt.Wait(ctx, call.UID)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if s.Result.ExitCode != tc.wantExit {
				t.Fatalf("exit %d, want %d", s.Result.ExitCode, tc.wantExit)
			}
			if took < tc.minTime || took > 10*time.Second {
				t.Errorf("stop took %v", took)
			}
			mustDelete(t, rt, call.UID)
		})
	}
}

func TestEnvWorkdirUser(t *testing.T) {
	rt := newTestRuntime(t, "")
	call := testCall(t, "-print-env", "-print-cwd", "-print-uid")
	call.Env = []string{"FOO=bar", "PATH=/custom"}
	call.WorkingDir = "/tmp"
	call.User = &User{UID: 1000, GID: 1000}
	out := string(runToExit(t, rt, call).Result.Stdout.Data)
	for _, want := range []string{"FOO=bar\n", "PATH=/custom\n", "cwd=/tmp\n", "uid=1000 gid=1000"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPidsLimitBoundsForkBomb(t *testing.T) {
	rt := newTestRuntime(t, "")
	call := testCall(t, "-fork-bomb", "-fork-bomb-max", "400")
	call.Pids = 32
	call.MilliCPU = 500
	s := runToExit(t, rt, call)
	out := string(s.Result.Stdout.Data)
	var n int
	if _, err := fmt.Sscanf(out, "fork-bomb=%d", &n); err != nil {
		t.Fatalf("output %q: %v (stderr %q)", out, err, s.Result.Stderr.Data)
	}
	if n >= 32 || n < 1 {
		t.Fatalf("fork bomb got %d children with pids limit 32", n)
	}
}

func TestCPUQuotaEnforced(t *testing.T) {
	rt := newTestRuntime(t, "")
	call := testCall(t, "-spin", "2s", "-spin-procs", "2")
	call.MilliCPU = 200
	s := runToExit(t, rt, call)
	// 2 s of wall time at 0.2 CPU is ~0.4 s of CPU; unlimited it would be ~2-4 s.
	if cpu := s.Result.Usage.CPU; cpu > 900*time.Millisecond || cpu < 100*time.Millisecond {
		t.Fatalf("CPU time %v with a 200m quota over 2s, want about 0.4s", cpu)
	}
}

func TestImageMissingWithNeverIsNotFound(t *testing.T) {
	rt := newTestRuntime(t, "")
	_, err := rt.EnsureImage(ctxTimeout(t, 10*time.Second), "localhost/fnlet/does-not-exist:v1", PullNever, nil)
	var ie *ImageError
	if !errors.As(err, &ie) || ie.Class != PullNotFound || !errdefs.IsNotFound(err) {
		t.Fatalf("err = %v, want ImageError NotFound", err)
	}
	if !strings.Contains(err.Error(), "imagePullPolicy is Never") {
		t.Errorf("message does not say why: %v", err)
	}
}

func TestRunIsIdempotent(t *testing.T) {
	rt := newTestRuntime(t, "")
	ctx := ctxTimeout(t, 30*time.Second)
	call := testCall(t, "-stdout-text", "once", "-sleep", "500ms")
	mustRun(t, rt, call)
	if _, err := rt.Run(ctx, call); err != nil {
		t.Fatalf("second Run: %v", err)
	}
	s, err := rt.Wait(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Result.Stdout.Data) != "once\n" {
		t.Fatalf("stdout %q: the call ran more than once or not at all", s.Result.Stdout.Data)
	}
	mustDelete(t, rt, call.UID)
}

// TestReattachAfterRestart: a second Runtime (a restarted manager) finds a
// running call, gets its later output and its exit code.
func TestReattachAfterRestart(t *testing.T) {
	ioRoot := t.TempDir()
	rt1 := newTestRuntime(t, ioRoot)
	ctx := ctxTimeout(t, 60*time.Second)
	call := testCall(t, "-stdout-text", "before", "-sleep", "2s", "-stderr-text", "after", "-exit", "7")
	mustRun(t, rt1, call)
	rt1.stop()

	rt2 := newTestRuntime(t, ioRoot)
	states, err := rt2.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasCall(states, call.UID, PhaseRunning) {
		t.Fatalf("Recover did not find the running call: %+v", states)
	}
	s, err := rt2.Wait(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Result.ExitCode != 7 || string(s.Result.Stdout.Data) != "before\n" || string(s.Result.Stderr.Data) != "after\n" {
		t.Fatalf("after re-attach: %+v", s.Result)
	}
	mustDelete(t, rt2, call.UID)
}

// TestOutputSurvivesManagerDeath: output written while no runtime exists,
// by a call that also exits while none exists, is complete afterwards.
func TestOutputSurvivesManagerDeath(t *testing.T) {
	ioRoot := t.TempDir()
	rt1 := newTestRuntime(t, ioRoot)
	ctx := ctxTimeout(t, 60*time.Second)
	const n = 10 << 20
	call := testCall(t, "-sleep", "300ms", "-stdout-bytes", fmt.Sprint(n), "-binary", "-exit", "5")
	mustRun(t, rt1, call)
	rt1.stop()
	waitStopped(t, call.UID) // the call writes and exits with no manager

	rt2 := newTestRuntime(t, ioRoot)
	states, err := rt2.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasCall(states, call.UID, PhaseExited) {
		t.Fatalf("Recover did not report the exited call: %+v", states)
	}
	s, err := rt2.State(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Result.ExitCode != 5 || s.Result.Stdout.Size != n {
		t.Fatalf("result %+v", s.Result)
	}
	stdout, _ := rt2.LogPaths(call.UID)
	got, err := os.ReadFile(stdout)
	if err != nil {
		t.Fatal(err)
	}
	if err := pattern.Check(pattern.Binary, n, got); err != nil {
		t.Fatal(err)
	}
	mustDelete(t, rt2, call.UID)
}

func TestSecondRunForSameUIDAttaches(t *testing.T) {
	ioRoot := t.TempDir()
	rt1 := newTestRuntime(t, ioRoot)
	call := testCall(t, "-sleep", "1s", "-stdout-text", "x")
	mustRun(t, rt1, call)
	rt1.stop()
	rt2 := newTestRuntime(t, ioRoot)
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := rt2.Run(ctx, call); err != nil {
		t.Fatalf("Run after restart: %v", err)
	}
	s, err := rt2.Wait(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Result.Stdout.Data) != "x\n" {
		t.Fatalf("stdout %q", s.Result.Stdout.Data)
	}
	mustDelete(t, rt2, call.UID)
}

func TestNoLeaksAfterManyCalls(t *testing.T) {
	n := 200
	if testing.Short() {
		n = 20
	}
	rt := newTestRuntime(t, "")
	c, ctx := rawClient(t)
	for i := 0; i < n; i++ {
		args := []string{"-stdout-text", "ok"}
		if i%2 == 1 {
			args = append(args, "-exit", "1")
		}
		runToExit(t, rt, testCall(t, args...))
	}
	cs, err := c.Containers(ctx, managedFilter)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := c.TaskService().List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	ourTasks := 0
	for _, tk := range tasks.Tasks {
		if strings.HasPrefix(tk.ID, containerPrefix) {
			ourTasks++
		}
	}
	var snaps int
	if err := c.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, containerPrefix) {
			snaps++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	leases, err := c.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 0 || ourTasks != 0 || snaps != 0 || len(leases) != 0 {
		t.Fatalf("after %d calls: %d containers, %d tasks, %d snapshots, %d leases left", n, len(cs), ourTasks, snaps, len(leases))
	}
	// No FIFO dirs: the runtime never creates any in file mode.
	if m, _ := filepath.Glob("/run/containerd/fifo/*/fnlet-*"); len(m) != 0 {
		t.Fatalf("FIFO leftovers: %v", m)
	}
}

func mustRun(t testing.TB, rt *testRuntime, call Call) {
	t.Helper()
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := rt.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	s, err := rt.Run(ctx, call)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if s.Phase != PhaseRunning && s.Phase != PhaseExited {
		t.Fatalf("after Run: phase %s", s.Phase)
	}
}

func mustDelete(t testing.TB, rt *testRuntime, uid string) {
	t.Helper()
	if err := rt.Delete(ctxTimeout(t, 30*time.Second), uid); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

func hasCall(states []State, uid string, phase Phase) bool {
	for _, s := range states {
		if s.Call.UID == uid && s.Phase == phase {
			return true
		}
	}
	return false
}
