package ctrd

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestBuildSpecInit(t *testing.T) {
	p := Policy{InitBinary: "/var/lib/fnlet/calls/.bin/fnlet-init", ExitFile: "/var/lib/fnlet/calls/fnlet-u1/exit-code"}
	call := specCall(func(c *Call) { c.Args = []string{"-exit", "3"}; c.Pids = 10 })
	s := mustBuildSpec(t, call, testImage, p)
	if want := []string{initPath, "/testfn", "-exit", "3"}; !slices.Equal(s.Process.Args, want) {
		t.Errorf("args %q, want %q", s.Process.Args, want)
	}
	mounts := map[string]specs.Mount{}
	for _, m := range s.Mounts {
		mounts[m.Destination] = m
	}
	for _, tc := range []struct {
		dst, src string
		opts     []string
	}{
		{initPath, p.InitBinary, []string{"ro", "nosuid", "nodev"}},
		{initExitPath, p.ExitFile, []string{"rw", "nosuid", "nodev", "noexec"}},
	} {
		m, ok := mounts[tc.dst]
		if !ok {
			t.Errorf("no mount at %s: %+v", tc.dst, s.Mounts)
			continue
		}
		if m.Source != tc.src || m.Type != "bind" {
			t.Errorf("mount %s: %+v, want a bind of %s", tc.dst, m, tc.src)
		}
		for _, o := range tc.opts {
			if !slices.Contains(m.Options, o) {
				t.Errorf("mount %s: options %q lack %q", tc.dst, m.Options, o)
			}
		}
	}
	// fnlet-init is one more task under pids.max than the call asked for.
	if got := *s.Linux.Resources.Pids.Limit; got != 11 {
		t.Errorf("pids limit %d, want 10 + 1 for the init", got)
	}
	// Without an init the spec is the call's own.
	plain := mustBuildSpec(t, call, testImage, Policy{})
	if plain.Process.Args[0] != "/testfn" || *plain.Linux.Resources.Pids.Limit != 10 {
		t.Errorf("without init: args %q, pids %d", plain.Process.Args, *plain.Linux.Resources.Pids.Limit)
	}
	for _, m := range plain.Mounts {
		if strings.HasPrefix(m.Destination, "/dev/.fnlet") {
			t.Errorf("without init: mount %+v", m)
		}
	}
}

func TestReadExitFile(t *testing.T) {
	for _, tc := range []struct {
		content string
		code    int32
		ok      bool
	}{
		{"0\n", 0, true},
		{"143\n", 143, true},
		{"", 0, false},                   // nothing recorded (SIGKILL)
		{"7", 0, false},                  // cut short
		{"256\n", 0, false},              // not an exit code
		{"-1\n", 0, false},               // not an exit code
		{"x\n", 0, false},                // the call wrote nonsense
		{"1234567890123456\n", 0, false}, // longer than any record
	} {
		p := filepath.Join(t.TempDir(), "exit-code")
		if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		code, at, ok := readExitFile(p)
		if ok != tc.ok || code != tc.code {
			t.Errorf("%q: got (%d, %v), want (%d, %v)", tc.content, code, ok, tc.code, tc.ok)
		}
		if ok && time.Since(at) > time.Minute {
			t.Errorf("%q: time %v is not the file's", tc.content, at)
		}
	}
	if _, _, ok := readExitFile(filepath.Join(t.TempDir(), "missing")); ok {
		t.Error("a missing file read as a record")
	}
}

// TestExitCodeSurvivesLostTask: a call exits while no manager runs, then
// containerd discards its task (as it does for exited tasks when it
// restarts; here the tasks API does the same). The exit code fnlet-init
// recorded is the result; without the init the status is lost.
func TestExitCodeSurvivesLostTask(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     []Opt
		wantLost bool
	}{
		{"with init", nil, false},
		{"without init", []Opt{WithInit("")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ioRoot := t.TempDir()
			rt1 := newTestRuntime(t, ioRoot, tc.opts...)
			ctx := ctxTimeout(t, 60*time.Second)
			call := testCall(t, "-stdout-text", "out", "-sleep", "200ms", "-exit", "9")
			mustRun(t, rt1, call)
			rt1.stop()
			waitStopped(t, call.UID) // it exits with no manager

			c, cctx := rawClient(t)
			if _, err := c.TaskService().Delete(cctx, &tasksapi.DeleteTaskRequest{ContainerID: ContainerID(call.UID)}); err != nil {
				t.Fatalf("discard the task: %v", err)
			}
			rt2 := newTestRuntime(t, ioRoot, tc.opts...)
			s, err := rt2.State(ctx, call.UID)
			if err != nil {
				t.Fatal(err)
			}
			if s.Phase != PhaseExited || s.Result == nil {
				t.Fatalf("phase %s, result %+v", s.Phase, s.Result)
			}
			r := s.Result
			if r.ExitStatusLost != tc.wantLost {
				t.Fatalf("ExitStatusLost %v, want %v (result %+v)", r.ExitStatusLost, tc.wantLost, r)
			}
			if !tc.wantLost && (r.ExitCode != 9 || r.FinishedAt.IsZero() || r.FinishedAt.Before(r.StartedAt)) {
				t.Errorf("exit code %d finished %v started %v, want 9 after the start", r.ExitCode, r.FinishedAt, r.StartedAt)
			}
			if string(r.Stdout.Data) != "out\n" {
				t.Errorf("stdout %q", r.Stdout.Data)
			}
			mustDelete(t, rt2, call.UID)
		})
	}
}

// TestInitRunsTheProgram: under fnlet-init the program sees its own args,
// gets signals (see TestStopWithGrace) and its exit code is the call's; a
// program that is not there fails like a shell's, with the reason on stderr.
func TestInitRunsTheProgram(t *testing.T) {
	rt := newTestRuntime(t, "")
	s := runToExit(t, rt, testCall(t, "-print-args", "-exit", "4"))
	if s.Result.ExitCode != 4 || !strings.Contains(string(s.Result.Stdout.Data), `"-print-args","-exit","4"`) {
		t.Errorf("result %+v stdout %q", s.Result, s.Result.Stdout.Data)
	}
	missing := testCall(t)
	missing.Command = []string{"/no/such/program"}
	s = runToExit(t, rt, missing)
	if s.Result.ExitCode != 127 || !strings.Contains(string(s.Result.Stderr.Data), "fnlet-init: exec /no/such/program: No such file or directory") {
		t.Errorf("missing program: exit %d stderr %q", s.Result.ExitCode, s.Result.Stderr.Data)
	}
	code, _, ok := readExitFile(filepath.Join(s.LogDir, exitFile))
	if !ok || code != 127 {
		t.Errorf("exit file: %d %v", code, ok)
	}
}

// TestNewTaskWaitsOutStaleBundle: a bundle directory left by an interrupted
// create (what containerd keeps for up to ~10 s after a manager died in
// NewTask) delays the call's start instead of failing it.
func TestNewTaskWaitsOutStaleBundle(t *testing.T) {
	rt := newTestRuntime(t, "")
	// hack/containerd-up.sh puts the daemon's state beside its socket.
	state := filepath.Join(filepath.Dir(daemonAddress(t)), "state", "io.containerd.runtime.v2.task", testNS)
	if _, err := os.Stat(filepath.Dir(state)); err != nil {
		t.Skipf("skipped: containerd's state dir is not beside its socket (not started by hack/containerd-up.sh): %v", err)
	}
	call := testCall(t, "-stdout-text", "ran")
	bundle := filepath.Join(state, ContainerID(call.UID))
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	const stale = 1500 * time.Millisecond
	timer := time.AfterFunc(stale, func() { os.RemoveAll(bundle) })
	defer timer.Stop()
	start := time.Now()
	s := runToExit(t, rt, call)
	if string(s.Result.Stdout.Data) != "ran\n" {
		t.Fatalf("result %+v", s.Result)
	}
	if waited := time.Since(start); waited < stale {
		t.Fatalf("ran after %v, before the stale bundle was gone (%v): the test did not test", waited, stale)
	}
}

func TestIsStaleBundle(t *testing.T) {
	for msg, want := range map[string]bool{
		"mkdir /run/containerd/io.containerd.runtime.v2.task/fnlet/fnlet-x: file exists":                                    true,
		"failed to create shim task: OCI runtime create failed: runc create failed: container with given ID already exists": true,
		"task fnlet-x: already exists": false, // containerd's own: taken over, not waited for
		"OCI runtime create failed: exec: \"nope\": executable file not found in $PATH": false,
		"write /x: file exists on disk": false,
	} {
		if got := isStaleBundle(errors.New(msg)); got != want {
			t.Errorf("%q: %v, want %v", msg, got, want)
		}
	}
}
