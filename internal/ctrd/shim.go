package ctrd

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/containerd/containerd/v2/client"
)

// shimGroupAnnotation makes the runc shim derive its socket from this value
// instead of the container ID (containerd's runc shim manager reads it from
// the bundle's config.json at "shim start").
const shimGroupAnnotation = "io.containerd.runc.v2.group"

// CreateTimeouts counts task creates that got no answer within the create
// timeout, for metrics.
func (r *Runtime) CreateTimeouts() int64 { return r.createTimeouts.Load() }

// moveShim puts the container in a shim group of its own for its next task:
// the next create starts a new shim on a new socket instead of connecting
// to whatever holds the old one (docs/runtime.md, "Stuck shims").
func (r *Runtime) moveShim(ctx context.Context, h *callHandle) (string, error) {
	spec, err := h.container.Spec(ctx)
	if err != nil {
		return "", wrapErr(err, "read spec of %s", h.id)
	}
	group := fmt.Sprintf("%s-%08x", h.id, rand.Uint32())
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[shimGroupAnnotation] = group
	if err := h.container.Update(ctx, client.UpdateContainerOpts(client.WithSpec(spec))); err != nil {
		return "", wrapErr(err, "move %s to shim group %s", h.id, group)
	}
	return group, nil
}
