// Package managerproc runs the manager binary as a subprocess, for the
// suites that SIGKILL and restart it like a crashing DaemonSet pod.
package managerproc

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Config is one node's manager.
type Config struct {
	Binary     string
	Kubeconfig string
	Args       []string // every flag; the same for each incarnation
	// LogDir receives one log file per incarnation.
	LogDir string
	// Name tells the logs of several managers apart (the node name).
	Name string
	// TailLines of the log are printed when the test fails (default 40).
	TailLines int
}

// Process is a manager and its incarnations: Restart keeps its flags,
// like a pod restarted in place.
type Process struct {
	t   testing.TB
	cfg Config

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	logs   []string
	starts int
}

// Start runs the first incarnation. When the test ends the manager is
// stopped, and on failure the tail of its logs is printed.
func Start(t testing.TB, cfg Config) *Process {
	t.Helper()
	if cfg.TailLines == 0 {
		cfg.TailLines = 40
	}
	p := &Process{t: t, cfg: cfg}
	p.Restart()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			lines := strings.Split(p.LogText(), "\n")
			t.Logf("manager %s log (last %d lines of %d incarnations):\n%s", cfg.Name, cfg.TailLines, p.Incarnations(),
				strings.Join(lines[max(0, len(lines)-cfg.TailLines):], "\n"))
		}
	})
	return p
}

// Restart starts a new incarnation; the previous one must have ended.
func (p *Process) Restart() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starts++
	logPath := filepath.Join(p.cfg.LogDir, fmt.Sprintf("manager-%s-%d.log", p.cfg.Name, p.starts))
	f, err := os.Create(logPath)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.cfg.Binary, p.cfg.Args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+p.cfg.Kubeconfig)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	p.logs = append(p.logs, logPath)
}

func (p *Process) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// Pid is the current incarnation's process ID.
func (p *Process) Pid() int {
	cmd, _ := p.current()
	return cmd.Process.Pid
}

// Kill9 ends the current incarnation like a crash.
func (p *Process) Kill9() {
	cmd, done := p.current()
	_ = cmd.Process.Kill()
	<-done
}

// Stop ends the current incarnation gracefully (SIGKILL after 15s).
func (p *Process) Stop() {
	cmd, done := p.current()
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Alive reports whether the current incarnation still runs.
func (p *Process) Alive() bool {
	_, done := p.current()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Incarnations is how many times the manager was started.
func (p *Process) Incarnations() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// LogPaths are the log files of every incarnation, oldest first.
func (p *Process) LogPaths() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.logs...)
}

// LogText is everything every incarnation logged.
func (p *Process) LogText() string {
	var b strings.Builder
	for _, path := range p.LogPaths() {
		data, _ := os.ReadFile(path)
		b.Write(data)
	}
	return b.String()
}
