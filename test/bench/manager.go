package main

// The manager process the fnlet way runs against: started and stopped here,
// observed through its metrics endpoint, its pprof endpoint (if the binary
// has the flag) and /proc.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fnlet/fnlet/internal/testenv/logprobe"
)

type managerProc struct {
	cmd         *exec.Cmd
	exited      chan struct{}
	logPath     string
	logDir      string
	tmpLogDir   bool
	metricsAddr string
	probeAddr   string
	pprofAddr   string
	logAPIPort  int // 0: the binary has no log API
}

func (m *managerProc) metricsURL() string { return "http://" + m.metricsAddr + "/metrics" }

// freeTCPPort asks the kernel for a port free on all addresses.
func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePort asks the kernel for a free loopback port.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startManager(ctx context.Context, cfg *config, out string) (*managerProc, error) {
	help, _ := exec.CommandContext(ctx, cfg.Manager, "--help").CombinedOutput()
	if !bytes.Contains(help, []byte("-containerd-namespace")) {
		return nil, fmt.Errorf("%s --help does not look like fnlet's manager: %s", cfg.Manager, lastLine(string(help)))
	}
	m := &managerProc{exited: make(chan struct{}), logDir: cfg.ManagerLogDir}
	if m.logDir == "" {
		d, err := os.MkdirTemp("", "fnlet-bench-calls-")
		if err != nil {
			return nil, err
		}
		m.logDir, m.tmpLogDir = d, true
	}
	if err := os.MkdirAll(m.logDir, 0o700); err != nil {
		return nil, err
	}
	var err error
	if m.metricsAddr, err = freePort(); err != nil {
		return nil, err
	}
	if m.probeAddr, err = freePort(); err != nil {
		return nil, err
	}
	args := []string{
		"--node-name", cfg.Node,
		"--containerd-address", cfg.Address,
		"--containerd-namespace", cfg.ManagerNamespace,
		"--runtime", cfg.Runtime,
		"--log-dir", m.logDir,
		"--metrics-bind-address", m.metricsAddr,
		"--health-probe-bind-address", m.probeAddr,
		"--max-calls", strconv.Itoa(cfg.MaxCalls),
	}
	if bytes.Contains(help, []byte("-metrics-secure")) {
		args = append(args, "--metrics-secure=false") // scraped over plain HTTP on loopback
	}
	if bytes.Contains(help, []byte("-pprof-bind-address")) {
		if m.pprofAddr, err = freePort(); err != nil {
			return nil, err
		}
		args = append(args, "--pprof-bind-address", m.pprofAddr)
	}
	if bytes.Contains(help, []byte("-log-api-bind-address")) {
		// On all addresses: the apiserver reaches it at this host's IP.
		if m.logAPIPort, err = freeTCPPort(); err != nil {
			return nil, err
		}
		ip, err := logprobe.HostIPv4()
		if err != nil {
			return nil, err
		}
		port := strconv.Itoa(m.logAPIPort)
		args = append(args, "--log-api-bind-address", ":"+port, "--log-api-advertise-address", net.JoinHostPort(ip, port))
	}
	if bytes.Contains(help, []byte("-pool-refill-rate")) && cfg.PoolRefillRate > 0 {
		args = append(args, "--pool-refill-rate", strconv.FormatFloat(cfg.PoolRefillRate, 'f', -1, 64))
	}
	args = append(args, cfg.ManagerArgs...)
	cfg.ManagerLogDir = m.logDir
	m.logPath = cfg.ManagerLog
	if m.logPath == "" {
		m.logPath = filepath.Join(out, "manager.log")
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n==== %s fnlet-bench starting %s %s\n", time.Now().Format(time.RFC3339), cfg.Manager, strings.Join(args, " "))
	// Not CommandContext: the manager is stopped by stop(), after the calls
	// are deleted, even when the run is interrupted.
	m.cmd = exec.Command(cfg.Manager, args...)
	m.cmd.Env = append(os.Environ(), "KUBECONFIG="+cfg.Kubeconfig)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	// Its own process group: a ^C on the terminal reaches us, and we stop it.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start manager: %w", err)
	}
	go func() { _ = m.cmd.Wait(); close(m.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + m.probeAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m, nil
			}
		}
		select {
		case <-m.exited:
			return nil, fmt.Errorf("manager exited at start (%s); log %s:\n%s", m.cmd.ProcessState, m.logPath, tail(m.logPath, 15))
		case <-ctx.Done():
			_ = m.stop()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = m.stop()
			return nil, fmt.Errorf("manager not ready after 60s; log %s:\n%s", m.logPath, tail(m.logPath, 15))
		}
	}
}

// stop: SIGTERM, 20 s grace, SIGKILL.
func (m *managerProc) stop() error {
	select {
	case <-m.exited:
		return nil
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		return nil
	case <-time.After(20 * time.Second):
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	return fmt.Errorf("manager (pid %d) ignored SIGTERM for 20s; killed", m.cmd.Process.Pid)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ---- /proc ----

type procStats struct {
	CPUSeconds float64 `json:"cpuSeconds"` // utime + stime
	RSSKiB     float64 `json:"rssKiB"`
	HWMKiB     float64 `json:"hwmKiB"` // peak RSS
}

// clkTck is USER_HZ, 100 on every Linux architecture Go supports here.
const clkTck = 100

func readProc(pid int) (procStats, error) {
	var ps procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	// Fields after the command name (which may hold spaces) start at state.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return ps, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	ps.CPUSeconds = (ut + st) / clkTck
	st2, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	defer st2.Close()
	sc := bufio.NewScanner(st2)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		x, _ := strconv.ParseFloat(fs[0], 64)
		switch k {
		case "VmRSS":
			ps.RSSKiB = x
		case "VmHWM":
			ps.HWMKiB = x
		}
	}
	return ps, sc.Err()
}

// machineCPU returns busy and total jiffies of all CPUs (/proc/stat).
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	for i, x := range f[1:] {
		v, _ := strconv.ParseFloat(x, 64)
		if i >= 8 { // guest time is already in user
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// ---- Prometheus text format, just enough of it ----

type promSample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

type promSet []promSample

// sum adds the samples called name whose labels include all of match.
func (p promSet) sum(name string, match map[string]string) float64 {
	var t float64
next:
	for _, s := range p {
		if s.Name != name {
			continue
		}
		for k, v := range match {
			if s.Labels[k] != v {
				continue next
			}
		}
		t += s.Value
	}
	return t
}

func scrape(url string, c *http.Client) (promSet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseProm(resp.Body)
}

func parseProm(r io.Reader) (promSet, error) {
	var out promSet
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s := promSample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
			s.Name = line[:i]
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			parseLabels(line[i+1:j], s.Labels)
			rest = line[j+1:]
		} else if i >= 0 {
			s.Name, rest = line[:i], line[i:]
		} else {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		s.Value = v
		out = append(out, s)
	}
	return out, sc.Err()
}

// parseLabels reads k="v",k2="v2" (with \" and \\ escapes).
func parseLabels(s string, into map[string]string) {
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return
		}
		k := strings.TrimSpace(strings.TrimLeft(s[:eq], ","))
		var v strings.Builder
		i := eq + 2
		for ; i < len(s); i++ {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[i])
				}
				continue
			}
			if c == '"' {
				break
			}
			v.WriteByte(c)
		}
		into[k] = v.String()
		if i+1 >= len(s) {
			return
		}
		s = s[i+1:]
	}
}
