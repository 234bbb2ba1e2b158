package ctrd

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Unit tests of the OCI spec a call gets: no daemon involved. BuildSpec
// renders exactly the options Run hands to containerd.

// defaultPathEnv is containerd's default PATH (oci.WithDefaultPathEnv).
const defaultPathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// containerdDefaultCaps is containerd's default capability set
// (pkg/oci defaultUnixCaps), the same as Docker's.
var containerdDefaultCaps = []string{
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FSETID",
	"CAP_FOWNER",
	"CAP_MKNOD",
	"CAP_NET_RAW",
	"CAP_SETGID",
	"CAP_SETUID",
	"CAP_SETFCAP",
	"CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT",
	"CAP_KILL",
	"CAP_AUDIT_WRITE",
}

// testImage is an image config like testfn's: an entrypoint, no cmd, no env.
var testImage = ocispec.ImageConfig{Entrypoint: []string{"/testfn"}}

func specCall(mod func(*Call)) Call {
	c := Call{UID: "u1", Namespace: "default", Name: "fn", Image: testfnImage}
	if mod != nil {
		mod(&c)
	}
	return c
}

func mustBuildSpec(t *testing.T, call Call, img ocispec.ImageConfig, p Policy) *specs.Spec {
	t.Helper()
	s, err := BuildSpec(context.Background(), testNS, call, img, p)
	if err != nil {
		t.Fatalf("BuildSpec: %v", err)
	}
	return s
}

// checkSpecErr checks an expected BuildSpec error: errdefs.ErrInvalidArgument
// with a message containing want.
func checkSpecErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("BuildSpec succeeded, want an error containing %q", want)
	}
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("error %v is not errdefs.ErrInvalidArgument", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
}

func TestBuildSpecProcessArgs(t *testing.T) {
	tests := []struct {
		name       string
		entrypoint []string
		cmd        []string
		command    []string
		args       []string
		want       []string
		wantErr    string
	}{
		{
			name:       "image entrypoint and cmd",
			entrypoint: []string{"/bin/sh", "-c"}, cmd: []string{"echo hi"},
			want: []string{"/bin/sh", "-c", "echo hi"},
		},
		{
			name: "image cmd only",
			cmd:  []string{"/bin/echo", "hi"},
			want: []string{"/bin/echo", "hi"},
		},
		{
			name:       "args replace image cmd, keep entrypoint",
			entrypoint: []string{"/testfn"}, cmd: []string{"-exit", "1"},
			args: []string{"-exit", "0"},
			want: []string{"/testfn", "-exit", "0"},
		},
		{
			name:       "command replaces entrypoint and drops image cmd",
			entrypoint: []string{"/testfn"}, cmd: []string{"-exit", "1"},
			command: []string{"/bin/true"},
			want:    []string{"/bin/true"},
		},
		{
			name:       "command and args",
			entrypoint: []string{"/testfn"}, cmd: []string{"-exit", "1"},
			command: []string{"/bin/echo"}, args: []string{"a", "b"},
			want: []string{"/bin/echo", "a", "b"},
		},
		{
			name: "args with no image entrypoint run the args",
			cmd:  []string{"/bin/false"},
			args: []string{"/bin/echo", "x"},
			want: []string{"/bin/echo", "x"},
		},
		{
			name:       "empty strings in args are kept",
			entrypoint: []string{"/testfn"},
			args:       []string{"-stdout-text", ""},
			want:       []string{"/testfn", "-stdout-text", ""},
		},
		{
			name:    "no command anywhere",
			wantErr: "no command",
		},
		{
			name:    "empty first word",
			command: []string{"", "x"},
			wantErr: "no command",
		},
		{
			name:       "NUL in an argument",
			entrypoint: []string{"/testfn"},
			args:       []string{"a\x00b"},
			wantErr:    "NUL",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := ocispec.ImageConfig{Entrypoint: tc.entrypoint, Cmd: tc.cmd}
			call := specCall(func(c *Call) { c.Command, c.Args = tc.command, tc.args })
			s, err := BuildSpec(context.Background(), testNS, call, img, Policy{})
			if tc.wantErr != "" {
				checkSpecErr(t, err, tc.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("BuildSpec: %v", err)
			}
			if !slices.Equal(s.Process.Args, tc.want) {
				t.Errorf("args = %q, want %q", s.Process.Args, tc.want)
			}
		})
	}
}

func TestBuildSpecEnv(t *testing.T) {
	tests := []struct {
		name     string
		imageEnv []string
		callEnv  []string
		want     []string
	}{
		{
			name: "image without env gets the default PATH",
			want: []string{defaultPathEnv},
		},
		{
			name:     "image env kept, image PATH wins over the default",
			imageEnv: []string{"PATH=/app/bin", "LANG=C.UTF-8"},
			want:     []string{"PATH=/app/bin", "LANG=C.UTF-8"},
		},
		{
			name:     "call env overrides image env in place and appends new keys",
			imageEnv: []string{"PATH=/app/bin", "MODE=prod"},
			callEnv:  []string{"MODE=test", "EXTRA=1"},
			want:     []string{"PATH=/app/bin", "MODE=test", "EXTRA=1"},
		},
		{
			name:    "call PATH overrides the default PATH",
			callEnv: []string{"PATH=/custom", "FOO=bar"},
			want:    []string{"PATH=/custom", "FOO=bar"},
		},
		{
			name:     "values may contain '=' and be empty",
			imageEnv: []string{"PATH=/bin"},
			callEnv:  []string{"EQ=a=b", "EMPTY="},
			want:     []string{"PATH=/bin", "EQ=a=b", "EMPTY="},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := ocispec.ImageConfig{Entrypoint: []string{"/testfn"}, Env: tc.imageEnv}
			s := mustBuildSpec(t, specCall(func(c *Call) { c.Env = tc.callEnv }), img, Policy{})
			if !slices.Equal(s.Process.Env, tc.want) {
				t.Errorf("env = %q, want %q", s.Process.Env, tc.want)
			}
		})
	}
}

func TestBuildSpecWorkingDir(t *testing.T) {
	tests := []struct {
		name     string
		imageDir string
		callDir  string
		want     string
	}{
		{name: "neither set: /", want: "/"},
		{name: "image workdir", imageDir: "/app", want: "/app"},
		{name: "call workdir wins", imageDir: "/app", callDir: "/tmp", want: "/tmp"},
		{name: "call workdir alone", callDir: "/work", want: "/work"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := ocispec.ImageConfig{Entrypoint: []string{"/testfn"}, WorkingDir: tc.imageDir}
			s := mustBuildSpec(t, specCall(func(c *Call) { c.WorkingDir = tc.callDir }), img, Policy{})
			if s.Process.Cwd != tc.want {
				t.Errorf("cwd = %q, want %q", s.Process.Cwd, tc.want)
			}
		})
	}
}

func TestBuildSpecUser(t *testing.T) {
	tests := []struct {
		name      string
		imageUser string
		callUser  *User
		wantUID   uint32
		wantGID   uint32
		wantErr   string
	}{
		{name: "no user anywhere: root", wantUID: 0, wantGID: 0},
		{name: "call user", callUser: &User{UID: 1234, GID: 5678}, wantUID: 1234, wantGID: 5678},
		{name: "call user beats numeric image user", imageUser: "1000", callUser: &User{UID: 7, GID: 8}, wantUID: 7, wantGID: 8},
		{name: "call user beats named image user", imageUser: "nobody", callUser: &User{UID: 65534, GID: 65534}, wantUID: 65534, wantGID: 65534},
		{name: "numeric image uid: gid = uid", imageUser: "1000", wantUID: 1000, wantGID: 1000},
		{name: "numeric image uid:gid", imageUser: "1000:50", wantUID: 1000, wantGID: 50},
		{name: "named image user refused", imageUser: "app", wantErr: `image user "app" is not numeric; set securityContext.runAsUser`},
		{name: "named image user with group refused", imageUser: "app:staff", wantErr: "runAsUser"},
		{name: "named image group refused", imageUser: "1000:staff", wantErr: `image group "staff" is not numeric; set securityContext.runAsGroup`},
		{name: "negative call uid", callUser: &User{UID: -1, GID: 0}, wantErr: "invalid user"},
		{name: "call gid too large", callUser: &User{UID: 0, GID: 1 << 40}, wantErr: "invalid user"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := ocispec.ImageConfig{Entrypoint: []string{"/testfn"}, User: tc.imageUser}
			s, err := BuildSpec(context.Background(), testNS, specCall(func(c *Call) { c.User = tc.callUser }), img, Policy{})
			if tc.wantErr != "" {
				checkSpecErr(t, err, tc.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("BuildSpec: %v", err)
			}
			if u := s.Process.User; u.UID != tc.wantUID || u.GID != tc.wantGID {
				t.Errorf("user = %d:%d, want %d:%d", u.UID, u.GID, tc.wantUID, tc.wantGID)
			}
		})
	}
}

func TestBuildSpecResources(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	tests := []struct {
		name       string
		call       func(*Call)
		wantMemory *int64 // limit, and swap equal to it
		wantQuota  *int64 // with a 100ms period
		wantPids   *int64
	}{
		{name: "no limits", call: func(*Call) {}},
		{name: "memory, swap == memory", call: func(c *Call) { c.MemoryBytes = 256 << 20 }, wantMemory: i64(256 << 20)},
		{name: "half a CPU", call: func(c *Call) { c.MilliCPU = 500 }, wantQuota: i64(50000)},
		{name: "two CPUs", call: func(c *Call) { c.MilliCPU = 2000 }, wantQuota: i64(200000)},
		{name: "10m is exactly the 1ms floor", call: func(c *Call) { c.MilliCPU = 10 }, wantQuota: i64(1000)},
		{name: "1m is raised to the 1ms floor", call: func(c *Call) { c.MilliCPU = 1 }, wantQuota: i64(1000)},
		{name: "11m is above the floor", call: func(c *Call) { c.MilliCPU = 11 }, wantQuota: i64(1100)},
		{name: "pids", call: func(c *Call) { c.Pids = 32 }, wantPids: i64(32)},
		{
			name:       "all together",
			call:       func(c *Call) { c.MemoryBytes = 64 << 20; c.MilliCPU = 250; c.Pids = 100 },
			wantMemory: i64(64 << 20), wantQuota: i64(25000), wantPids: i64(100),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := mustBuildSpec(t, specCall(tc.call), testImage, Policy{})
			res := s.Linux.Resources
			if res == nil {
				t.Fatal("no Linux.Resources")
			}
			if tc.wantMemory == nil {
				if res.Memory != nil && (res.Memory.Limit != nil || res.Memory.Swap != nil) {
					t.Errorf("memory limit set without MemoryBytes: %+v", res.Memory)
				}
			} else {
				m := res.Memory
				if m == nil || m.Limit == nil || m.Swap == nil {
					t.Fatalf("memory = %+v, want limit and swap", m)
				}
				if *m.Limit != *tc.wantMemory || *m.Swap != *tc.wantMemory {
					t.Errorf("memory limit %d swap %d, want both %d", *m.Limit, *m.Swap, *tc.wantMemory)
				}
			}
			if tc.wantQuota == nil {
				if res.CPU != nil && res.CPU.Quota != nil {
					t.Errorf("CPU quota %d set without MilliCPU", *res.CPU.Quota)
				}
			} else {
				c := res.CPU
				if c == nil || c.Quota == nil || c.Period == nil {
					t.Fatalf("cpu = %+v, want quota and period", c)
				}
				if *c.Quota != *tc.wantQuota || *c.Period != 100000 {
					t.Errorf("CFS quota %d period %d, want %d / 100000", *c.Quota, *c.Period, *tc.wantQuota)
				}
			}
			if tc.wantPids == nil {
				if res.Pids != nil && res.Pids.Limit != nil {
					t.Errorf("pids limit %d set without Pids", *res.Pids.Limit)
				}
			} else if res.Pids == nil || res.Pids.Limit == nil || *res.Pids.Limit != *tc.wantPids {
				t.Errorf("pids = %+v, want limit %d", res.Pids, *tc.wantPids)
			}
		})
	}
}

func TestBuildSpecReadOnlyRootfs(t *testing.T) {
	for _, ro := range []bool{false, true} {
		s := mustBuildSpec(t, specCall(func(c *Call) { c.ReadOnlyRootfs = ro }), testImage, Policy{})
		if s.Root == nil || s.Root.Readonly != ro {
			t.Errorf("ReadOnlyRootfs=%v: root = %+v", ro, s.Root)
		}
	}
}

func namespaceOf(s *specs.Spec, typ specs.LinuxNamespaceType) (specs.LinuxNamespace, bool) {
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == typ {
			return ns, true
		}
	}
	return specs.LinuxNamespace{}, false
}

func hasMount(s *specs.Spec, dest string) bool {
	return slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == dest })
}

func TestBuildSpecNetwork(t *testing.T) {
	t.Run("default keeps a private netns", func(t *testing.T) {
		s := mustBuildSpec(t, specCall(nil), testImage, Policy{})
		ns, ok := namespaceOf(s, specs.NetworkNamespace)
		if !ok || ns.Path != "" {
			t.Fatalf("network namespace = %+v (present %v), want a new private one", ns, ok)
		}
		if hasMount(s, "/etc/resolv.conf") || hasMount(s, "/etc/hosts") {
			t.Errorf("private network call got the host's resolv.conf/hosts")
		}
	})
	t.Run("host network refused by default policy", func(t *testing.T) {
		_, err := BuildSpec(context.Background(), testNS, specCall(func(c *Call) { c.HostNetwork = true }), testImage, Policy{})
		checkSpecErr(t, err, "--allow-host-network")
	})
	t.Run("host network shares the host netns when allowed", func(t *testing.T) {
		s := mustBuildSpec(t, specCall(func(c *Call) { c.HostNetwork = true }), testImage, Policy{AllowHostNetwork: true})
		if ns, ok := namespaceOf(s, specs.NetworkNamespace); ok {
			t.Fatalf("host network call has its own network namespace %+v", ns)
		}
		if !hasMount(s, "/etc/resolv.conf") || !hasMount(s, "/etc/hosts") {
			t.Errorf("host network call lacks the host's resolv.conf/hosts mounts")
		}
		// Only the network is shared.
		for _, typ := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace} {
			if ns, ok := namespaceOf(s, typ); !ok || ns.Path != "" {
				t.Errorf("%s namespace = %+v (present %v), want private", typ, ns, ok)
			}
		}
	})
}

func TestBuildSpecPrivileged(t *testing.T) {
	t.Run("refused by default policy", func(t *testing.T) {
		_, err := BuildSpec(context.Background(), testNS, specCall(func(c *Call) { c.Privileged = true }), testImage, Policy{})
		checkSpecErr(t, err, "--allow-privileged")
	})
	t.Run("host network policy does not allow privileged", func(t *testing.T) {
		_, err := BuildSpec(context.Background(), testNS, specCall(func(c *Call) { c.Privileged = true }), testImage, Policy{AllowHostNetwork: true})
		checkSpecErr(t, err, "privileged")
	})
	t.Run("allowed: all capabilities, no seccomp, no masked paths", func(t *testing.T) {
		s := mustBuildSpec(t, specCall(func(c *Call) { c.Privileged = true }), testImage, Policy{AllowPrivileged: true})
		if !slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
			t.Errorf("privileged call lacks CAP_SYS_ADMIN: %v", s.Process.Capabilities.Bounding)
		}
		if s.Linux.Seccomp != nil {
			t.Errorf("privileged call has a seccomp profile")
		}
		if len(s.Linux.MaskedPaths) != 0 {
			t.Errorf("privileged call has masked paths %v", s.Linux.MaskedPaths)
		}
	})
}

func TestBuildSpecSecureDefaults(t *testing.T) {
	s := mustBuildSpec(t, specCall(nil), testImage, Policy{})
	if s.Linux.Seccomp == nil {
		t.Fatal("no seccomp profile")
	}
	if s.Linux.Seccomp.DefaultAction != specs.ActErrno || len(s.Linux.Seccomp.Syscalls) == 0 {
		t.Errorf("seccomp profile is not an allow-list: default %s, %d rules", s.Linux.Seccomp.DefaultAction, len(s.Linux.Seccomp.Syscalls))
	}
	if !s.Process.NoNewPrivileges {
		t.Error("NoNewPrivileges is false")
	}
	caps := s.Process.Capabilities
	if caps == nil {
		t.Fatal("no capabilities section")
	}
	want := slices.Sorted(slices.Values(containerdDefaultCaps))
	for name, set := range map[string][]string{"bounding": caps.Bounding, "permitted": caps.Permitted, "effective": caps.Effective} {
		if got := slices.Sorted(slices.Values(set)); !slices.Equal(got, want) {
			t.Errorf("%s capabilities = %v, want containerd's default %v", name, got, want)
		}
		if slices.Contains(set, "CAP_SYS_ADMIN") {
			t.Errorf("%s capabilities include CAP_SYS_ADMIN", name)
		}
	}
	if len(caps.Inheritable) != 0 || len(caps.Ambient) != 0 {
		t.Errorf("inheritable %v / ambient %v capabilities, want none", caps.Inheritable, caps.Ambient)
	}
	for _, p := range []string{"/proc/kcore", "/proc/keys", "/sys/firmware"} {
		if !slices.Contains(s.Linux.MaskedPaths, p) {
			t.Errorf("masked paths lack %s", p)
		}
	}
	if !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("read-only paths lack /proc/sys: %v", s.Linux.ReadonlyPaths)
	}
	for _, typ := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace} {
		ns, ok := namespaceOf(s, typ)
		if !ok {
			t.Errorf("no private %s namespace", typ)
		} else if ns.Path != "" {
			t.Errorf("%s namespace joins %s, want a new one", typ, ns.Path)
		}
	}
	if s.Root.Readonly {
		t.Error("rootfs read-only without ReadOnlyRootfs")
	}
	if s.Hostname != "fn" {
		t.Errorf("hostname = %q, want the call name", s.Hostname)
	}
	if s.Version != specs.Version {
		t.Errorf("spec version = %q, want %q for runc", s.Version, specs.Version)
	}
}

func TestBuildSpecHostname(t *testing.T) {
	long := strings.Repeat("a", 80)
	tests := []struct{ name, want string }{
		{"", "fnlet"},
		{"my-call", "my-call"},
		{long, long[:63]},
	}
	for _, tc := range tests {
		s := mustBuildSpec(t, specCall(func(c *Call) { c.Name = tc.name }), testImage, Policy{})
		if s.Hostname != tc.want {
			t.Errorf("name %q: hostname %q, want %q", tc.name, s.Hostname, tc.want)
		}
	}
}

func TestBuildSpecOCIRuntimeVersion(t *testing.T) {
	tests := []struct {
		runtime string
		want    string
	}{
		{"", specs.Version},
		{"runc", specs.Version},
		{"crun", "1.0.2-dev"},
	}
	for _, tc := range tests {
		t.Run("runtime="+tc.runtime, func(t *testing.T) {
			s := mustBuildSpec(t, specCall(nil), testImage, Policy{OCIRuntime: tc.runtime})
			if s.Version != tc.want {
				t.Errorf("spec version = %q, want %q", s.Version, tc.want)
			}
		})
	}
}

// TestBuildSpecCgroupsPath: each call gets its own cgroup under the namespace.
func TestBuildSpecCgroupsPath(t *testing.T) {
	s := mustBuildSpec(t, specCall(nil), testImage, Policy{})
	if want := "/" + testNS + "/" + ContainerID("u1"); s.Linux.CgroupsPath != want {
		t.Errorf("cgroups path = %q, want %q", s.Linux.CgroupsPath, want)
	}
}
