package chaos

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"testing"
	"time"
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
	self := strconv.Itoa(os.Getpid()) // a live process that does not wait on a FIFO
	for _, tc := range []struct {
		leak string
		want bool
	}{
		{"container fnlet-aaa", false},
		{"shim pid " + self + " for fnlet-ccc", false}, // create not retried
		{"shim pid " + self + " for fnlet-aaa", false}, // retried, but not blocked on a FIFO
		{"shim pid 999999999 for fnlet-aaa", false},    // no such process
	} {
		if stuckShim(tc.leak, got) != tc.want {
			t.Errorf("stuckShim(%q) = %v, want %v", tc.leak, !tc.want, tc.want)
		}
	}

	// This process, with a thread blocked opening a FIFO for writing as
	// the stuck daemon is, reads as a stuck shim for a retried create.
	fifo := filepath.Join(t.TempDir(), "log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
	}()
	defer func() { // the reader lets the writer's open return
		if r, err := os.OpenFile(fifo, os.O_RDONLY, 0); err == nil {
			<-opened
			r.Close()
		}
	}()
	leak := "shim pid " + self + " for fnlet-aaa"
	deadline := time.Now().Add(10 * time.Second)
	for !stuckShim(leak, got) {
		if time.Now().After(deadline) {
			t.Fatal("a thread blocked opening a FIFO did not read as a stuck shim in 10s")
		}
		time.Sleep(10 * time.Millisecond) // polls the kernel's wchan; no event to wait for
	}
	if stuckShim("shim pid "+self+" for fnlet-ccc", got) {
		t.Error("a create that was not retried reads as a stuck shim")
	}
}
