package controllers

import (
	"context"
	"time"

	"github.com/fnlet/fnlet/internal/ctrd"
)

// Runtime is the narrow view of the node's container runtime the
// reconciler needs. *ctrd.Runtime implements it; unit tests use a fake.
// It speaks in calls (by FunctionCall UID), never in containerd objects.
type Runtime interface {
	EnsureImage(ctx context.Context, ref string, policy ctrd.PullPolicy, auth ctrd.RegistryAuth) (ctrd.ImageInfo, error)
	Run(ctx context.Context, call ctrd.Call) (ctrd.State, error)
	State(ctx context.Context, callUID string) (ctrd.State, error)
	Stop(ctx context.Context, callUID string, grace time.Duration) error
	Delete(ctx context.Context, callUID string) error
}

var _ Runtime = (*ctrd.Runtime)(nil)
