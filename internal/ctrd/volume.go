package ctrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A call's volumes, and its scratch /tmp. Two kinds, both gone with the
// container and neither ever a path of the node the call chooses:
//
//   - file volumes (a ConfigMap's or Secret's keys): files the runtime
//     writes under the call's directory, volumes/<name>/, before the task
//     is created, bind-mounted read-only, nosuid, nodev, noexec. The call
//     directory is 0700 root, so no other user of the node can reach them;
//     each file belongs to the call's uid and gid with the mode it asked
//     for, so 0400 works for a call that is not root. They are removed
//     when the container is deleted.
//   - tmpfs volumes (emptyDir, scratch): mounted by the OCI runtime inside
//     the container's mount namespace, so they never appear in the node's
//     mount table and vanish with the container. Their pages are charged
//     to the call's memory cgroup; a tmpfs full to its size gives ENOSPC.
//     The runtime refuses calls whose tmpfs sizes together exceed the
//     memory limit: that much could never be written.

// volumesDir is the call directory's subdirectory holding file volumes.
const volumesDir = "volumes"

// Volume is one volume of a call: Files (read-only files) or, when
// TmpfsBytes > 0, an empty tmpfs of that size. Never both.
type Volume struct {
	// Name is a DNS label, unique in the call: the directory of its files.
	Name string
	// MountPath is the absolute, clean path in the container.
	MountPath string
	Files     []File
	// TmpfsBytes > 0 makes the volume a writable tmpfs of that size.
	TmpfsBytes int64
}

// File is one file of a volume. Its data may be a Secret's: String and
// GoString leave it out, so a File (or a Call) printed by mistake shows no
// secret.
type File struct {
	// Path is relative to the volume's root, clean, without "..".
	Path string
	Data []byte
	// Mode is the file's permission bits.
	Mode os.FileMode
}

func (f File) String() string {
	return fmt.Sprintf("{Path:%s Mode:%#o Data:<%d bytes>}", f.Path, f.Mode, len(f.Data))
}

// GoString is String for %#v.
func (f File) GoString() string { return f.String() }

// scratchPath is where Call.ScratchBytes puts its tmpfs.
const scratchPath = "/tmp"

// hasMounts says whether the call has volumes or scratch: such a call
// cannot use a pre-started container (MissVolumes).
func (c Call) hasMounts() bool { return len(c.Volumes) > 0 || c.ScratchBytes > 0 }

// hasFiles says whether any volume has files to write.
func (c Call) hasFiles() bool {
	for _, v := range c.Volumes {
		if v.TmpfsBytes == 0 {
			return true
		}
	}
	return false
}

// checkVolumes refuses what admission should have refused already, and what
// only the node can judge: the tmpfs sizes against the memory limit.
func checkVolumes(call Call) error {
	tmpfs := call.ScratchBytes
	if call.ScratchBytes < 0 {
		return errdefs.ErrInvalidArgument.WithMessage("scratch size must be positive")
	}
	seen := map[string]string{}
	if call.ScratchBytes > 0 {
		seen[scratchPath] = "scratch"
	}
	for _, v := range call.Volumes {
		if !isDNSLabel(v.Name) {
			return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume name %q is not a DNS label", v.Name))
		}
		if err := checkMountPath(v.MountPath); err != nil {
			return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume %s: %v", v.Name, err))
		}
		if other, ok := seen[v.MountPath]; ok {
			return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume %s: mountPath %s is %s's too", v.Name, v.MountPath, other))
		}
		seen[v.MountPath] = "volume " + v.Name
		switch {
		case v.TmpfsBytes < 0:
			return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume %s: size must be positive", v.Name))
		case v.TmpfsBytes > 0 && len(v.Files) > 0:
			return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume %s: a tmpfs has no files", v.Name))
		}
		tmpfs += v.TmpfsBytes
		for _, f := range v.Files {
			if !isRelativeClean(f.Path) {
				return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume %s: file path %q must be relative, clean and without ..", v.Name, f.Path))
			}
			if f.Mode&^os.ModePerm != 0 {
				return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("volume %s: file %s: mode %#o has more than permission bits", v.Name, f.Path, f.Mode))
			}
		}
	}
	if call.MemoryBytes > 0 && tmpfs > call.MemoryBytes {
		return errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf(
			"emptyDir and scratch sizes total %d bytes, over the call's memory limit of %d bytes: what is written there is memory of the call",
			tmpfs, call.MemoryBytes))
	}
	return nil
}

// checkMountPath accepts an absolute, clean path other than /, not /proc,
// /sys or /dev nor under them.
func checkMountPath(p string) error {
	if !strings.HasPrefix(p, "/") || p == "/" || path.Clean(p) != p {
		return fmt.Errorf("mountPath %q must be an absolute, clean path other than /", p)
	}
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return fmt.Errorf("mountPath %q must not be %s or under it", p, d)
		}
	}
	return nil
}

func isRelativeClean(p string) bool {
	return p != "" && !strings.HasPrefix(p, "/") && path.Clean(p) == p && p != "." &&
		p != ".." && !strings.HasPrefix(p, "../")
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// withVolumes mounts the scratch /tmp and the call's volumes; volumeRoot is
// the host directory holding the file volumes (callDir.volumeRoot).
func withVolumes(call Call, volumeRoot string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if call.ScratchBytes > 0 {
			s.Mounts = append(s.Mounts, tmpfsMount(scratchPath, call.ScratchBytes, "1777"))
		}
		for _, v := range call.Volumes {
			if v.TmpfsBytes > 0 {
				// 0777 like a Pod's emptyDir: the call may run as any user.
				s.Mounts = append(s.Mounts, tmpfsMount(v.MountPath, v.TmpfsBytes, "0777"))
				continue
			}
			s.Mounts = append(s.Mounts, specs.Mount{Destination: v.MountPath, Type: "bind",
				Source:  filepath.Join(volumeRoot, v.Name),
				Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		}
		return nil
	}
}

// tmpfsMount is a tmpfs of size bytes (never 0: the kernel reads 0 as no
// limit at all).
func tmpfsMount(dest string, size int64, mode string) specs.Mount {
	return specs.Mount{Destination: dest, Type: "tmpfs", Source: "tmpfs",
		Options: []string{"nosuid", "nodev", "mode=" + mode, fmt.Sprintf("size=%d", max(size, 1))}}
}

// volumeRoot is the host directory of the call's file volumes.
func (d callDir) volumeRoot() string { return d.file(volumesDir) }

// writeVolumes writes the files of the call's file volumes afresh, owned by
// uid:gid. Directories are 0755 root: the call must traverse them, and the
// call directory above them (0700 root) keeps the node's other users out.
func (d callDir) writeVolumes(vols []Volume, uid, gid uint32) error {
	if err := d.removeVolumes(); err != nil {
		return err
	}
	root := d.volumeRoot()
	for _, v := range vols {
		if v.TmpfsBytes > 0 {
			continue
		}
		dir := filepath.Join(root, v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
		for _, f := range v.Files {
			if err := writeVolumeFile(dir, f, uid, gid); err != nil {
				return fmt.Errorf("volume %s: file %s: %w", v.Name, f.Path, err)
			}
		}
	}
	return nil
}

func writeVolumeFile(dir string, f File, uid, gid uint32) error {
	p := filepath.Join(dir, filepath.FromSlash(f.Path))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	// Created 0600 and only then given its mode and the call's user, so no
	// one else ever holds it open with wider rights. Mode first: once the
	// file is the call's, changing its mode would need CAP_FOWNER.
	fh, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, werr := fh.Write(f.Data)
	if werr == nil {
		werr = fh.Chmod(f.Mode)
	}
	if werr == nil && (uid != 0 || gid != 0) {
		if werr = fh.Chown(int(uid), int(gid)); errors.Is(werr, syscall.EPERM) {
			werr = fmt.Errorf("give it to the call's user %d:%d: %w (the manager needs CAP_CHOWN, as config/manager/daemonset.yaml grants)", uid, gid, werr)
		}
	}
	if cerr := fh.Close(); werr == nil {
		werr = cerr
	}
	return werr
}

// removeVolumes removes the file volumes (a Secret's files must not
// outlive the container).
func (d callDir) removeVolumes() error {
	if err := os.RemoveAll(d.volumeRoot()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove volumes: %w", err)
	}
	return nil
}

// volumeOwner is the uid and gid of the call's process, read from the
// container's spec (the one truth, whichever Run made the container).
func volumeOwner(ctx context.Context, h *callHandle) (uint32, uint32, error) {
	s, err := h.container.Spec(ctx)
	if err != nil {
		return 0, 0, wrapErr(err, "read spec of %s", h.id)
	}
	if s.Process == nil {
		return 0, 0, fmt.Errorf("spec of %s has no process", h.id)
	}
	return s.Process.User.UID, s.Process.User.GID, nil
}
