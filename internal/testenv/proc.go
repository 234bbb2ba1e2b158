package testenv

import (
	"os"
	"path/filepath"
	"strings"
)

// Process facts read from /proc, for tests that judge what a kill left
// behind (shim daemons above all). pid is a decimal PID.

// HasChild says whether any process has pid as its parent.
func HasChild(pid string) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// Fields after the command name (which may hold spaces): state, ppid, ...
		st := string(b)
		f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
		if len(f) > 1 && f[1] == pid {
			return true
		}
	}
	return false
}

// WaitsOnFIFO says whether a thread of pid waits in the kernel for the
// other end of a FIFO it opens (wchan wait_for_partner).
func WaitsOnFIFO(pid string) bool {
	tasks, err := os.ReadDir(filepath.Join("/proc", pid, "task"))
	if err != nil {
		return false
	}
	for _, t := range tasks {
		if w, err := os.ReadFile(filepath.Join("/proc", pid, "task", t.Name(), "wchan")); err == nil && string(w) == "wait_for_partner" {
			return true
		}
	}
	return false
}
