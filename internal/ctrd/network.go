package ctrd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	gocni "github.com/containerd/go-cni"
	"github.com/containerd/log"
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
//
// Attaching costs a namespace and a CNI ADD (the bridge, IPAM and
// masquerade plugins, each an exec, iptables several): far more than the
// 30 ms a cold call may spend on its network. So, as Fn's prefork pool,
// poolSize namespaces are kept attached ahead under <dir>/pool-<hex>/ and
// a call takes one by renaming its directory to the container's (the bind
// mount moves with it); the CNI ID it was added under is kept in cni-id,
// which DEL needs. A refill goroutine owned by the Runtime replaces it.
type podNetwork struct {
	cni gocni.CNI
	dir string
	// resolvConf, if set, is bind-mounted read-only as the call's
	// /etc/resolv.conf.
	resolvConf string

	poolSize int
	mu       sync.Mutex
	ready    []string        // pool entries (dir names) ready to take
	own      map[string]bool // pool entries this process made and has not given out
	making   map[string]bool // pins wanted for containers not yet made (Recover leaves them)
	wake     chan struct{}   // a pool entry was taken
}

const (
	netnsFile = "netns"
	ipFile    = "ip"
	cniIDFile = "cni-id"
	poolEntry = "pool-"
)

// WithPodNetwork enables network: pod: CNI configuration from confDir (the
// first conflist, as the kubelet's runtime takes it), plugins from binDirs,
// namespaces pinned under nsDir, and resolvConf (optional) as the calls'
// /etc/resolv.conf. See WithPodNetworkPool for namespaces made ahead.
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
		poolSize := 0
		if r.net != nil {
			poolSize = r.net.poolSize
		}
		r.net = &podNetwork{cni: c, dir: nsDir, resolvConf: resolvConf, poolSize: poolSize,
			own: map[string]bool{}, making: map[string]bool{}, wake: make(chan struct{}, 1)}
		return nil
	}
}

// WithPodNetworkPool keeps n namespaces attached ahead for network: pod
// calls (after WithPodNetwork; 0, the default, makes each on demand).
func WithPodNetworkPool(n int) Opt {
	return func(r *Runtime) error {
		if r.net == nil {
			return errors.New("WithPodNetworkPool needs WithPodNetwork first")
		}
		r.net.poolSize = n
		return nil
	}
}

// fill keeps the pool at poolSize until ctx ends, then tears it down.
//
// A refill is background work that starts just as a call takes an entry,
// so it competes with that call's own start: its plugins (each an exec,
// the bridge's iptables several more) run at the lowest CPU priority.
// Nice is per thread on Linux and a child inherits its forking thread's:
// fill locks its goroutine to a thread, lowers that thread, and never
// unlocks it (the thread ends with the goroutine, so no other goroutine
// runs niced). attach is serial here for the same reason: go-cni's
// parallel setup would exec from other threads.
func (n *podNetwork) fill(ctx context.Context) {
	runtime.LockOSThread()
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19); err != nil {
		log.G(ctx).WithError(err).Warn("fnlet: pod network pool: lower the refill's CPU priority")
	}
	defer func() {
		n.mu.Lock()
		ready := n.ready
		n.ready = nil
		n.mu.Unlock()
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, e := range ready {
			_ = n.teardown(dctx, e)
		}
	}()
	for ctx.Err() == nil {
		n.mu.Lock()
		missing := n.poolSize - len(n.ready)
		n.mu.Unlock()
		if missing <= 0 {
			select {
			case <-ctx.Done():
				return
			case <-n.wake:
			}
			continue
		}
		var b [6]byte
		_, _ = rand.Read(b[:])
		e := poolEntry + hex.EncodeToString(b[:])
		n.mu.Lock()
		n.own[e] = true
		n.mu.Unlock()
		if err := n.want(e); err == nil {
			err = n.attach(ctx, e, n.cni.SetupSerially)
			n.made(e) // own protects it from now on
			if err == nil {
				n.mu.Lock()
				n.ready = append(n.ready, e)
				n.mu.Unlock()
				continue
			}
			log.G(ctx).WithError(err).Warn("fnlet: pod network pool: attach a namespace ahead")
			_ = n.teardown(context.WithoutCancel(ctx), e)
		}
		n.mu.Lock()
		delete(n.own, e)
		n.mu.Unlock()
		select { // a failing network is not retried in a hot loop
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// take moves a ready pool entry to container id's pin directory (which
// must be empty); false when the pool is empty.
func (n *podNetwork) take(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for len(n.ready) > 0 {
		e := n.ready[len(n.ready)-1]
		n.ready = n.ready[:len(n.ready)-1]
		delete(n.own, e)
		if err := os.Remove(filepath.Join(n.dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			n.ready = append(n.ready, e)
			return false
		}
		if err := os.Rename(filepath.Join(n.dir, e), filepath.Join(n.dir, id)); err != nil {
			_ = n.want(id)
			continue // that entry is lost to the pool; Recover's sweep removes it
		}
		select {
		case n.wake <- struct{}{}:
		default:
		}
		return true
	}
	return false
}

func (n *podNetwork) nsPath(id string) string { return filepath.Join(n.dir, id, netnsFile) }

// want records that container id is to have a pod network (before the
// container is made, so that a crash right after leaves a pin to find).
func (n *podNetwork) want(id string) error {
	n.mu.Lock()
	n.making[id] = true
	n.mu.Unlock()
	return os.MkdirAll(filepath.Join(n.dir, id), 0o700)
}

// made ends want's protection of id from Recover: its container exists
// now, or its creation failed (then its Delete tears the pin down).
func (n *podNetwork) made(id string) {
	n.mu.Lock()
	delete(n.making, id)
	n.mu.Unlock()
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
	if n.poolSize > 0 && n.take(id) {
		return nil
	}
	return n.attach(ctx, id, n.cni.Setup)
}

// setupFunc is go-cni's Setup or SetupSerially.
type setupFunc func(ctx context.Context, id, path string, opts ...gocni.NamespaceOpts) (*gocni.Result, error)

// attach makes id's namespace and adds it to the network under CNI ID id
// with setup.
func (n *podNetwork) attach(ctx context.Context, id string, setup setupFunc) error {
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
	res, err := setup(ctx, id, path)
	if err != nil {
		return fmt.Errorf("CNI ADD %s: %w", id, err)
	}
	ip := ""
	if c := res.Interfaces["eth0"]; c != nil && len(c.IPConfigs) > 0 {
		ip = c.IPConfigs[0].IP.String()
	}
	if err := os.WriteFile(filepath.Join(n.dir, id, cniIDFile), []byte(id), 0o600); err != nil {
		return err
	}
	// Written last: with it, the namespace is ready.
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
		// Added under its own name, or, taken from the pool, the entry's.
		cniID := id
		if b, err := os.ReadFile(filepath.Join(d, cniIDFile)); err == nil && len(b) > 0 {
			cniID = string(b)
		}
		nsArg := path
		if !isNetNS(path) {
			// A pin cut short (a crash between creating the file and the
			// mount, or after the unmount): no namespace to clean up in, but
			// IPAM may still hold an address for the ID.
			nsArg = ""
		}
		if err := n.cni.Remove(ctx, cniID, nsArg); err != nil {
			return fmt.Errorf("CNI DEL %s: %w", cniID, err)
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
	r.net.mu.Lock()
	keep := maps.Clone(r.net.own)
	maps.Copy(keep, r.net.making)
	r.net.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if !exists[id] && !keep[id] { // pool entries of an earlier process go too
			errs = append(errs, r.teardownNetwork(ctx, id))
		}
	}
	return errors.Join(errs...)
}

// isNetNS says whether path is a network namespace (a pin's bind mount),
// not the empty file under it.
func isNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}
