// Package ctrd runs fnlet calls as containerd containers.
//
// It is a small runtime layer over the containerd v2 Go client, shaped like
// the client itself: a Runtime with a handful of verbs, functional options
// (Opt) and explicit contexts. Callers speak in calls, identified by the
// FunctionCall UID:
//
//   - EnsureImage makes a call's image present (pull policy, registry auth);
//   - Run starts a call, or continues the one an earlier Run started;
//   - State and Wait report it, with its Result once it exited;
//   - Signal and Stop (SIGTERM, then SIGKILL after a grace) end it early;
//   - Delete removes its container, keeping its output files;
//   - Watch delivers exit, OOM and output-limit events, and polls the cap;
//   - Recover (once at startup) and List (any time) report every call
//     container; PruneLogs applies the log retention.
//
// No containerd type is part of the exported API. Errors keep containerd's
// error classes inside (errdefs), so the predicates IsNotFound,
// IsUnavailable and IsInvalidArgument answer for any error a verb returns;
// callers need not import containerd. BuildSpec returns the OCI runtime
// spec and takes the OCI image config: both are OCI specification types
// (github.com/opencontainers), not containerd's.
//
// The files are named by concern; docs/runtime.md maps them and tells the
// incidents behind the invariants stated in comments here.
//
// IO design: the shim, not this process, owns the call's IO. Stdout and
// stderr are pre-created regular files the shim appends to; stdin is a
// regular file written completely before the task is created. A manager
// crash therefore loses no output, and a program never blocks on a pipe
// nobody reads. See io.go and calldir.go.
package ctrd
