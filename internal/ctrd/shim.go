package ctrd

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/log"
)

// shimGroupAnnotation makes the runc shim derive its socket from this value
// instead of the container ID (containerd's runc shim manager reads it from
// the bundle's config.json at "shim start").
const shimGroupAnnotation = "io.containerd.runc.v2.group"

// A stuck shim. containerd runs "shim start" under the context of the
// client's NewTask request. When the client dies (a manager SIGKILL) between
// that command spawning the shim daemon and the daemon opening its log FIFO,
// containerd kills the command and closes the FIFO's reader; the daemon then
// blocks for ever opening the FIFO, before it ever serves, while holding the
// shim socket of the container ID. Every later NewTask for that ID connects to
// that socket and waits for an answer that never comes.
//
// newTask bounds each create (createTimeout); when one times out, moveShim
// gives the container a socket of its own (a new group) so the next create
// starts a fresh shim, and reapStuckShim removes the stuck daemon if this
// process can see it.

// CreateTimeouts counts task creates that got no answer within the create
// timeout, for metrics.
func (r *Runtime) CreateTimeouts() int64 { return r.createTimeouts.Load() }

// moveShim puts the container in a shim group of its own for its next task.
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

// reapStuckShim kills the shim daemons of container id (in the runtime's
// namespace) that are blocked opening their log FIFO, the state described
// above: such a daemon never served a request, so it owns no container and
// no process. It returns how many it killed. Processes of the host are only
// visible when the manager shares the host's PID namespace; elsewhere it
// finds none.
func (r *Runtime) reapStuckShim(id string) int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || !isShimDaemon(pid, r.namespace, id) || !stuckOpeningLog(pid) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			log.L.WithField("id", id).WithField("pid", pid).Warn("fnlet: killed a shim that never started serving (left by a create cut short)")
			n++
		}
	}
	return n
}

// isShimDaemon reports whether pid is the long-running shim of container id
// in namespace ns: a containerd-shim command line with those flags and no
// action ("start" and "delete" are short-lived helpers).
func isShimDaemon(pid int, ns, id string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return false
	}
	var gotNS, gotID bool
	for i := 1; i < len(args); i++ {
		switch args[i] {
		case "-namespace":
			gotNS = i+1 < len(args) && args[i+1] == ns
			i++
		case "-id":
			gotID = i+1 < len(args) && args[i+1] == id
			i++
		case "-address", "-publish-binary", "-bundle":
			i++
		case "start", "delete":
			return false
		}
	}
	return gotNS && gotID
}

// stuckOpeningLog reports whether the shim pid has not set up its log (its
// stderr is still /dev/null while it holds the log FIFO's path) and one of
// its threads waits in the kernel for the FIFO's other end.
func stuckOpeningLog(pid int) bool {
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/2", pid)); err != nil || l != os.DevNull {
		return false
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	holdsLog := false
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && (strings.HasSuffix(l, "/log") || strings.HasSuffix(l, "/log (deleted)")) {
			holdsLog = true
			break
		}
	}
	if !holdsLog {
		return false
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, t := range tasks {
		if w, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, t.Name())); err == nil && string(w) == "wait_for_partner" {
			return true
		}
	}
	return false
}
