package ctrd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Volumes and scratch: the mounts in the spec (unit), and what a call sees
// and leaves behind on a real containerd.

func mountAt(s *specs.Spec, dest string) (specs.Mount, bool) {
	for _, m := range s.Mounts {
		if m.Destination == dest {
			return m, true
		}
	}
	return specs.Mount{}, false
}

func TestBuildSpecVolumes(t *testing.T) {
	call := specCall(func(c *Call) {
		c.MemoryBytes = 64 << 20
		c.ScratchBytes = 8 << 20
		c.Volumes = []Volume{
			{Name: "cfg", MountPath: "/etc/app", Files: []File{{Path: "a", Data: []byte("x"), Mode: 0o644}}},
			{Name: "work", MountPath: "/work", TmpfsBytes: 16 << 20},
		}
	})
	s := mustBuildSpec(t, call, testImage, Policy{VolumeRoot: "/calls/c1/volumes"})
	cases := []struct {
		dest, typ, source string
		options           []string
	}{
		{"/tmp", "tmpfs", "tmpfs", []string{"nosuid", "nodev", "mode=1777", "size=8388608"}},
		{"/etc/app", "bind", "/calls/c1/volumes/cfg", []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
		{"/work", "tmpfs", "tmpfs", []string{"nosuid", "nodev", "mode=0777", "size=16777216"}},
	}
	for _, tc := range cases {
		m, ok := mountAt(s, tc.dest)
		if !ok {
			t.Errorf("no mount at %s: %+v", tc.dest, s.Mounts)
			continue
		}
		if m.Type != tc.typ || m.Source != tc.source || strings.Join(m.Options, ",") != strings.Join(tc.options, ",") {
			t.Errorf("mount at %s = %+v, want type %s source %s options %v", tc.dest, m, tc.typ, tc.source, tc.options)
		}
	}
	// The call's mounts come after the default ones (/proc, /dev, ...), in
	// the call's order, so a volume under /tmp lands in the scratch tmpfs.
	var order []string
	for _, m := range s.Mounts {
		if m.Destination == "/tmp" || m.Destination == "/etc/app" || m.Destination == "/work" {
			order = append(order, m.Destination)
		}
	}
	if strings.Join(order, " ") != "/tmp /etc/app /work" {
		t.Errorf("mount order %v", order)
	}
	if s.Mounts[0].Destination != "/proc" {
		t.Errorf("first mount %s, want /proc", s.Mounts[0].Destination)
	}

	t.Run("no volumes, no extra mounts", func(t *testing.T) {
		s := mustBuildSpec(t, specCall(nil), testImage, Policy{VolumeRoot: "/calls/c1/volumes"})
		for _, m := range s.Mounts {
			if m.Destination == "/tmp" || strings.HasPrefix(m.Source, "/calls/") {
				t.Errorf("unexpected mount %+v", m)
			}
		}
	})
}

func TestBuildSpecVolumesRefused(t *testing.T) {
	vol := func(path string) []Volume { return []Volume{{Name: "v", MountPath: path, TmpfsBytes: 1 << 20}} }
	cases := map[string]struct {
		mod  func(*Call)
		want string
	}{
		"relative mountPath":  {func(c *Call) { c.Volumes = vol("work") }, "must be an absolute, clean path"},
		"mountPath /":         {func(c *Call) { c.Volumes = vol("/") }, "must be an absolute, clean path other than /"},
		"mountPath with ..":   {func(c *Call) { c.Volumes = vol("/a/../proc") }, "must be an absolute, clean path"},
		"mountPath /proc":     {func(c *Call) { c.Volumes = vol("/proc") }, "must not be /proc"},
		"mountPath under sys": {func(c *Call) { c.Volumes = vol("/sys/kernel") }, "must not be /sys"},
		"mountPath under dev": {func(c *Call) { c.Volumes = vol("/dev/shm") }, "must not be /dev"},
		"a volume at /tmp with scratch": {func(c *Call) { c.Volumes = vol("/tmp"); c.ScratchBytes = 1 << 20 },
			"mountPath /tmp is scratch's too"},
		"bad name": {func(c *Call) { c.Volumes = []Volume{{Name: "../x", MountPath: "/x", TmpfsBytes: 1}} }, "is not a DNS label"},
		"file path escaping": {func(c *Call) {
			c.Volumes = []Volume{{Name: "s", MountPath: "/s", Files: []File{{Path: "../../etc/passwd", Mode: 0o644}}}}
		}, "must be relative, clean and without .."},
		"absolute file path": {func(c *Call) {
			c.Volumes = []Volume{{Name: "s", MountPath: "/s", Files: []File{{Path: "/etc/passwd", Mode: 0o644}}}}
		}, "must be relative"},
		"setuid file mode": {func(c *Call) {
			c.Volumes = []Volume{{Name: "s", MountPath: "/s", Files: []File{{Path: "x", Mode: 0o4755}}}}
		}, "has more than permission bits"},
		"tmpfs sizes over the memory limit": {func(c *Call) {
			c.MemoryBytes = 32 << 20
			c.ScratchBytes = 16 << 20
			c.Volumes = []Volume{{Name: "a", MountPath: "/a", TmpfsBytes: 16 << 20}, {Name: "b", MountPath: "/b", TmpfsBytes: 1}}
		}, "emptyDir and scratch sizes total 33554433 bytes, over the call's memory limit of 33554432 bytes"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := BuildSpec(context.Background(), testNS, specCall(tc.mod), testImage, Policy{})
			checkSpecErr(t, err, tc.want)
		})
	}
	t.Run("tmpfs sizes exactly the memory limit", func(t *testing.T) {
		mustBuildSpec(t, specCall(func(c *Call) {
			c.MemoryBytes = 32 << 20
			c.ScratchBytes = 16 << 20
			c.Volumes = vol("/a")
			c.Volumes[0].TmpfsBytes = 16 << 20
		}), testImage, Policy{})
	})
}

// A Call printed by mistake (a log line, an error with %v) shows no file
// data: it may be a Secret's.
func TestFileDataNeverPrinted(t *testing.T) {
	const secret = "pr1nted-by-m1stake"
	call := Call{Volumes: []Volume{{Name: "s", MountPath: "/s", Files: []File{{Path: "token", Data: []byte(secret), Mode: 0o400}}}}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(verb, call); strings.Contains(out, secret) {
			t.Errorf("%s of a Call prints the file data: %s", verb, out)
		}
	}
	if out := fmt.Sprintf("%+v", call.Volumes[0].Files[0]); !strings.Contains(out, "<18 bytes>") {
		t.Errorf("File prints as %s, want its size", out)
	}
}

// mountsUnder lists the node's mounts (this process's mount table) whose
// mount point or source lies under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, dir) {
			out = append(out, line)
		}
	}
	return out
}

// TestVolumesOnContainerd runs a busybox call as uid 1000 with a read-only
// root: it reads its file volume (modes and owner as asked), writes to its
// scratch /tmp, and fills its emptyDir until ENOSPC. Afterwards nothing of
// it is mounted on the node and its files are gone.
func TestVolumesOnContainerd(t *testing.T) {
	ioRoot := t.TempDir()
	rt := newTestRuntime(t, ioRoot)
	const secret = "t0ps3cret-value"
	sum := sha256.Sum256([]byte(secret))
	call := testCall(t)
	call.Image = busyboxImage
	call.User = &User{UID: 1000, GID: 1000}
	call.ReadOnlyRootfs = true
	call.MemoryBytes = 64 << 20
	call.ScratchBytes = 1 << 20
	call.Volumes = []Volume{
		{Name: "cfg", MountPath: "/etc/app", Files: []File{
			{Path: "app.conf", Data: []byte("level=debug\n"), Mode: 0o644},
			{Path: "nested/dir/token", Data: []byte(secret), Mode: 0o400},
		}},
		{Name: "work", MountPath: "/work", TmpfsBytes: 1 << 20},
	}
	call.Command = []string{"/bin/sh", "-c", strings.Join([]string{
		"stat -c '%a %u:%g %n' /etc/app/app.conf /etc/app/nested/dir/token",
		"cat /etc/app/app.conf",
		"sha256sum /etc/app/nested/dir/token | cut -d' ' -f1",
		"echo scratch > /tmp/s && cat /tmp/s",
		"touch /rootfs-file 2>/dev/null && echo rootfs-writable || echo rootfs-read-only",
		"touch /etc/app/new 2>/dev/null && echo volume-writable || echo volume-read-only",
		"dd if=/dev/zero of=/work/fill bs=1024 count=2048 2>&1 | grep -o 'No space left on device'",
		"echo done",
	}, "; ")}
	s := runToExit(t, rt, call)
	want := strings.Join([]string{
		"644 1000:1000 /etc/app/app.conf",
		"400 1000:1000 /etc/app/nested/dir/token",
		"level=debug",
		hex.EncodeToString(sum[:]),
		"scratch",
		"rootfs-read-only",
		"volume-read-only",
		"No space left on device",
		"done",
	}, "\n") + "\n"
	if got := string(s.Result.Stdout.Data); got != want || s.Result.ExitCode != 0 {
		t.Errorf("exit %d, stdout:\n%s\nwant:\n%s\nstderr: %s", s.Result.ExitCode, got, want, s.Result.Stderr.Data)
	}
	dir := filepath.Join(ioRoot, ContainerID(call.UID))
	if _, err := os.Stat(filepath.Join(dir, volumesDir)); !os.IsNotExist(err) {
		t.Errorf("volume files left after Delete: stat says %v", err)
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("mounts left on the node under the call's directory:\n%s", strings.Join(m, "\n"))
	}
}

// TestVolumeFilesStayPrivateOnTheNode: while the call runs, its files are
// in a 0700 root directory (no other user of the node can reach them) and
// belong to the call's user with the asked mode.
func TestVolumeFilesStayPrivateOnTheNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files are given to the call's uid with chown, as the manager (root) does")
	}
	ioRoot := t.TempDir()
	d := callDir{filepath.Join(ioRoot, "c1")}
	if _, err := d.prepare(nil, StdinFile, false); err != nil {
		t.Fatal(err)
	}
	vols := []Volume{{Name: "s", MountPath: "/s", Files: []File{{Path: "a/token", Data: []byte("x"), Mode: 0o440}}}}
	if err := d.writeVolumes(vols, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	check := func(p string, mode os.FileMode, uid, gid uint32) {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: mode %#o owner %d:%d, want %#o %d:%d", p, fi.Mode().Perm(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	check(d.path, 0o700, 0, 0)
	check(filepath.Join(d.volumeRoot(), "s"), 0o755, 0, 0)
	check(filepath.Join(d.volumeRoot(), "s", "a", "token"), 0o440, 1234, 5678)
	// Written again (a retried attempt) from scratch, then removed.
	if err := d.writeVolumes(vols, 1234, 5678); err != nil {
		t.Fatalf("second write: %v", err)
	}
	if err := d.removeVolumes(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.volumeRoot()); !os.IsNotExist(err) {
		t.Errorf("volumes left: %v", err)
	}
}

// TestVolumeFilesWithTheDaemonSetsCapabilities: the DaemonSet runs the
// manager as root with every capability dropped but CAP_CHOWN; that is
// enough to give a volume's files to the call's user with their mode, and
// without CAP_CHOWN the error says what is missing. The test re-runs itself
// under setpriv with those bounding sets.
func TestVolumeFilesWithTheDaemonSetsCapabilities(t *testing.T) {
	if os.Getenv("FNLET_CAPS_CHILD") != "" {
		d := callDir{filepath.Join(t.TempDir(), "c1")}
		if err := os.MkdirAll(d.path, 0o700); err != nil {
			t.Fatal(err)
		}
		err := d.writeVolumes([]Volume{{Name: "s", MountPath: "/s", Files: []File{{Path: "token", Data: []byte("x"), Mode: 0o400}}}}, 1234, 1234)
		if err != nil {
			fmt.Println("WRITE-ERROR:", err)
			return
		}
		fi, err := os.Stat(filepath.Join(d.volumeRoot(), "s", "token"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("WRITTEN: %#o %d\n", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: it drops capabilities from root's bounding set, as the DaemonSet does")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not found: cannot run with the DaemonSet's capabilities")
	}
	for caps, want := range map[string]string{
		"-all,+chown": "WRITTEN: 0400 1234",
		"-all":        "WRITE-ERROR: volume s: file token: give it to the call's user 1234:1234",
	} {
		cmd := exec.Command(setpriv, "--bounding-set="+caps, "--inh-caps=-all", os.Args[0],
			"-test.run=^TestVolumeFilesWithTheDaemonSetsCapabilities$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "FNLET_CAPS_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("bounding set %s: err %v, output:\n%s\nwant it to contain %q", caps, err, out, want)
		}
		if strings.HasPrefix(want, "WRITE-ERROR") && !strings.Contains(string(out), "the manager needs CAP_CHOWN") {
			t.Errorf("bounding set %s: the error does not name CAP_CHOWN:\n%s", caps, out)
		}
	}
}
