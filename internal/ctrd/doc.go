// Package ctrd runs fnlet calls as containerd containers.
//
// It is a small runtime layer over the containerd v2 Go client, shaped like
// the client itself: a Runtime with a handful of verbs (EnsureImage, Run,
// State, Kill, Delete, Recover, Watch), functional options, explicit
// contexts and errdefs classes on every error. Callers speak in calls
// (identified by the FunctionCall UID); containerd types do not leak out.
//
// IO design: the shim, not this process, owns the call's IO. Stdout and
// stderr are pre-created regular files the shim appends to; stdin is a
// regular file written completely before the task is created. A manager
// crash therefore loses no output, and a program never blocks on a pipe
// nobody reads. See io.go.
package ctrd
