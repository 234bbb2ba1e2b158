package ctrd

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCPUMount(t *testing.T) {
	const hybrid = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
`
	tests := []struct {
		name, mountinfo, want, wantErr string
	}{
		{name: "co-mounted", mountinfo: hybrid, want: "/sys/fs/cgroup/cpu,cpuacct"},
		{name: "alone", mountinfo: "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n",
			want: "/sys/fs/cgroup/cpu"},
		{name: "cpuacct and cpuset are not cpu", mountinfo: "33 31 0:30 / /x rw - cgroup cgroup rw,cpuacct\n34 31 0:31 / /y rw - cgroup cgroup rw,cpuset\n",
			wantErr: "no cgroup v1 hierarchy with the cpu controller"},
		{name: "a container's sub-tree", mountinfo: "32 31 0:29 /kubepods/pod1/c1 /sys/fs/cgroup/cpu rw - cgroup cgroup ro,cpu\n",
			wantErr: "mounted from /kubepods/pod1/c1"},
		{name: "optional fields", mountinfo: "32 31 0:29 / /sys/fs/cgroup/cpu rw shared:9 master:1 - cgroup cgroup rw,cpu\n",
			want: "/sys/fs/cgroup/cpu"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "mountinfo")
			if err := os.WriteFile(f, []byte(tc.mountinfo), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := cpuMount(f)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("cpuMount = %q, %v; want error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("cpuMount = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestWithRefillCgroupRejectsBadPaths(t *testing.T) {
	for _, p := range []string{"fnlet-refill", "/", "/a/../b", "/a/"} {
		if err := WithRefillCgroup(p)(&Runtime{}); err == nil {
			t.Errorf("WithRefillCgroup(%q) accepted", p)
		}
	}
}

// TestPrestartShimYieldsCPU: the shim of a pre-start runs in the refill
// cgroup, with its low CPU weight; the container's own process does not,
// and neither does a cold call's shim.
func TestPrestartShimYieldsCPU(t *testing.T) {
	const cg = "/fnlet-test-refill"
	// Registered first, so it runs last: after the shims below are gone.
	t.Cleanup(func() {
		if d, _, err := cpuCgroupDir(cg); err == nil {
			poll(t, 30*time.Second, "refill cgroup empty", func() bool {
				err := os.Remove(d)
				return err == nil || os.IsNotExist(err)
			})
		}
	})
	rt := newTestRuntime(t, "", WithRefillCgroup(cg))
	if got, err := rt.RefillCgroup(); err != nil || got != cg {
		t.Fatalf("RefillCgroup = %q, %v; want %q", got, err, cg)
	}
	dir, unified, err := cpuCgroupDir(cg)
	if err != nil {
		t.Fatal(err)
	}
	weightFile, want := "cpu.shares", refillShares
	if unified {
		weightFile, want = "cpu.weight", refillWeight
	}
	if b, err := os.ReadFile(filepath.Join(dir, weightFile)); err != nil || strings.TrimSpace(string(b)) != strconv.FormatUint(want, 10) {
		t.Fatalf("%s of the refill cgroup: %q, %v; want %d", weightFile, b, err, want)
	}

	id := mustPrestart(t, rt, testPool())
	cold := testCall(t, "-sleep", "30s")
	if _, err := rt.Run(ctxTimeout(t, 60*time.Second), cold); err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() { removeContainer(t, ContainerID(cold.UID)) })

	if got := cpuCgroupOf(t, shimPid(t, id)); got != cg {
		t.Errorf("shim of pre-start %s in cpu cgroup %q, want %q", id, got, cg)
	}
	if got := cpuCgroupOf(t, shimPid(t, ContainerID(cold.UID))); got == cg {
		t.Errorf("shim of cold call %s in the refill cgroup", cold.UID)
	}
	c, ctx := rawClient(t)
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cpuCgroupOf(t, strconv.Itoa(int(task.Pid()))); got == cg || !strings.HasSuffix(got, "/"+id) {
		t.Errorf("process of pre-start %s in cpu cgroup %q, want its container's", id, got)
	}
}

// shimPid finds the shim daemon serving container id.
func shimPid(t testing.TB, id string) string {
	t.Helper()
	for pid := range shimsOf(map[string]bool{id: true}) {
		return pid
	}
	t.Fatalf("no shim process for %s", id)
	return ""
}

// cpuCgroupOf is process pid's cgroup in the cpu controller (v1) or its
// unified cgroup (v2).
func cpuCgroupOf(t testing.TB, pid string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	unified := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			unified = f[2]
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpu" {
				return f[2]
			}
		}
	}
	if unified != "" {
		return unified // cgroup v2: no controller names
	}
	t.Fatalf("no cpu cgroup in /proc/%s/cgroup:\n%s", pid, b)
	return ""
}
