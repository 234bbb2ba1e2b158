package chaos

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/fnlet/fnlet/internal/testenv"
)

// TestUnitStuckShimClassification: only the create the runtime logged as
// retried with a new shim is a candidate, read from the logrus text the
// manager writes; a leak line that is not a shim never is.
func TestUnitStuckShimClassification(t *testing.T) {
	log := `time="2026-12-06T05:24:01Z" level=warning msg="fnlet: task create got no answer within 30s; retrying with a new shim" group=fnlet-aaa-0a0b0c0d id=fnlet-aaa
{"level":"info","msg":"claimed","id":"fnlet-bbb"}
time="2026-12-06T05:24:02Z" level=info msg="other line" id=fnlet-ccc
`
	got := retriedCreates(log)
	if want := map[string]bool{"fnlet-aaa": true}; !reflect.DeepEqual(got, want) {
		t.Fatalf("retriedCreates = %v, want %v", got, want)
	}
	// Stand-ins for shim daemons are children of this test, not the test
	// process itself: under hack/chaos.sh it has children of its own.
	fifo := filepath.Join(t.TempDir(), "log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	idle := startShell(t, "exec sleep 600")                   // runs nothing, waits on no FIFO
	blocked := startShell(t, "exec echo stuck >"+fifo)        // blocks opening the FIFO for writing
	parent := startShell(t, "sleep 600 & exec echo x >"+fifo) // blocked too, but has a child
	// Let both shells reach their blocking open, then classify. The
	// kernel's wchan is the only signal of it, and no event reports it.
	for _, pid := range []string{blocked, parent} {
		testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, "pid "+pid+" blocks opening the FIFO", func() error {
			if !testenv.WaitsOnFIFO(pid) {
				return fmt.Errorf("wchan is not wait_for_partner")
			}
			return nil
		})
	}
	for _, tc := range []struct {
		leak string
		want bool
	}{
		{"container fnlet-aaa", false},
		{"shim pid " + idle + " for fnlet-aaa", false},    // retried, but not blocked on a FIFO
		{"shim pid " + blocked + " for fnlet-ccc", false}, // blocked, but the create was not retried
		{"shim pid " + parent + " for fnlet-aaa", false},  // blocked, but runs a process
		{"shim pid 999999999 for fnlet-aaa", false},       // no such process
		{"shim pid " + blocked + " for fnlet-aaa", true},  // the stuck daemon
	} {
		if stuckShim(tc.leak, got) != tc.want {
			t.Errorf("stuckShim(%q) = %v, want %v", tc.leak, !tc.want, tc.want)
		}
	}
}

// startShell runs script in sh as a child of the test and returns its PID; the
// child is killed and reaped when the test ends.
func startShell(t *testing.T, script string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its children die with it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return strconv.Itoa(cmd.Process.Pid)
}
