package ctrd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
