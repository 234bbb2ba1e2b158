package ctrd

import (
	"errors"
	"fmt"
	"strings"

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

// connClosing is gRPC's error for a call on a connection being closed, as
// Watch's Reconnect does after containerd restarted: the call failed for
// the same reason as any call to a daemon that is away (Unavailable), not
// because it was cancelled.
const connClosing = "grpc: the client connection is closing"

func native(err error) error {
	if err != nil && strings.Contains(err.Error(), connClosing) {
		return errdefs.ErrUnavailable.WithMessage(err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return errgrpc.ToNative(err)
	}
	return err
}

// IsUnavailable reports whether containerd could not be reached.
func IsUnavailable(err error) bool { return errdefs.IsUnavailable(native(err)) }

// IsNotFound reports a missing container, task or image.
func IsNotFound(err error) bool { return errdefs.IsNotFound(err) }

// IsInvalidArgument reports a call the runtime refuses to run as given (a
// policy gate, a bad command or user, an invalid image reference): retrying
// it cannot help.
func IsInvalidArgument(err error) bool { return errdefs.IsInvalidArgument(err) }

// ErrStaleBundle: containerd kept the task directory of an earlier,
// interrupted create of the container and its own cleanup failed for good
// (docs/runtime.md, "Stale bundles"); no task of that container ID can be
// made until containerd restarts and cleans its state. The call fails with
// this reason instead of waiting.
var ErrStaleBundle = errors.New("containerd still holds the task directory of an earlier, interrupted create of this container; it removes it when it restarts")
