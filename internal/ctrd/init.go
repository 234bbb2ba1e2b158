package ctrd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Where fnlet-init and its exit file appear in a call's container. /dev is
// a tmpfs of the container's own, so the mount points touch neither the
// image's rootfs nor a read-only one.
const (
	initPath     = "/dev/.fnlet/init"
	initExitPath = "/dev/.fnlet/exit"
	// initDir under the IO root holds the installed binary; PruneLogs only
	// looks at call directories (containerPrefix), never at it.
	initDir = ".bin"
)

// installInit copies the init binary under ioRoot unless an identical copy
// is there. The rename keeps running containers on the inode they mounted.
func installInit(src, ioRoot string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("read init binary: %w", err)
	}
	if len(data) < 4 || !bytes.Equal(data[:4], []byte("\x7fELF")) {
		return "", fmt.Errorf("init binary %s is not an ELF executable", src)
	}
	dir := filepath.Join(ioRoot, initDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("install init: %w", err)
	}
	dst := filepath.Join(dir, "fnlet-init")
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		return dst, nil
	}
	tmp, err := os.CreateTemp(dir, ".fnlet-init-*")
	if err != nil {
		return "", fmt.Errorf("install init: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), 0o755)
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), dst)
	}
	if werr != nil {
		return "", fmt.Errorf("install init at %s: %w", dst, werr)
	}
	return dst, nil
}

// withInit runs the process under fnlet-init (binary, a host path) and
// gives it the call's exit file (a host path too). It must follow the
// process args and resources: init is one more task under pids.max.
func withInit(binary, exitFile string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			return fmt.Errorf("init: spec has no process")
		}
		s.Process.Args = append([]string{initPath}, s.Process.Args...)
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: initPath, Type: "bind", Source: binary,
				Options: []string{"bind", "ro", "nosuid", "nodev"}},
			specs.Mount{Destination: initExitPath, Type: "bind", Source: exitFile,
				Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
		)
		if s.Linux == nil || s.Linux.Resources == nil {
			return nil
		}
		if p := s.Linux.Resources.Pids; p != nil && p.Limit != nil && *p.Limit > 0 {
			n := *p.Limit + 1
			p.Limit = &n
		}
		return nil
	}
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

// setExit fills a Result's exit code and, for 128+n, the signal's name.
func setExit(res *Result, code int32) {
	res.ExitCode = code
	if code > 128 && code < 128+65 {
		res.Signal = unix.SignalName(syscall.Signal(code - 128))
	}
}
