package ctrd

import (
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

// wrapErr converts a gRPC status into containerd's native error classes (so
// errdefs.IsNotFound etc. work, also for "Unavailable ... EOF" from a dying
// daemon) and adds context. Nil stays nil.
func wrapErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errgrpc.ToNative(err))
}

// IsUnavailable reports whether containerd could not be reached.
func IsUnavailable(err error) bool {
	return errdefs.IsUnavailable(err) || errdefs.IsUnavailable(errgrpc.ToNative(errors.Unwrap(err)))
}

// IsNotFound reports a missing container, task or image.
func IsNotFound(err error) bool { return errdefs.IsNotFound(err) }
