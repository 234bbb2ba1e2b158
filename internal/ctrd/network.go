package ctrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	gocni "github.com/containerd/go-cni"
	"golang.org/x/sys/unix"
)

// A call with network: pod gets a network namespace of its own, attached
// to the node's pod network through CNI (the node's conflist, the standard
// plugins), as a Pod's sandbox is. The namespace is pinned by a bind mount
// at a path derived from the container ID,
//
//	<dir>/<container ID>/netns   the pinned namespace (runc joins it)
//	<dir>/<container ID>/ip      the call's address, once CNI ADD succeeded
//
// so that:
//   - the container's spec can name it before it exists (created with the
//     task, in startTask, so a resumed create makes it too);
//   - the teardown can run after the call's processes are gone: CNI DEL
//     needs the namespace to remove the veth and the masquerade rules, not
//     only the address (the bridge plugin skips those without one);
//   - it survives the manager: the next one tears down what this one set
//     up, in Delete, or at Recover for a pin whose container is gone.
//
// Every ending of a call goes through deleteContainer, which calls
// teardown: no address, veth, iptables chain or namespace outlives it.
type podNetwork struct {
	cni gocni.CNI
	dir string
	// resolvConf, if set, is bind-mounted read-only as the call's
	// /etc/resolv.conf.
	resolvConf string
}

const (
	netnsFile = "netns"
	ipFile    = "ip"
)

// WithPodNetwork enables network: pod: CNI configuration from confDir (the
// first conflist, as the kubelet's runtime takes it), plugins from binDirs,
// namespaces pinned under nsDir, and resolvConf (optional) as the calls'
// /etc/resolv.conf.
func WithPodNetwork(confDir string, binDirs []string, nsDir, resolvConf string) Opt {
	return func(r *Runtime) error {
		c, err := gocni.New(gocni.WithPluginConfDir(confDir), gocni.WithPluginDir(binDirs),
			gocni.WithMinNetworkCount(2), gocni.WithInterfacePrefix("eth"))
		if err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		if err := c.Load(gocni.WithLoNetwork, gocni.WithDefaultConf); err != nil {
			return fmt.Errorf("pod network: load CNI configuration from %s: %w", confDir, err)
		}
		if resolvConf != "" {
			if _, err := os.Stat(resolvConf); err != nil {
				return fmt.Errorf("pod network: resolv.conf for calls: %w", err)
			}
		}
		if err := os.MkdirAll(nsDir, 0o700); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		r.net = &podNetwork{cni: c, dir: nsDir, resolvConf: resolvConf}
		return nil
	}
}

func (n *podNetwork) nsPath(id string) string { return filepath.Join(n.dir, id, netnsFile) }

// want records that container id is to have a pod network (before the
// container is made, so that a crash right after leaves a pin to find).
func (n *podNetwork) want(id string) error {
	return os.MkdirAll(filepath.Join(n.dir, id), 0o700)
}

func (n *podNetwork) wanted(id string) bool {
	_, err := os.Stat(filepath.Join(n.dir, id))
	return err == nil
}

// ensure makes container id's namespace and attaches it, unless that was
// done: it is called before every task create of the container.
func (n *podNetwork) ensure(ctx context.Context, id string) error {
	if _, err := os.Stat(filepath.Join(n.dir, id, ipFile)); err == nil {
		return nil
	}
	path := n.nsPath(id)
	if _, err := os.Stat(path); err == nil {
		// A setup cut short: undo what it did before doing it again.
		if err := n.teardown(ctx, id); err != nil {
			return err
		}
		if err := n.want(id); err != nil {
			return err
		}
	}
	if err := pinNetNS(path); err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	res, err := n.cni.Setup(ctx, id, path)
	if err != nil {
		return fmt.Errorf("CNI ADD %s: %w", id, err)
	}
	ip := ""
	if c := res.Interfaces["eth0"]; c != nil && len(c.IPConfigs) > 0 {
		ip = c.IPConfigs[0].IP.String()
	}
	return os.WriteFile(filepath.Join(n.dir, id, ipFile), []byte(ip), 0o600)
}

// ip is container id's address on the pod network ("" if none yet).
func (n *podNetwork) ip(id string) string {
	b, err := os.ReadFile(filepath.Join(n.dir, id, ipFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// teardown detaches container id from the pod network and removes its
// namespace: CNI DEL (idempotent by the CNI spec), unmount, remove. A
// container without a pod network is not an error.
func (n *podNetwork) teardown(ctx context.Context, id string) error {
	d := filepath.Join(n.dir, id)
	if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	path := n.nsPath(id)
	if _, err := os.Stat(path); err == nil {
		if err := n.cni.Remove(ctx, id, path); err != nil {
			return fmt.Errorf("CNI DEL %s: %w", id, err)
		}
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return os.RemoveAll(d)
}

// pinned lists the container IDs that have a pin directory.
func (n *podNetwork) pinned() ([]string, error) {
	es, err := os.ReadDir(n.dir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range es {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// pinNetNS makes a new network namespace and bind-mounts it at path. It
// runs on a thread of its own that is thrown away afterwards: a thread
// that was moved into another namespace must never run other goroutines.
func pinNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// ipOf is container id's pod network address, "" without one.
func (r *Runtime) ipOf(id string) string {
	if r.net == nil {
		return ""
	}
	return r.net.ip(id)
}

// teardownNetwork detaches container id from the pod network, if it has one.
func (r *Runtime) teardownNetwork(ctx context.Context, id string) error {
	if r.net == nil {
		return nil
	}
	if err := r.net.teardown(ctx, id); err != nil {
		return fmt.Errorf("delete %s: pod network: %w", id, err)
	}
	return nil
}

// sweepNetworks tears down the pins of containers that no longer exist
// (a manager that died between removing a container and its network).
func (r *Runtime) sweepNetworks(ctx context.Context, exists map[string]bool) error {
	if r.net == nil {
		return nil
	}
	ids, err := r.net.pinned()
	if err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	var errs []error
	for _, id := range ids {
		if !exists[id] {
			errs = append(errs, r.teardownNetwork(ctx, id))
		}
	}
	return errors.Join(errs...)
}
