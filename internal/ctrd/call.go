package ctrd

import "time"

// Call is what the runtime needs to run one function call. It is built by
// the controller from a FunctionCall; nothing here is a containerd type.
type Call struct {
	// UID identifies the call; the container ID is derived from it, which
	// makes Run idempotent across retries and manager restarts.
	UID       string
	Namespace string
	Name      string

	Image string
	// Command replaces the image entrypoint, Args the image cmd
	// (Kubernetes semantics).
	Command []string
	Args    []string
	// Env entries are KEY=VALUE; they override the image's env.
	Env        []string
	WorkingDir string
	// User overrides the image's user when set.
	User *User
	// Input is fed to stdin, which is closed after it.
	Input []byte

	MemoryBytes    int64 // hard limit, swap = memory; 0 = none
	MilliCPU       int64 // CFS quota; 0 = none
	Pids           int64 // 0 = none
	ReadOnlyRootfs bool
	HostNetwork    bool
	// PodNetwork gives the call a network namespace of its own on the
	// node's pod network (WithPodNetwork); not with HostNetwork.
	PodNetwork bool
	Privileged bool
	// OutputLimit caps stdout+stderr bytes; 0 uses the runtime default.
	OutputLimit int64
	// Volumes are mounted in order after ScratchBytes (see volume.go).
	// Their files may hold a Secret's data: never log them.
	Volumes []Volume
	// ScratchBytes > 0 mounts a writable tmpfs of that size at /tmp.
	ScratchBytes int64
	// Pools are the pools (WarmSpec.Pool) whose pre-started containers
	// RunWarm may give the call; none: any pool.
	Pools []string
}

// User is a numeric uid/gid pair. Names are resolved by the image config
// only when numeric (see spec.go for why).
type User struct {
	UID int64
	GID int64
}

// CallRef names a call in events.
type CallRef struct {
	UID       string
	Namespace string
	Name      string
}

// Phase is where a call's container is in its life.
type Phase string

const (
	// PhaseUnknown means the runtime has no container for the call.
	PhaseUnknown Phase = "Unknown"
	// PhaseCreated means the container exists but its task never started.
	PhaseCreated Phase = "Created"
	PhaseRunning Phase = "Running"
	PhaseExited  Phase = "Exited"
)

// State is the runtime's view of one call. Result is set once it exited.
type State struct {
	Call        CallRef
	ContainerID string
	Phase       Phase
	StartedAt   time.Time
	// LogDir holds the call's stdout and stderr files.
	LogDir string
	// Pool is the pool whose pre-started container runs the call; empty for
	// a container of its own.
	Pool string
	// IP is the call's address on the pod network (PodNetwork), once set up.
	IP     string
	Result *Result
}

// Result is the outcome of an exited call.
type Result struct {
	ExitCode int32
	// Signal is set when the process died from a signal (exit code 128+n).
	Signal string
	// OOMKilled is true only when the kernel's OOM killer acted (TaskOOM or
	// the cgroup's oom_kill counter); a bare exit 137 is a kill, not an OOM.
	OOMKilled bool
	// OutputLimitExceeded is true when the runtime killed the call because
	// its output passed the cap.
	OutputLimitExceeded bool
	// InputIncomplete is true when the runtime killed the call on recovery
	// because its FIFO input was not confirmed complete (StdinFIFO only).
	InputIncomplete bool
	// ExitStatusLost is true when the task of a started call is gone
	// although nobody deleted it: containerd, restarted after the process
	// ended, reaped its shim as a leak and the exit status with it, and
	// fnlet-init recorded none (docs/runtime.md, "Lost exit status").
	// ExitCode means nothing then; the output tails are still read from disk.
	ExitStatusLost bool
	StartedAt      time.Time
	FinishedAt     time.Time
	Usage          Usage
	Stdout         Tail
	Stderr         Tail
}

// Usage is what the call consumed, from the task's cgroup metrics.
type Usage struct {
	PeakMemoryBytes int64
	CPU             time.Duration
}

// Tail is the end of an output stream.
type Tail struct {
	Data []byte
	// Size is the whole stream's size on disk.
	Size int64
	// Truncated is true when Data is not the whole stream.
	Truncated bool
}

// EventKind says what a runtime event is about.
type EventKind string

const (
	// EventExit: the call's task exited; read State for the truth.
	EventExit EventKind = "Exit"
	// EventOOM: the kernel OOM-killed a process of the call (de-duplicated).
	EventOOM EventKind = "OOM"
	// EventOutputLimit: the call passed its output cap and is being killed.
	EventOutputLimit EventKind = "OutputLimit"
)

// Event is a hint that a call changed. Events can be late or lost across a
// containerd restart; after each reconnect the runtime re-lists its
// containers and sends EventExit for every exited one, so handlers must be
// idempotent and read State for the truth.
type Event struct {
	Kind EventKind
	Call CallRef
}
