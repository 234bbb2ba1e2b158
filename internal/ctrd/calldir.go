package ctrd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
)

// callDir is one call's directory on the node, <ioRoot>/<containerID>/, and
// the only code that knows its files. They form a small on-disk protocol
// between this process, the shim, fnlet-init and the next manager process:
// whatever must survive a manager restart or a containerd restart is a file
// here, never only memory.
//
//	stdin           the input. File mode: written completely and synced
//	                before the task exists, so EOF is the file's end. FIFO
//	                mode: a FIFO this process feeds. Removed by Delete.
//	stdout, stderr  created empty before each task create (the shim opens
//	                them without O_CREAT) and appended to by the shim. They
//	                outlive the container, for PruneLogs' retention.
//	exit-code       with fnlet-init only: created empty and world-writable
//	                (the bind mount keeps its mode, and the call may run as
//	                any user); fnlet-init writes "-\n" when it starts and
//	                "<code>\n" when the program exits. Empty while the task
//	                has stopped means the program never ran (initBegan).
//	started-at      the RFC 3339 time of Task.Start, written before Start is
//	                asked for and removed by Delete. Present while the task
//	                is missing means containerd discarded a started task.
//	reruns          how many times runAgain started the call again after a
//	                task that never ran the program; kept by prepare, so
//	                that a mark fnlet-init cannot write never loops.
//	stdin-complete  FIFO mode: the input was fully written and CloseIO was
//	                confirmed.
//	output-limit    written before the runtime kills the call for its output.
//	input-lost      FIFO mode: written before the runtime kills a recovered
//	                call whose input was not confirmed complete.
//	volumes/        the files of the call's configMap and secret volumes
//	                (volume.go), written before each task create, removed
//	                by Delete.
//
// prepare clears every marker, so a retried attempt starts clean.
type callDir struct{ path string }

// Names of the files in a callDir.
const (
	stdinFile     = "stdin"
	stdoutFile    = "stdout"
	stderrFile    = "stderr"
	exitFile      = "exit-code"
	startedMarker = "started-at"
	stdinDone     = "stdin-complete"
	limitMarker   = "output-limit"
	inputMarker   = "input-lost"
	rerunsFile    = "reruns"
)

// maxReruns bounds runAgain per call: were fnlet-init ever unable to write
// its start mark, a program that did run would otherwise run again.
const maxReruns = 3

// reruns is the number of runAgain restarts recorded for the call.
func (d callDir) reruns() int {
	b, _ := os.ReadFile(d.file(rerunsFile))
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// countRerun records one more runAgain restart.
func (d callDir) countRerun() error {
	if err := os.WriteFile(d.file(rerunsFile), []byte(strconv.Itoa(d.reruns()+1)+"\n"), 0o600); err != nil {
		return fmt.Errorf("record rerun: %w", err)
	}
	return nil
}

// dir is the directory of container id.
func (r *Runtime) dir(id string) callDir { return callDir{filepath.Join(r.ioRoot, id)} }

func (d callDir) file(name string) string { return filepath.Join(d.path, name) }

// prepare creates the directory and its files for a new task: empty output
// files, no markers, an empty exit file when fnlet-init is used, and the
// input (none when input is empty). It returns the IO the shim is given.
func (d callDir) prepare(input []byte, mode StdinMode, withInit bool) (cio.Config, error) {
	if err := os.MkdirAll(d.path, 0o700); err != nil {
		return cio.Config{}, fmt.Errorf("create IO dir: %w", err)
	}
	cfg := cio.Config{Stdout: d.file(stdoutFile), Stderr: d.file(stderrFile)}
	for _, p := range []string{cfg.Stdout, cfg.Stderr} {
		// O_TRUNC: a retried attempt starts with clean output.
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return cio.Config{}, fmt.Errorf("create %s: %w", p, err)
		}
		f.Close()
	}
	for _, m := range []string{stdinDone, limitMarker, inputMarker, startedMarker} {
		os.Remove(d.file(m))
	}
	if withInit {
		if err := prepareExitFile(d.file(exitFile)); err != nil {
			return cio.Config{}, err
		}
	}
	if len(input) == 0 {
		return cfg, nil
	}
	cfg.Stdin = d.file(stdinFile)
	os.Remove(cfg.Stdin)
	if mode == StdinFIFO {
		if err := syscall.Mkfifo(cfg.Stdin, 0o600); err != nil {
			return cio.Config{}, fmt.Errorf("create stdin fifo: %w", err)
		}
		return cfg, nil
	}
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

// prepareExitFile makes the call's exit file empty and writable by any
// user the call may run as: the bind mount keeps the file's own mode.
func prepareExitFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("create exit file: %w", err)
	}
	f.Close()
	if err := os.Chmod(path, 0o666); err != nil {
		return fmt.Errorf("create exit file: %w", err)
	}
	return nil
}

func (d callDir) has(marker string) bool {
	_, err := os.Stat(d.file(marker))
	return err == nil
}

// mark records marker (an empty file).
func (d callDir) mark(marker string) error {
	if err := os.WriteFile(d.file(marker), nil, 0o600); err != nil {
		return fmt.Errorf("record %s: %w", marker, err)
	}
	return nil
}

func (d callDir) recordStart(at time.Time) error {
	if err := os.WriteFile(d.file(startedMarker), []byte(at.UTC().Format(time.RFC3339Nano)), 0o600); err != nil {
		return fmt.Errorf("record start: %w", err)
	}
	return nil
}

// startedAt is the recorded start, zero when the task was never started
// (or was deleted by us).
func (d callDir) startedAt() time.Time {
	b, err := os.ReadFile(d.file(startedMarker))
	if err != nil {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	return t
}

func (d callDir) clearStart() error { return d.remove(startedMarker, "start marker") }

func (d callDir) removeInput() error { return d.remove(stdinFile, "input") }

func (d callDir) remove(name, what string) error {
	if err := os.Remove(d.file(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", what, err)
	}
	return nil
}

// inputUnconfirmed is true for a FIFO input that was never confirmed fully
// written.
func (d callDir) inputUnconfirmed() bool {
	fi, err := os.Lstat(d.file(stdinFile))
	return err == nil && fi.Mode()&fs.ModeNamedPipe != 0 && !d.has(stdinDone)
}

// outputSize is the bytes written to stdout+stderr so far, and to the exit
// file, which the call can write too: the cap bounds the node's disk.
func (d callDir) outputSize() int64 {
	var n int64
	for _, name := range []string{stdoutFile, stderrFile, exitFile} {
		if fi, err := os.Stat(d.file(name)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// tails reads the last max bytes of stdout and stderr.
func (d callDir) tails(max int) (stdout, stderr Tail, err error) {
	if stdout, err = readTail(d.file(stdoutFile), max); err != nil {
		return Tail{}, Tail{}, fmt.Errorf("read stdout: %w", err)
	}
	if stderr, err = readTail(d.file(stderrFile), max); err != nil {
		return Tail{}, Tail{}, fmt.Errorf("read stderr: %w", err)
	}
	return stdout, stderr, nil
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

// initBegan says whether fnlet-init started in this attempt's task: it
// marks the exit file first thing (see fnlet-init's began).
func (d callDir) initBegan() bool {
	fi, err := os.Stat(d.file(exitFile))
	return err == nil && fi.Size() > 0
}

// exitRecord is what fnlet-init recorded (see readExitFile).
func (d callDir) exitRecord() (code int32, at time.Time, ok bool) {
	return readExitFile(d.file(exitFile))
}

// readExitFile returns the exit code fnlet-init recorded and when, ok false
// when it recorded none (no init, or the call was SIGKILLed).
func readExitFile(path string) (code int32, at time.Time, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, time.Time{}, false
	}
	defer f.Close()
	buf := make([]byte, 16) // fnlet-init writes "<code>\n"; the call could write more
	n, _ := f.Read(buf)
	line, _, found := strings.Cut(string(buf[:n]), "\n")
	if !found {
		return 0, time.Time{}, false
	}
	v, err := strconv.ParseInt(line, 10, 32)
	if err != nil || v < 0 || v > 255 {
		return 0, time.Time{}, false
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, time.Time{}, false
	}
	return int32(v), fi.ModTime(), true
}

// LogPaths are the full output files of a call on this node.
func (r *Runtime) LogPaths(callUID string) (stdout, stderr string) {
	d := r.dir(ContainerID(callUID))
	return d.file(stdoutFile), d.file(stderrFile)
}
