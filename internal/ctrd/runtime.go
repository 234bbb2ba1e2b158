package ctrd

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Labels put on every container, so recovery finds calls by label.
const (
	LabelCallUID       = "fnlet.dev/call-uid"
	LabelCallNamespace = "fnlet.dev/call-namespace"
	LabelCallName      = "fnlet.dev/call-name"
	LabelManagedBy     = "fnlet.dev/managed-by"
	managedByValue     = "fnlet"
	// LabelLeaseOwner is on each call's containerd lease: who made it (WithOwner).
	LabelLeaseOwner = "fnlet.dev/owner"

	containerPrefix = "fnlet-"
)

// StdinMode selects how input reaches the program.
type StdinMode int

const (
	// StdinFile gives the shim a regular file written completely before the
	// task exists: a manager crash cannot truncate the input. This relies on
	// containerd's fifo helper accepting a regular file (pinned by a test).
	StdinFile StdinMode = iota
	// StdinFIFO is the fallback: a FIFO the runtime writes and then closes
	// with CloseIO. A task recovered without a confirmed-complete input is
	// killed, since the program may have seen only part of it.
	StdinFIFO
)

// Runtime runs calls on one containerd. Create it with New; run Watch in a
// goroutine you own to receive events; Close it when done.
type Runtime struct {
	client    *client.Client
	namespace string
	runtime   string // runc or crun
	snapshot  string
	ioRoot    string

	stdinMode    StdinMode
	outputLimit  int64
	tailBytes    int
	killGrace    time.Duration
	registryTLS  *tls.Config
	hostsDir     string
	pollInterval time.Duration
	// createTimeout bounds one NewTask (see newTask).
	createTimeout time.Duration
	policy        Policy
	// net attaches calls with PodNetwork (WithPodNetwork); nil: refused.
	net *podNetwork
	// initSource is the fnlet-init to install; initBinary is the installed
	// copy under ioRoot that containers bind-mount ("" runs calls without).
	initSource string
	initBinary string
	// refillCgroup is the cgroup the shims of pre-starts join
	// (WithRefillCgroup); refillErr says why not, when New could not make it.
	refillCgroup string
	refillErr    error

	// bg outlives single requests (stdin feeders, kill timers); Close ends it.
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pulls  pullGroup
	images imageCache

	mu     sync.Mutex
	calls  map[string]*callHandle // by container ID
	oom    map[string]bool        // by container ID: TaskOOM seen
	leased map[string]bool        // by container ID: lease made, removal not confirmed
	owner  string                 // labels this runtime's leases (WithOwner)
	// limitKills are the calls killed for their output whose
	// EventOutputLimit Watch has not sent yet (see limit.go); kept only
	// while a Watch runs (watching > 0), which drains it.
	limitKills []CallRef
	watching   int
	reconnects atomic.Int64
	// createTimeouts counts NewTasks that hit createTimeout.
	createTimeouts atomic.Int64
	// prestarting holds the IDs of pre-started containers being made
	// (their directory may exist before their container; see
	// pruneWarmDirs).
	prestarting sync.Map
}

// Opt configures a Runtime.
type Opt func(*Runtime) error

// WithNamespace sets the containerd namespace (default "fnlet").
func WithNamespace(ns string) Opt {
	return func(r *Runtime) error { r.namespace = ns; return nil }
}

// WithOCIRuntime selects the OCI runtime binary: "runc" (default) or "crun".
func WithOCIRuntime(name string) Opt {
	return func(r *Runtime) error {
		switch name {
		case "runc", "crun":
			r.runtime = name
			return nil
		}
		return fmt.Errorf("unknown OCI runtime %q (want runc or crun)", name)
	}
}

// WithSnapshotter sets the snapshotter (default overlayfs).
func WithSnapshotter(name string) Opt {
	return func(r *Runtime) error { r.snapshot = name; return nil }
}

// WithIORoot sets the directory holding each call's stdin/stdout/stderr
// files. The shim opens these paths itself, so they must be the same path
// on the host as here.
func WithIORoot(dir string) Opt {
	return func(r *Runtime) error { r.ioRoot = dir; return nil }
}

// WithStdinMode selects regular-file stdin (default) or the FIFO fallback.
func WithStdinMode(m StdinMode) Opt {
	return func(r *Runtime) error { r.stdinMode = m; return nil }
}

// WithOutputLimit sets the default cap on stdout+stderr bytes per call.
func WithOutputLimit(n int64) Opt {
	return func(r *Runtime) error { r.outputLimit = n; return nil }
}

// WithTailBytes sets how many bytes of each stream a Result carries.
func WithTailBytes(n int) Opt {
	return func(r *Runtime) error { r.tailBytes = n; return nil }
}

// WithRegistryTLS sets the TLS config (CA pool) used for registries.
// Verification is never skipped.
func WithRegistryTLS(c *tls.Config) Opt {
	return func(r *Runtime) error { r.registryTLS = c; return nil }
}

// WithRegistryHostsDir reads per-registry config (hosts.toml, certs) from a
// containerd-style certs.d directory.
func WithRegistryHostsDir(dir string) Opt {
	return func(r *Runtime) error { r.hostsDir = dir; return nil }
}

// WithAllowHostNetwork lets calls use the host's network namespace.
func WithAllowHostNetwork(allow bool) Opt {
	return func(r *Runtime) error { r.policy.AllowHostNetwork = allow; return nil }
}

// WithAllowPrivileged lets calls run privileged.
func WithAllowPrivileged(allow bool) Opt {
	return func(r *Runtime) error { r.policy.AllowPrivileged = allow; return nil }
}

// WithOutputPollInterval sets how often running calls' output sizes are
// checked against their cap (default 200ms).
func WithOutputPollInterval(d time.Duration) Opt {
	return func(r *Runtime) error { r.pollInterval = d; return nil }
}

// WithCreateTimeout bounds one task create (default 30s). A create that
// takes longer is retried once with a new shim (see moveShim); a create
// that times out again fails the Run.
func WithCreateTimeout(d time.Duration) Opt {
	return func(r *Runtime) error { r.createTimeout = d; return nil }
}

// WithInit makes path (a static fnlet-init, see cmd/fnlet-init) PID 1 of
// every call: it records the program's exit code in the call's directory,
// where the runtime finds it when containerd lost the task (it discards
// exited tasks when it restarts). New copies it under the IO root, a path
// the OCI runtime on the host can bind-mount from.
func WithInit(path string) Opt {
	return func(r *Runtime) error { r.initSource = path; return nil }
}

// WithOwner labels the call leases this runtime makes (LabelLeaseOwner), so
// StrayLeases only reports its own: several managers may share one
// containerd namespace (tests do). The manager passes its node name.
func WithOwner(name string) Opt {
	return func(r *Runtime) error { r.owner = name; return nil }
}

// New connects to containerd at address. The connection is lazy: New
// succeeds while the daemon is down, and calls fail until it is up.
func New(address string, opts ...Opt) (*Runtime, error) {
	r := &Runtime{
		namespace:     "fnlet",
		runtime:       "runc",
		snapshot:      "overlayfs",
		ioRoot:        "/var/lib/fnlet/calls",
		outputLimit:   64 << 20,
		tailBytes:     4096,
		killGrace:     10 * time.Second,
		pollInterval:  200 * time.Millisecond,
		createTimeout: 30 * time.Second,
		calls:         map[string]*callHandle{},
		oom:           map[string]bool{},
		leased:        map[string]bool{},
	}
	for _, o := range opts {
		if err := o(r); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(r.ioRoot, 0o700); err != nil {
		return nil, fmt.Errorf("create IO root %s: %w", r.ioRoot, err)
	}
	if r.initSource != "" {
		bin, err := installInit(r.initSource, r.ioRoot)
		if err != nil {
			return nil, err
		}
		r.initBinary = bin
	}
	if r.refillCgroup != "" {
		if err := makeRefillCgroup(r.refillCgroup); err != nil {
			r.refillCgroup, r.refillErr = "", err
		}
	}
	c, err := client.New(address, client.WithDefaultNamespace(r.namespace))
	if err != nil {
		return nil, fmt.Errorf("connect containerd at %s: %w", address, err)
	}
	r.client = c
	r.bg, r.cancel = context.WithCancel(context.Background())
	if r.net != nil && r.net.poolSize > 0 {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.net.fill(r.bg)
		}()
	}
	return r, nil
}

// Close releases the connection. Running calls keep running: the shims own
// them, and a new Runtime recovers them.
func (r *Runtime) Close() error {
	r.cancel()
	r.mu.Lock()
	for _, h := range r.calls {
		h.mu.Lock()
		if h.killTimer != nil {
			h.killTimer.Stop()
		}
		h.mu.Unlock()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return r.client.Close()
}

// Ping checks containerd is serving.
func (r *Runtime) Ping(ctx context.Context) error {
	ok, err := r.client.IsServing(r.ctx(ctx))
	if err != nil {
		return wrapErr(err, "containerd health")
	}
	if !ok {
		return fmt.Errorf("containerd not serving")
	}
	return nil
}

// Version returns the daemon's version, for logs and benchmarks.
func (r *Runtime) Version(ctx context.Context) (string, error) {
	v, err := r.client.Version(r.ctx(ctx))
	if err != nil {
		return "", wrapErr(err, "containerd version")
	}
	return v.Version, nil
}

func (r *Runtime) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.namespace)
}

// ContainerID is the containerd container ID of a call.
func ContainerID(callUID string) string { return containerPrefix + callUID }
