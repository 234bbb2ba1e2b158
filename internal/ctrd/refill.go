package ctrd

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Refill at low CPU priority. Most of the CPU a pre-start costs is spent
// by its shim and the runc it executes (runc create and start), not by
// containerd. The runc shim joins the cgroup named by its ShimCgroup
// option when it starts, and runc, its child, starts there too, so
// pre-starts whose shims join a cgroup of low CPU weight yield to running
// calls (each in a cgroup of its own) whenever the CPU is contended. The
// container's own process is not affected: runc moves it into the
// container's cgroup. What stays in the low cgroup is the shim, which for
// the rest of the container's life copies the call's output to its files:
// under contention a chatty warm call's output moves at this weight.
const (
	// refillShares is the cgroup v1 cpu.shares of the refill cgroup:
	// 1/16 of a default cgroup's 1024, about the weight of a nice 12 task.
	refillShares uint64 = 64
	// refillWeight is the cgroup v2 cpu.weight of the same (default 100;
	// containerd's conversion of 64 shares gives 3).
	refillWeight uint64 = 3
)

// WithRefillCgroup makes the shims of pre-started containers (and the
// runc they run) start in cgroup p, made with a low CPU weight: pre-starts
// yield the CPU to running calls. p is a path from the root of the host's
// cgroup hierarchy (e.g. /fnlet-refill). New makes it; where it cannot
// (no write access to the host's cgroupfs, as in the default DaemonSet),
// pre-starts run at containerd's own priority and RefillCgroup says why.
func WithRefillCgroup(p string) Opt {
	return func(r *Runtime) error {
		if p == "" {
			return nil
		}
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return fmt.Errorf("refill cgroup %q: want a clean absolute path below the root", p)
		}
		r.refillCgroup = p
		return nil
	}
}

// RefillCgroup is the cgroup the shims of pre-starts join, or "" and the
// reason when they run at containerd's own priority.
func (r *Runtime) RefillCgroup() (string, error) {
	if r.refillErr != nil {
		return "", r.refillErr
	}
	return r.refillCgroup, nil
}

// makeRefillCgroup creates cgroup p with the low CPU weight, only in the
// cpu controller on cgroup v1 (the shim joins the controllers where p
// exists). An existing one is reused and its weight set again. Plain file
// writes: containerd's cgroup packages would bring eBPF and D-Bus into the
// manager for two files.
func makeRefillCgroup(p string) error {
	dir, unified, err := cpuCgroupDir(p)
	if err != nil {
		return fmt.Errorf("make refill cgroup %s: %w", p, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make refill cgroup %s: %w", p, err)
	}
	if !unified {
		return writeCgroupFile(dir, "cpu.shares", refillShares)
	}
	if _, err := os.Stat(filepath.Join(dir, "cpu.weight")); os.IsNotExist(err) {
		// The cpu controller is not enabled for the parent's children.
		parent := filepath.Join(filepath.Dir(dir), "cgroup.subtree_control")
		if err := os.WriteFile(parent, []byte("+cpu"), 0); err != nil {
			return fmt.Errorf("make refill cgroup %s: enable cpu in %s: %w", p, parent, err)
		}
	}
	return writeCgroupFile(dir, "cpu.weight", refillWeight)
}

// cpuCgroupDir is where cgroup p is in this host's cpu controller, and
// whether that is cgroup v2's unified hierarchy.
func cpuCgroupDir(p string) (dir string, unified bool, err error) {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return filepath.Join("/sys/fs/cgroup", p), true, nil
	}
	root, err := cpuMount("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	return filepath.Join(root, p), false, nil
}

func writeCgroupFile(dir, name string, v uint64) error {
	f := filepath.Join(dir, name)
	if err := os.WriteFile(f, []byte(strconv.FormatUint(v, 10)), 0); err != nil {
		return fmt.Errorf("set %s: %w", f, err)
	}
	return nil
}

// cpuMount finds where the cgroup v1 hierarchy holding the cpu controller
// is mounted, from a mountinfo file.
func cpuMount(mountinfo string) (string, error) {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || g[0] != "cgroup" {
			continue
		}
		for _, o := range strings.Split(g[2], ",") {
			if o != "cpu" {
				continue
			}
			if f[3] != "/" {
				// A container's view of a sub-tree: the shim, on the host,
				// would read the path from the hierarchy's root.
				return "", fmt.Errorf("the cpu cgroup hierarchy at %s is mounted from %s, not from its root", f[4], f[3])
			}
			return f[4], nil
		}
	}
	return "", fmt.Errorf("no cgroup v1 hierarchy with the cpu controller in %s", mountinfo)
}
