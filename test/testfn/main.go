// Command fnlet-testfn is the program fnlet's tests run inside containers.
// It is built static (CGO_ENABLED=0) and packed at /testfn in the image
// localhost/fnlet/testfn:v1 by hack/build-images.sh.
//
// Behaviour is chosen with flags, which combine freely in one invocation.
// Whatever their order on the command line, the actions run in this order:
//
//  1. -trap-term          ignore SIGTERM (SIG_IGN) for the whole run, children
//     included. Without it, SIGTERM, SIGINT and SIGHUP make testfn exit at
//     once with status 128+signal (143 for SIGTERM) — also as PID 1 of a
//     container, where the kernel would otherwise drop signals without a
//     handler.
//  2. -stdin-echo         copy all of stdin to stdout, unchanged.
//     -stdin-sha256       read all of stdin (echoing it too with -stdin-echo),
//     then print "stdin-sha256=<hex> stdin-bytes=<n>\n" to stdout.
//  3. -print-args         print "args=<JSON array of os.Args>\n".
//     -print-env          print the environment, one VAR=value a line, in the
//     order the process received it.
//     -print-cwd          print "cwd=<working directory>\n".
//     -print-uid          print "uid=<uid> gid=<gid> groups=<g1,g2,...>\n".
//  4. -stdout-text STR    print STR and a newline to stdout.
//     -stderr-text STR    print STR and a newline to stderr.
//  5. -stdout-bytes N     write exactly N bytes of the deterministic pattern to
//     stdout: the text pattern (64-byte lines ending in '\n'),
//     or with -binary the binary pattern (all 256 byte values).
//  6. -no-newline-bytes N write N bytes of text containing no newline at all
//     to stdout (one unterminated line).
//  7. -stderr-bytes N     write N pattern bytes (text, or binary with -binary)
//     to stderr.
//  8. -alloc-mib N        allocate N MiB in 1 MiB chunks and write to every
//     page, so the memory cgroup charges it; keep it until exit;
//     then print "alloc-mib=<N>\n" to stdout.
//  9. -fork-children N    start N child processes (testfn re-executed in a
//     hidden -child mode that sleeps until killed, stdio on /dev/null), wait
//     until each runs, print "fork-children=<N>\n".
//  10. -fork-bomb         keep starting such children until starting one fails
//     (e.g. the pids cgroup limit) or -fork-bomb-max (default 512) is
//     reached; print "fork-bomb=<children running>\n" to stdout and the
//     reason it stopped to stderr, and carry on (exit 0 unless -exit).
//  11. -close-stdout      close fd 1, then keep going (later steps write nothing
//     to stdout).
//  12. -spin D            busy-loop on -spin-procs CPUs (default 1) for
//     duration D (Go syntax: 500ms, 2s).
//  13. -http-get URL      GET URL (3 s timeout) and print the body to stdout;
//     a failed request is an action failure (exit 111).
//     -http-serve ADDR    listen on ADDR (e.g. :8080), print "serving\n" to
//     stdout, and answer every request with "served-by=<hostname>\n" until
//     killed (nothing after it runs).
//  14. -sleep D           sleep for duration D.
//  15. -exit N            exit with status N (default 0).
//
// Sizes (N of the -*-bytes flags) are plain byte counts or binary multiples:
// 4k = 4K = 4KiB = 4096, 1M = 1MiB, 1G = 1GiB.
//
// The patterns are defined in package
// github.com/fnlet/fnlet/test/testfn/pattern, which tests use to regenerate
// the expected bytes: byte i of a stream depends only on i.
//
// Children inherit -trap-term and get PR_SET_PDEATHSIG=SIGKILL, so they die
// with testfn even outside a PID namespace. testfn never waits for them.
//
// Exit status: -exit N on success; 2 on a usage error; 111 when an action
// fails (a write error, a failed fork in -fork-children, ...), with the reason
// on stderr; 128+signal when killed by a caught signal.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fnlet/fnlet/test/testfn/pattern"
)

// exitFailure is the status for a failed action (not a requested -exit).
const exitFailure = 111

// config is the parsed command line.
type config struct {
	trapTerm    bool
	stdinEcho   bool
	stdinSHA256 bool
	printArgs   bool
	printEnv    bool
	printCwd    bool
	printUID    bool
	stdoutText  optString
	stderrText  optString
	binary      bool
	stdoutBytes size
	noNLBytes   size
	stderrBytes size
	allocMiB    int
	forkN       int
	forkBomb    bool
	forkBombMax int
	closeStdout bool
	spin        time.Duration
	spinProcs   int
	sleep       time.Duration
	httpGet     string
	httpServe   string
	exit        int

	child bool // hidden: run as a child of -fork-children / -fork-bomb
}

// optString is a string flag that records whether it was given at all, so
// that -stdout-text "" prints an empty line.
type optString struct {
	set bool
	s   string
}

func (o *optString) String() string { return o.s }
func (o *optString) Set(s string) error {
	o.set, o.s = true, s
	return nil
}

// size is a byte count flag accepting k/M/G binary suffixes.
type size int64

func (s *size) String() string { return strconv.FormatInt(int64(*s), 10) }
func (s *size) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = size(n)
	return nil
}

// parseSize parses "123", "4k", "4K", "4KiB", "1M", "1MiB", "2G", "2GiB".
func parseSize(v string) (int64, error) {
	num, mult := v, int64(1)
	for _, suf := range []struct {
		s string
		m int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"k", 1 << 10}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	} {
		if strings.HasSuffix(v, suf.s) {
			num, mult = strings.TrimSuffix(v, suf.s), suf.m
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (want a byte count like 100, 4k, 1M, 2GiB)", v)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q too large", v)
	}
	return n * mult, nil
}

// parseArgs parses the command line (without the program name).
func parseArgs(args []string, errOut io.Writer) (*config, error) {
	c := &config{forkBombMax: 512, spinProcs: 1}
	fs := flag.NewFlagSet("testfn", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.BoolVar(&c.trapTerm, "trap-term", false, "ignore SIGTERM")
	fs.BoolVar(&c.stdinEcho, "stdin-echo", false, "copy stdin to stdout")
	fs.BoolVar(&c.stdinSHA256, "stdin-sha256", false, "print sha256 and length of stdin")
	fs.BoolVar(&c.printArgs, "print-args", false, "print os.Args as JSON")
	fs.BoolVar(&c.printEnv, "print-env", false, "print the environment")
	fs.BoolVar(&c.printCwd, "print-cwd", false, "print the working directory")
	fs.BoolVar(&c.printUID, "print-uid", false, "print uid, gid and groups")
	fs.Var(&c.stdoutText, "stdout-text", "print `STR` and a newline to stdout")
	fs.Var(&c.stderrText, "stderr-text", "print `STR` and a newline to stderr")
	fs.BoolVar(&c.binary, "binary", false, "use the binary pattern for -stdout-bytes and -stderr-bytes")
	fs.Var(&c.stdoutBytes, "stdout-bytes", "write `N` pattern bytes to stdout")
	fs.Var(&c.noNLBytes, "no-newline-bytes", "write `N` bytes without a newline to stdout")
	fs.Var(&c.stderrBytes, "stderr-bytes", "write `N` pattern bytes to stderr")
	fs.IntVar(&c.allocMiB, "alloc-mib", 0, "allocate and touch `N` MiB")
	fs.IntVar(&c.forkN, "fork-children", 0, "start `N` sleeping children")
	fs.BoolVar(&c.forkBomb, "fork-bomb", false, "start children until that fails")
	fs.IntVar(&c.forkBombMax, "fork-bomb-max", c.forkBombMax, "at most `N` children for -fork-bomb")
	fs.BoolVar(&c.closeStdout, "close-stdout", false, "close fd 1 and keep running")
	fs.DurationVar(&c.spin, "spin", 0, "busy-loop for `D`")
	fs.IntVar(&c.spinProcs, "spin-procs", c.spinProcs, "busy-loop on `N` CPUs")
	fs.DurationVar(&c.sleep, "sleep", 0, "sleep for `D`")
	fs.StringVar(&c.httpGet, "http-get", "", "GET `URL` and print the body")
	fs.StringVar(&c.httpServe, "http-serve", "", "serve HTTP on `ADDR` until killed")
	fs.IntVar(&c.exit, "exit", 0, "exit status `N`")
	fs.BoolVar(&c.child, "child", false, "internal: child mode of -fork-children/-fork-bomb")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (all options are flags)", fs.Arg(0))
	}
	switch {
	case c.allocMiB < 0:
		return nil, errors.New("-alloc-mib must be >= 0")
	case c.forkN < 0:
		return nil, errors.New("-fork-children must be >= 0")
	case c.forkBombMax < 0:
		return nil, errors.New("-fork-bomb-max must be >= 0")
	case c.spin < 0 || c.sleep < 0:
		return nil, errors.New("-spin and -sleep must be >= 0")
	case c.spinProcs < 1:
		return nil, errors.New("-spin-procs must be >= 1")
	case c.exit < 0 || c.exit > 255:
		return nil, errors.New("-exit must be in 0..255")
	}
	return c, nil
}

// proc is the process environment an invocation acts on; tests substitute
// buffers for the standard streams.
type proc struct {
	args        []string
	stdin       io.Reader
	stdout      io.Writer
	stderr      io.Writer
	closeStdout func() error
}

// keep holds -alloc-mib memory until exit.
var keep [][]byte

func main() {
	c, err := parseArgs(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "testfn:", err)
		os.Exit(2)
	}
	setupSignals(c.trapTerm)
	if c.child {
		runChild()
	}
	p := &proc{
		args:        os.Args,
		stdin:       os.Stdin,
		stdout:      os.Stdout,
		stderr:      os.Stderr,
		closeStdout: os.Stdout.Close,
	}
	if err := run(c, p); err != nil {
		fmt.Fprintln(os.Stderr, "testfn:", err)
		os.Exit(exitFailure)
	}
	runtime.KeepAlive(keep)
	os.Exit(c.exit)
}

// setupSignals implements -trap-term, or an explicit exit on termination
// signals: as PID 1 of a PID namespace, a signal without a handler would be
// ignored, and Go's default handling would then exit with status 2.
func setupSignals(trapTerm bool) {
	sigs := []os.Signal{syscall.SIGINT, syscall.SIGHUP}
	if trapTerm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		sigs = append(sigs, syscall.SIGTERM)
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	go func() {
		s := <-ch
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
}

// run performs the actions of c in the documented order.
func run(c *config, p *proc) error {
	if c.stdinEcho || c.stdinSHA256 {
		h := sha256.New()
		w := io.Writer(h)
		if c.stdinEcho {
			w = io.MultiWriter(h, p.stdout)
		}
		n, err := io.Copy(w, p.stdin)
		if err != nil {
			return fmt.Errorf("stdin: %w", err)
		}
		if c.stdinSHA256 {
			if _, err := fmt.Fprintf(p.stdout, "stdin-sha256=%s stdin-bytes=%d\n", hex.EncodeToString(h.Sum(nil)), n); err != nil {
				return fmt.Errorf("write stdout: %w", err)
			}
		}
	}
	if err := printInfo(c, p); err != nil {
		return fmt.Errorf("write stdout: %w", err)
	}
	if c.stdoutText.set {
		if _, err := io.WriteString(p.stdout, c.stdoutText.s+"\n"); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
	}
	if c.stderrText.set {
		if _, err := io.WriteString(p.stderr, c.stderrText.s+"\n"); err != nil {
			return fmt.Errorf("write stderr: %w", err)
		}
	}
	kind := pattern.Text
	if c.binary {
		kind = pattern.Binary
	}
	if _, err := pattern.Write(p.stdout, kind, int64(c.stdoutBytes)); err != nil {
		return fmt.Errorf("write stdout: %w", err)
	}
	if _, err := pattern.Write(p.stdout, pattern.NoNewline, int64(c.noNLBytes)); err != nil {
		return fmt.Errorf("write stdout: %w", err)
	}
	if _, err := pattern.Write(p.stderr, kind, int64(c.stderrBytes)); err != nil {
		return fmt.Errorf("write stderr: %w", err)
	}
	if c.allocMiB > 0 {
		keep = allocTouch(c.allocMiB)
		if _, err := fmt.Fprintf(p.stdout, "alloc-mib=%d\n", c.allocMiB); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
	}
	if c.forkN > 0 {
		for i := 0; i < c.forkN; i++ {
			if _, err := startChild(c.trapTerm); err != nil {
				return fmt.Errorf("fork-children: child %d of %d: %w", i+1, c.forkN, err)
			}
		}
		if _, err := fmt.Fprintf(p.stdout, "fork-children=%d\n", c.forkN); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
	}
	if c.forkBomb {
		n, why := forkBomb(c.trapTerm, c.forkBombMax)
		fmt.Fprintf(p.stderr, "testfn: fork-bomb stopped after %d children: %v\n", n, why)
		if _, err := fmt.Fprintf(p.stdout, "fork-bomb=%d\n", n); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
	}
	if c.closeStdout {
		if err := p.closeStdout(); err != nil {
			return fmt.Errorf("close stdout: %w", err)
		}
	}
	if c.spin > 0 {
		spin(c.spin, c.spinProcs)
	}
	if c.httpGet != "" {
		if err := httpGet(c.httpGet, p.stdout); err != nil {
			return err
		}
	}
	if c.httpServe != "" {
		return httpServe(c.httpServe, p.stdout)
	}
	if c.sleep > 0 {
		time.Sleep(c.sleep)
	}
	return nil
}

func printInfo(c *config, p *proc) error {
	var b strings.Builder
	if c.printArgs {
		j, _ := json.Marshal(p.args)
		fmt.Fprintf(&b, "args=%s\n", j)
	}
	if c.printEnv {
		for _, kv := range os.Environ() {
			b.WriteString(kv + "\n")
		}
	}
	if c.printCwd {
		wd, err := os.Getwd()
		if err != nil {
			wd = "error: " + err.Error()
		}
		fmt.Fprintf(&b, "cwd=%s\n", wd)
	}
	if c.printUID {
		groups, _ := os.Getgroups()
		gs := make([]string, len(groups))
		for i, g := range groups {
			gs[i] = strconv.Itoa(g)
		}
		fmt.Fprintf(&b, "uid=%d gid=%d groups=%s\n", os.Getuid(), os.Getgid(), strings.Join(gs, ","))
	}
	_, err := io.WriteString(p.stdout, b.String())
	return err
}

// allocTouch allocates n MiB and writes one byte in every page.
func allocTouch(n int) [][]byte {
	page := os.Getpagesize()
	chunks := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += page {
			b[j] = 1
		}
		chunks = append(chunks, b)
	}
	return chunks
}

// spin burns CPU on procs goroutines for d.
func spin(d time.Duration, procs int) {
	deadline := time.Now().Add(d)
	done := make(chan struct{})
	for i := 0; i < procs; i++ {
		go func() {
			x := uint64(1)
			for time.Now().Before(deadline) {
				for k := 0; k < 100000; k++ {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
			if x == 42 { // keep x alive
				fmt.Fprint(io.Discard, x)
			}
			done <- struct{}{}
		}()
	}
	for i := 0; i < procs; i++ {
		<-done
	}
}

// startChild re-executes testfn in child mode and waits until the child runs
// (it writes one byte on the pipe at fd 3), so a child that the kernel let
// fork but that could not start (e.g. the Go runtime failed to create its
// threads under a pids limit) counts as a failure.
func startChild(trapTerm bool) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return 0, err
	}
	args := []string{exe, "-child"}
	if trapTerm {
		args = append(args, "-trap-term")
	}
	pid, err := syscall.ForkExec(exe, args, &syscall.ProcAttr{
		Env:   append(os.Environ(), "GOMAXPROCS=1"),
		Files: []uintptr{null.Fd(), null.Fd(), null.Fd(), w.Fd()},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	w.Close()
	null.Close()
	if err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := r.Read(b[:]); err != nil {
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
		return 0, fmt.Errorf("child %d died before it was ready (%v)", pid, describeWait(ws))
	}
	return pid, nil
}

func describeWait(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// forkBomb starts children until that fails or max are running; it returns
// how many run and why it stopped.
func forkBomb(trapTerm bool, max int) (int, error) {
	for n := 0; ; n++ {
		if n >= max {
			return n, fmt.Errorf("reached -fork-bomb-max %d", max)
		}
		if _, err := startChild(trapTerm); err != nil {
			return n, err
		}
	}
}

// runChild is the hidden -child mode: signal readiness on fd 3, then sleep
// until killed.
func runChild() {
	ready := os.NewFile(3, "ready")
	ready.Write([]byte{1})
	ready.Close()
	for {
		time.Sleep(time.Hour)
	}
}

func httpGet(url string, out io.Writer) error {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("http-get: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(out, resp.Body); err != nil {
		return fmt.Errorf("http-get: %w", err)
	}
	return nil
}

func httpServe(addr string, out io.Writer) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http-serve: %w", err)
	}
	host, _ := os.Hostname()
	if _, err := fmt.Fprintln(out, "serving"); err != nil {
		return fmt.Errorf("write stdout: %w", err)
	}
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "served-by=%s\n", host)
	}))
}
