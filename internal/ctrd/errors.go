package ctrd

import (
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"
)

// wrapErr adds context to err, first converting a raw gRPC status (which
// some client calls, like an in-flight Wait on a dying daemon, return
// unconverted) into containerd's native error classes so errdefs.IsNotFound
// and friends work. Nil stays nil.
func wrapErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), native(err))
}

func native(err error) error {
	if _, ok := status.FromError(err); ok {
		return errgrpc.ToNative(err)
	}
	return err
}

// IsUnavailable reports whether containerd could not be reached.
func IsUnavailable(err error) bool { return errdefs.IsUnavailable(native(err)) }

// IsNotFound reports a missing container, task or image.
func IsNotFound(err error) bool { return errdefs.IsNotFound(err) }
