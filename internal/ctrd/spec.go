package ctrd

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cfsPeriod is the CFS period in microseconds; the quota is millicpu of it.
const cfsPeriod = 100000

// Policy holds the manager's gates for risky call settings.
type Policy struct {
	AllowHostNetwork bool
	AllowPrivileged  bool
	// OCIRuntime "crun" needs an older spec version on Debian's crun 1.8.
	OCIRuntime string
	// InitBinary, when set, is the host path of fnlet-init, run as PID 1
	// with the call's ExitFile (a host path) to record the exit code in.
	InitBinary string
	ExitFile   string
	// NetNS is the pinned network namespace a PodNetwork call joins, and
	// ResolvConf (optional) its /etc/resolv.conf.
	NetNS      string
	ResolvConf string
	// VolumeRoot is the host directory of the call's file volumes.
	VolumeRoot string
}

// specOpts turns a call and its image config into OCI spec options, one
// small option per concern. It reads nothing from the image's rootfs, so
// the manager needs no access to containerd's snapshot mounts — which is
// why named image users are refused (see withUser).
func specOpts(call Call, img ocispec.ImageConfig, p Policy) ([]oci.SpecOpts, error) {
	if call.HostNetwork && !p.AllowHostNetwork {
		return nil, errdefs.ErrInvalidArgument.WithMessage("host network is not allowed on this node (manager flag --allow-host-network)")
	}
	if call.Privileged && !p.AllowPrivileged {
		return nil, errdefs.ErrInvalidArgument.WithMessage("privileged calls are not allowed on this node (manager flag --allow-privileged)")
	}
	if err := checkVolumes(call); err != nil {
		return nil, err
	}
	args, err := processArgs(img, call.Command, call.Args)
	if err != nil {
		return nil, err
	}
	user, err := withUser(img.User, call.User)
	if err != nil {
		return nil, err
	}
	opts := []oci.SpecOpts{
		withImageEnv(img.Env),
		oci.WithEnv(call.Env),
		oci.WithProcessArgs(args...),
		oci.WithProcessCwd(firstNonEmpty(call.WorkingDir, img.WorkingDir, "/")),
		user,
		oci.WithHostname(hostname(call)),
	}
	opts = append(opts, withResources(call)...)
	if call.ReadOnlyRootfs {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if call.hasMounts() {
		opts = append(opts, withVolumes(call, p.VolumeRoot))
	}
	if call.HostNetwork {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	if call.PodNetwork {
		if p.NetNS == "" {
			return nil, errdefs.ErrInvalidArgument.WithMessage("network: pod is not enabled on this node (manager flag --cni-conf-dir)")
		}
		opts = append(opts, withPodNetwork(p.NetNS, p.ResolvConf))
	}
	// The default spec already has containerd's default capability set,
	// masked and read-only paths and private namespaces; add the rest of
	// the secure defaults.
	if call.Privileged {
		opts = append(opts, oci.WithPrivileged, oci.WithAllDevicesAllowed, oci.WithHostDevices)
	} else {
		opts = append(opts, seccomp.WithDefaultProfile(), oci.WithNoNewPrivileges)
	}
	if p.InitBinary != "" {
		opts = append(opts, withInit(p.InitBinary, p.ExitFile))
	}
	if p.OCIRuntime == "crun" {
		opts = append(opts, withSpecVersion("1.0.2-dev"))
	}
	return opts, nil
}

// BuildSpec renders the full OCI spec for a call without containerd, for
// tests and inspection.
func BuildSpec(ctx context.Context, namespace string, call Call, img ocispec.ImageConfig, p Policy) (*specs.Spec, error) {
	opts, err := specOpts(call, img, p)
	if err != nil {
		return nil, err
	}
	ctx = namespaces.WithNamespace(ctx, namespace)
	return oci.GenerateSpec(ctx, nil, &containers.Container{ID: ContainerID(call.UID)}, opts...)
}

// processArgs applies Kubernetes semantics: command replaces the image
// entrypoint (and drops the image cmd), args replace the image cmd.
func processArgs(img ocispec.ImageConfig, command, args []string) ([]string, error) {
	var out []string
	switch {
	case len(command) > 0:
		out = append(append(out, command...), args...)
	case len(args) > 0:
		out = append(append(out, img.Entrypoint...), args...)
	default:
		out = append(append(out, img.Entrypoint...), img.Cmd...)
	}
	if len(out) == 0 || out[0] == "" {
		return nil, errdefs.ErrInvalidArgument.WithMessage("no command: the call sets no command and the image has no entrypoint or cmd")
	}
	for _, a := range out {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errdefs.ErrInvalidArgument.WithMessage("command and args must not contain NUL bytes")
		}
	}
	return out, nil
}

// withImageEnv starts the environment from the image's (containerd's default
// spec has no PATH at all).
func withImageEnv(env []string) oci.SpecOpts {
	if len(env) == 0 {
		return oci.WithDefaultPathEnv
	}
	return oci.WithEnv(env)
}

// withUser picks the process user: the call's, else the image's if it is
// numeric, else root. A named image user would need the image's
// /etc/passwd, i.e. mounting the rootfs in the manager; we refuse it with a
// clear message instead (the call can set runAsUser).
func withUser(imageUser string, u *User) (oci.SpecOpts, error) {
	uid, gid, err := effectiveUser(imageUser, u)
	if err != nil {
		return nil, err
	}
	return oci.WithUIDGID(uid, gid), nil
}

// effectiveUser is the uid/gid of withUser.
func effectiveUser(imageUser string, u *User) (uint32, uint32, error) {
	if u != nil {
		if u.UID < 0 || u.GID < 0 || u.UID > 1<<31 || u.GID > 1<<31 {
			return 0, 0, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("invalid user %d:%d", u.UID, u.GID))
		}
		return uint32(u.UID), uint32(u.GID), nil
	}
	if imageUser == "" {
		return 0, 0, nil
	}
	name, group, _ := strings.Cut(imageUser, ":")
	uid, err := strconv.ParseUint(name, 10, 32)
	if err != nil {
		return 0, 0, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("image user %q is not numeric; set securityContext.runAsUser", imageUser))
	}
	gid := uid
	if group != "" {
		if gid, err = strconv.ParseUint(group, 10, 32); err != nil {
			return 0, 0, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("image group %q is not numeric; set securityContext.runAsGroup", group))
		}
	}
	return uint32(uid), uint32(gid), nil
}

func withResources(call Call) []oci.SpecOpts {
	var opts []oci.SpecOpts
	if call.MemoryBytes > 0 {
		// swap = memory: memory+swap limit equal to the memory limit, i.e. no swap.
		opts = append(opts, oci.WithMemoryLimit(uint64(call.MemoryBytes)), oci.WithMemorySwap(call.MemoryBytes))
	}
	if call.MilliCPU > 0 {
		quota := max(call.MilliCPU*cfsPeriod/1000, 1000) // the kernel's minimum quota is 1ms
		opts = append(opts, oci.WithCPUCFS(quota, cfsPeriod))
	}
	if call.Pids > 0 {
		opts = append(opts, oci.WithPidsLimit(call.Pids))
	}
	return opts
}

func withSpecVersion(v string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Version = v
		return nil
	}
}

func hostname(call Call) string {
	h := call.Name
	if h == "" {
		h = "fnlet"
	}
	if len(h) > 63 {
		h = h[:63]
	}
	return h
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// withPodNetwork joins the pinned namespace at nsPath (see podNetwork) and
// mounts resolvConf, if any, read-only as /etc/resolv.conf.
func withPodNetwork(nsPath, resolvConf string) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if err := oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath})(ctx, c, ctr, s); err != nil {
			return err
		}
		if resolvConf != "" {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: resolvConf,
				Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		}
		return nil
	}
}
