package ctrd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fnlet/fnlet/internal/testenv"
)

// TestRunAfterInterruptedCreate: a Run cut short at a random moment (the
// manager killed mid-RPC: containerd sees its context cancelled) and then
// resumed by a new runtime (the restarted manager) runs the call exactly
// once, whatever state containerd's create and cleanup were left in.
func TestRunAfterInterruptedCreate(t *testing.T) {
	ioRoot := t.TempDir()
	n := 12
	if testing.Short() {
		n = 4
	}
	var ids []string
	retried := map[string]bool{} // creates retried with a new shim
	for i := range n {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			rt1 := newTestRuntime(t, ioRoot)
			call := testCall(t, "-stdout-text", "once")
			ids = append(ids, ContainerID(call.UID))
			ctx := ctxTimeout(t, 60*time.Second)
			if _, err := rt1.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
				t.Fatal(err)
			}
			cut, cancel := context.WithTimeout(ctx, time.Duration(5+rand.IntN(120))*time.Millisecond)
			_, err := rt1.Run(cut, call)
			cancel()
			t.Logf("interrupted Run: %v", err)
			rt1.stop()

			rt2 := newTestRuntime(t, ioRoot)
			_, err = rt2.Run(ctx, call)
			if rt2.CreateTimeouts() > 0 {
				retried[ContainerID(call.UID)] = true
			}
			if errors.Is(err, ErrStaleBundle) {
				// containerd's cleanup of the interrupted create failed
				// for good: the call fails with that reason, never runs,
				// and deleting it leaves nothing of fnlet's behind (the
				// leftovers check below).
				t.Logf("resumed Run failed as it must when containerd kept the bundle: %v", err)
				mustDelete(t, rt2, call.UID)
				return
			} else if err != nil {
				t.Fatalf("resumed Run: %v", err)
			}
			s, err := rt2.Wait(ctx, call.UID)
			if err != nil {
				t.Fatal(err)
			}
			if s.Phase != PhaseExited {
				t.Fatalf("Wait returned phase %s", s.Phase)
			}
			if s.Result.ExitCode != 0 || string(s.Result.Stdout.Data) != "once\n" {
				t.Fatalf("result %+v stdout %q", s.Result, s.Result.Stdout.Data)
			}
			mustDelete(t, rt2, call.UID)
		})
	}
	// containerd finishes the interrupted creates' cleanup in the
	// background (its timeouts are 2×5 s): wait for it, bounded.
	var left []string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if left = leftovers(t, ids, retried); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// TestStaleExitEventIgnored: an exit event for the call's container ID
// that is not its task's (containerd's late cleanup of an interrupted
// create publishes one) neither ends Wait nor the kill escalation.
func TestStaleExitEventIgnored(t *testing.T) {
	rt := newTestRuntime(t, "")
	ctx := ctxTimeout(t, 60*time.Second)
	call := testCall(t, "-sleep", "1500ms", "-stdout-text", "done")
	mustRun(t, rt, call)
	c, cctx := rawClient(t)
	id := ContainerID(call.UID)
	start := time.Now()
	if err := c.EventService().Publish(cctx, "/tasks/exit", &eventstypes.TaskExit{
		ContainerID: id, ID: id, Pid: 1 << 30, ExitStatus: 255, ExitedAt: timestamppb.Now(),
	}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	s, err := rt.Wait(ctx, call.UID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Phase != PhaseExited || time.Since(start) < time.Second {
		t.Fatalf("Wait returned phase %s after %v: the stale exit ended it", s.Phase, time.Since(start))
	}
	if s.Result.ExitCode != 0 || string(s.Result.Stdout.Data) != "done\n" {
		t.Fatalf("result %+v", s.Result)
	}
	if n := rt.eventsFor(call.UID, EventExit); n < 1 {
		t.Errorf("%d exit events reached the handler", n)
	}
	mustDelete(t, rt, call.UID)
}

// leftovers lists what containerd and the host still hold of the given
// containers: containers, tasks, snapshots, leases and shim processes.
// A shim of a container in retried (its create got no answer and went to
// a new shim) that runs nothing and blocks on its log FIFO is the daemon
// of docs/runtime.md "Stuck shims": a cut inside containerd's "shim
// start" leaves it, and nothing but a kill on the host can end it. It is
// logged, not listed; any other shim is.
func leftovers(t *testing.T, ids []string, retried map[string]bool) []string {
	t.Helper()
	c, ctx := rawClient(t)
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var out []string
	for _, id := range ids {
		if _, err := c.LoadContainer(ctx, id); err == nil {
			out = append(out, "container "+id)
		}
		if err := c.SnapshotService("overlayfs").Remove(ctx, id); err == nil {
			out = append(out, "snapshot "+id)
		}
	}
	tasks, err := c.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks.Tasks {
		if want[tk.ID] {
			out = append(out, "task "+tk.ID)
		}
	}
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if want[l.ID] {
			out = append(out, "lease "+l.ID)
		}
	}
	for pid, id := range shimsOf(want) {
		if retried[id] && testenv.WaitsOnFIFO(pid) && !testenv.HasChild(pid) {
			t.Logf("shim %s of %s is stuck on its log FIFO after the cut create (not counted; docs/runtime.md, \"Stuck shims\")", pid, id)
			continue
		}
		out = append(out, "shim "+pid+" of "+id)
	}
	return out
}

// shimsOf finds the shim daemons serving the containers in want: their
// PIDs, each with its container ID.
func shimsOf(want map[string]bool) map[string]string {
	found := map[string]string{}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-id" && want[args[i+1]] && strings.Contains(args[0], "containerd-shim") {
				found[filepath.Base(filepath.Dir(p))] = args[i+1]
			}
		}
	}
	return found
}

// TestStaleBundleErrorKeepsItsReason: the reason survives the conversion
// every runtime error goes through, so callers (and the call's status)
// can tell it apart.
func TestStaleBundleErrorKeepsItsReason(t *testing.T) {
	inner := status.Error(codes.Unknown, "mkdir /run/containerd/io.containerd.runtime.v2.task/ns/id: file exists")
	if !isStaleBundle(inner) {
		t.Fatalf("%v not taken for a stale bundle", inner)
	}
	err := wrapErr(staleBundleError(inner), "create task %s", "id")
	if !errors.Is(err, ErrStaleBundle) {
		t.Fatalf("errors.Is(%v, ErrStaleBundle) = false", err)
	}
}

// TestResumeStoppedTask: a resumed Run that finds the call's task stopped
// runs it again only when fnlet-init never began in it (a "runc start"
// cut short: runc's init died before exec'ing it), and otherwise reports
// the stopped task. The states are made by running the call, then
// rewinding its exit file and output as such a task leaves them.
func TestResumeStoppedTask(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exitFile  string // as the stopped task left it
		discarded bool   // containerd, restarted, discarded the dead task
		reruns    string // the reruns file, if any
		wantRerun bool
	}{
		{name: "init never began", exitFile: "", wantRerun: true},
		{name: "init began, no exit recorded (killed)", exitFile: "-\n", wantRerun: false},
		{name: "exit recorded", exitFile: "0\n", wantRerun: false},
		{name: "init never began, task discarded", exitFile: "", discarded: true, wantRerun: true},
		{name: "init began, task discarded", exitFile: "-\n", discarded: true, wantRerun: false},
		{name: "init never began, reruns used up", exitFile: "", reruns: "3\n", wantRerun: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ioRoot := t.TempDir()
			rt1 := newTestRuntime(t, ioRoot)
			call := testCall(t, "-stdout-text", "once")
			ctx := ctxTimeout(t, 60*time.Second)
			if _, err := rt1.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := rt1.Run(ctx, call); err != nil {
				t.Fatalf("Run: %v", err)
			}
			t.Cleanup(func() { removeContainer(t, ContainerID(call.UID)) }) // if the test fails
			if s, err := rt1.Wait(ctx, call.UID); err != nil || string(s.Result.Stdout.Data) != "once\n" {
				t.Fatalf("first run: %+v, %v", s.Result, err)
			}
			rt1.stop() // not deleted: the task stays, stopped
			if tc.discarded {
				c, rctx := rawClient(t)
				ctr, err := c.LoadContainer(rctx, ContainerID(call.UID))
				if err != nil {
					t.Fatal(err)
				}
				task, err := ctr.Task(rctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := task.Delete(rctx); err != nil {
					t.Fatal(err)
				}
			}
			d := rt1.dir(ContainerID(call.UID))
			files := map[string]string{exitFile: tc.exitFile, stdoutFile: ""}
			if tc.reruns != "" {
				files[rerunsFile] = tc.reruns
			}
			for name, content := range files {
				if err := os.WriteFile(d.file(name), []byte(content), 0o666); err != nil {
					t.Fatal(err)
				}
			}

			rt2 := newTestRuntime(t, ioRoot)
			if _, err := rt2.Run(ctx, call); err != nil {
				t.Fatalf("resumed Run: %v", err)
			}
			s, err := rt2.Wait(ctx, call.UID)
			if err != nil {
				t.Fatal(err)
			}
			reran := string(s.Result.Stdout.Data) == "once\n"
			if reran != tc.wantRerun || reran && s.Result.ExitCode != 0 {
				t.Fatalf("ran again: %v, want %v (result %+v)", reran, tc.wantRerun, s.Result)
			}
			mustDelete(t, rt2, call.UID)
		})
	}
}

// TestInitMarksItsStart: fnlet-init marks the exit file while the program
// runs (what neverRan reads), and replaces the mark with the exit code.
func TestInitMarksItsStart(t *testing.T) {
	rt := newTestRuntime(t, "")
	call := testCall(t, "-sleep", "5s", "-exit", "3")
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := rt.EnsureImage(ctx, call.Image, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Run(ctx, call); err != nil {
		t.Fatalf("Run: %v", err)
	}
	defer mustDelete(t, rt, call.UID)
	f := rt.dir(ContainerID(call.UID)).file(exitFile)
	poll(t, 4*time.Second, "the start mark in the exit file while the call runs", func() bool {
		b, err := os.ReadFile(f)
		return err == nil && string(b) == "-\n"
	})
	if _, err := rt.Wait(ctx, call.UID); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(f); err != nil || string(b) != "3\n" {
		t.Errorf("exit file after the exit: %q, %v", b, err)
	}
}
