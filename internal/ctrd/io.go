package ctrd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/fifo"
)

// Files in a call's IO directory (<ioRoot>/<containerID>/). The shim opens
// stdin/stdout/stderr itself; the markers record facts that must survive a
// manager restart.
const (
	stdinFile     = "stdin"
	stdoutFile    = "stdout"
	stderrFile    = "stderr"
	startedMarker = "started-at"     // RFC 3339 start time
	stdinDone     = "stdin-complete" // FIFO mode: input fully written and closed
	limitMarker   = "output-limit"   // the runtime killed the call for its output
	inputMarker   = "input-lost"     // FIFO mode: killed on recovery, input not confirmed complete
	exitFile      = "exit-code"      // written by fnlet-init (see init.go)
)

// callDir is the IO directory of a container.
func (r *Runtime) callDir(id string) string { return filepath.Join(r.ioRoot, id) }

// prepareIO creates the call's directory and files before the task exists:
// empty stdout/stderr the shim appends to (it opens them without O_CREAT),
// and in file mode the complete input.
func (r *Runtime) prepareIO(id string, input []byte) (cio.Config, error) {
	dir := r.callDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cio.Config{}, fmt.Errorf("create IO dir: %w", err)
	}
	cfg := cio.Config{
		Stdout: filepath.Join(dir, stdoutFile),
		Stderr: filepath.Join(dir, stderrFile),
	}
	for _, p := range []string{cfg.Stdout, cfg.Stderr} {
		// O_TRUNC: a retried attempt starts with clean output.
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return cio.Config{}, fmt.Errorf("create %s: %w", p, err)
		}
		f.Close()
	}
	for _, m := range []string{stdinDone, limitMarker, inputMarker, startedMarker} {
		os.Remove(filepath.Join(dir, m))
	}
	if r.initBinary != "" {
		if err := prepareExitFile(filepath.Join(dir, exitFile)); err != nil {
			return cio.Config{}, err
		}
	}
	if len(input) == 0 {
		return cfg, nil
	}
	cfg.Stdin = filepath.Join(dir, stdinFile)
	os.Remove(cfg.Stdin)
	if r.stdinMode == StdinFIFO {
		if err := syscall.Mkfifo(cfg.Stdin, 0o600); err != nil {
			return cio.Config{}, fmt.Errorf("create stdin fifo: %w", err)
		}
		return cfg, nil
	}
	// Written in full (and synced) before NewTask: EOF is the file's end,
	// and no crash of ours can cut the input short.
	if err := writeFileSync(cfg.Stdin, input); err != nil {
		return cio.Config{}, fmt.Errorf("write stdin: %w", err)
	}
	return cfg, nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// shimIO hands containerd fixed paths and owns no copy goroutines: the shim
// does all the IO, so there is nothing to wait for or cancel here.
type shimIO struct{ cfg cio.Config }

func (s *shimIO) Config() cio.Config { return s.cfg }
func (s *shimIO) Cancel()            {}
func (s *shimIO) Wait()              {}
func (s *shimIO) Close() error       { return nil }

func shimCreator(cfg cio.Config) cio.Creator {
	return func(string) (cio.IO, error) { return &shimIO{cfg: cfg}, nil }
}

// attachShimIO re-attaches to a task whose IO the shim owns: nothing to
// open, and no FIFO directory is left behind (unlike cio.NewAttach).
func attachShimIO(set *cio.FIFOSet) (cio.IO, error) {
	if set == nil {
		return &shimIO{}, nil
	}
	return &shimIO{cfg: set.Config}, nil
}

// openStdinFIFO opens the write side of a FIFO stdin. It returns at once;
// writes block until the shim opens the read side.
func openStdinFIFO(ctx context.Context, path string) (io.WriteCloser, error) {
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdin fifo: %w", err)
	}
	return w, nil
}

func (r *Runtime) markerExists(id, name string) bool {
	_, err := os.Stat(filepath.Join(r.callDir(id), name))
	return err == nil
}

func (r *Runtime) writeMarker(id, name, content string) error {
	return os.WriteFile(filepath.Join(r.callDir(id), name), []byte(content), 0o600)
}

// inputIncomplete is true for a FIFO-stdin call whose input was never
// confirmed fully written, when no writer of ours is alive any more.
func (r *Runtime) inputIncomplete(h *callHandle) bool {
	h.mu.Lock()
	feeding := h.feeding
	h.mu.Unlock()
	if feeding {
		return false
	}
	fi, err := os.Lstat(filepath.Join(r.callDir(h.id), stdinFile))
	return err == nil && fi.Mode()&fs.ModeNamedPipe != 0 && !r.markerExists(h.id, stdinDone)
}

func (r *Runtime) startedAt(id string) time.Time {
	b, err := os.ReadFile(filepath.Join(r.callDir(id), startedMarker))
	if err != nil {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	return t
}

// outputSize is the bytes written to stdout+stderr so far, and to the exit
// file, which the call can write too: the cap bounds the node's disk.
func (r *Runtime) outputSize(id string) int64 {
	var n int64
	for _, name := range []string{stdoutFile, stderrFile, exitFile} {
		if fi, err := os.Stat(filepath.Join(r.callDir(id), name)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// readTail returns the last max bytes of a file.
func readTail(path string, max int) (Tail, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Tail{}, nil
	}
	if err != nil {
		return Tail{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Tail{}, err
	}
	size := fi.Size()
	n := min(size, int64(max))
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil && !errors.Is(err, io.EOF) {
		return Tail{}, err
	}
	return Tail{Data: buf, Size: size, Truncated: size > n}, nil
}

// LogPaths are the full output files of a call on this node.
func (r *Runtime) LogPaths(callUID string) (stdout, stderr string) {
	dir := r.callDir(ContainerID(callUID))
	return filepath.Join(dir, stdoutFile), filepath.Join(dir, stderrFile)
}

// PruneLogs removes the IO directories of calls that have no container and
// were last written before cutoff, keeping at most keep directories. It is
// the retention policy for full logs; live calls are never touched.
func (r *Runtime) PruneLogs(ctx context.Context, cutoff time.Time, keep int) (int, error) {
	entries, err := os.ReadDir(r.ioRoot)
	if err != nil {
		return 0, fmt.Errorf("read IO root: %w", err)
	}
	live, err := r.containerIDs(ctx)
	if err != nil {
		return 0, err
	}
	type dir struct {
		name string
		mod  time.Time
	}
	var dead []dir
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), containerPrefix) || live[e.Name()] {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		dead = append(dead, dir{e.Name(), fi.ModTime()})
	}
	sort.Slice(dead, func(i, j int) bool { return dead[i].mod.After(dead[j].mod) })
	removed := 0
	for i, d := range dead {
		if i < keep && d.mod.After(cutoff) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(r.ioRoot, d.name)); err != nil {
			return removed, fmt.Errorf("remove logs of %s: %w", d.name, err)
		}
		removed++
	}
	return removed, nil
}
