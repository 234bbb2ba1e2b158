package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/source"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// PoolRuntime is the runtime's side of pools: pre-started containers.
type PoolRuntime interface {
	EnsureImage(ctx context.Context, ref string, policy ctrd.PullPolicy, auth ctrd.RegistryAuth) (ctrd.ImageInfo, error)
	Prestart(ctx context.Context, spec ctrd.WarmSpec) (string, error)
	WarmContainers(ctx context.Context) ([]ctrd.WarmContainer, error)
	DeleteWarm(ctx context.Context, id string) error
}

var _ PoolRuntime = (*ctrd.Runtime)(nil)

// FunctionPoolReconciler keeps this node's share of each FunctionPool: the
// pool's size in ready pre-started containers of its image's current
// digest, within the node's memory budget. Calls take them
// (FunctionCallReconciler.start, through the runtime's RunWarm); this
// reconciler is woken by each take (Pools.taken) and starts the
// replacement, one at a time, at most RefillPerSecond.
//
// It never writes a call, and writes the pool's status only for its own
// node's entry (server-side apply, one field manager per node), at most
// every StatusInterval.
type FunctionPoolReconciler struct {
	Client     client.Client
	Recorder   events.EventRecorder
	Runtime    PoolRuntime
	Clock      clock.PassiveClock
	NodeName   string
	NodeLabels labels.Set
	Capacity   Capacity
	Limits     Limits
	// Calls reads this node's active calls' memory, for the budget.
	Calls *FunctionCallReconciler
	Pools *Pools

	// RefillPerSecond bounds how many containers the node starts per
	// second for all pools (default 5); StatusInterval bounds the status
	// writes per pool (default 5s); Resync re-reads each pool's image
	// (default 30s).
	RefillPerSecond float64
	StatusInterval  time.Duration
	Resync          time.Duration
	Metrics         *Metrics

	mu        sync.Mutex
	nextStart time.Time                  // refill pacing
	written   map[string]poolStatusWrite // by pool key
	warned    map[string]string          // by pool key: the last warning sent
}

type poolStatusWrite struct {
	entry fnletv1.PoolNodeStatus
	at    time.Time
}

// Pools is what the call and pool reconcilers share: hits and misses per
// pool, the memory the ready containers hold, and the channel that wakes
// the pool reconciler when a call took a container.
type Pools struct {
	mu       sync.Mutex
	hits     map[string]int64
	misses   map[string]int64
	reserved map[string]int64 // bytes held by ready containers, by pool key
	wake     chan event.GenericEvent
}

// NewPools returns an empty Pools.
func NewPools() *Pools {
	return &Pools{hits: map[string]int64{}, misses: map[string]int64{}, reserved: map[string]int64{},
		wake: make(chan event.GenericEvent, 256)}
}

// poolKey is a pool's name in the runtime: pools are per namespace.
func poolKey(namespace, name string) string { return namespace + "/" + name }

func splitPoolKey(k string) types.NamespacedName {
	ns, name, _ := strings.Cut(k, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}

// taken records a call run in a container of pool key and wakes the pool.
func (p *Pools) taken(key string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.hits[key]++
	p.mu.Unlock()
	p.poke(key)
}

// missed records a call that named pool key and ran cold.
func (p *Pools) missed(key string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.misses[key]++
	p.mu.Unlock()
	p.poke(key)
}

func (p *Pools) poke(key string) {
	nn := splitPoolKey(key)
	select {
	case p.wake <- event.GenericEvent{Object: &fnletv1.FunctionPool{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name}}}:
	default: // a pass is due anyway (Resync)
	}
}

func (p *Pools) counts(key string) (hits, misses int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits[key], p.misses[key]
}

func (p *Pools) setReserved(key string, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bytes == 0 {
		delete(p.reserved, key)
	} else {
		p.reserved[key] = bytes
	}
}

// reservedExcept is the memory held by the ready containers of every pool
// but key.
func (p *Pools) reservedExcept(key string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for k, b := range p.reserved {
		if k != key {
			n += b
		}
	}
	return n
}

// +kubebuilder:rbac:groups=fnlet.dev,resources=functionpools,verbs=get;list;watch
// +kubebuilder:rbac:groups=fnlet.dev,resources=functionpools/status,verbs=get;patch

// SetupWithManager wires the pool reconciler: pools from the manager's
// cache, and the wake-ups of Pools.
func (r *FunctionPoolReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&fnletv1.FunctionPool{}).
		Named("functionpool").
		WatchesRawSource(source.Channel(r.Pools.wake, &handler.EnqueueRequestForObject{})).
		Complete(r)
}

func (r *FunctionPoolReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := poolKey(req.Namespace, req.Name)
	var pool fnletv1.FunctionPool
	err := r.Client.Get(ctx, req.NamespacedName, &pool)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if apierrors.IsNotFound(err) || pool.DeletionTimestamp != nil ||
		!labels.SelectorFromSet(pool.Spec.NodeSelector).Matches(r.NodeLabels) {
		// Not this node's (any more): nothing of it stays here.
		_, err := r.drain(ctx, key, func(ctrd.WarmContainer) bool { return true })
		r.Pools.setReserved(key, 0)
		return ctrl.Result{}, err
	}
	spec := r.warmSpec(&pool)
	entry := fnletv1.PoolNodeStatus{Node: r.NodeName}
	entry.Hits, entry.Misses = r.Pools.counts(key)
	policy := ctrd.PullPolicy(pool.Spec.ImagePullPolicy)
	if policy == "" {
		policy = ctrd.PullIfNotPresent
	}
	info, err := r.Runtime.EnsureImage(ctx, pool.Spec.Image, policy, nil)
	if err != nil {
		// The containers of the previous digest stay: they still serve calls
		// of the image they run.
		entry.Message = fmt.Sprintf("pull %s: %v", pool.Spec.Image, err)
		r.warn(&pool, key, "PoolImagePullFailed", entry.Message)
		ready, _ := r.drain(ctx, key, func(w ctrd.WarmContainer) bool { return !w.Ready })
		entry.Ready = int32(ready)
		return r.writeStatus(ctx, &pool, key, entry, r.resync())
	}
	r.warn(&pool, key, "", "")
	entry.Digest = info.Digest
	// Spoiled containers and those of an older digest go.
	ready, err := r.drain(ctx, key, func(w ctrd.WarmContainer) bool { return !w.Ready || w.Digest != info.Digest })
	if err != nil {
		return ctrl.Result{}, err
	}
	target, why, err := r.target(ctx, &pool, key, spec)
	if err != nil {
		return ctrl.Result{}, err
	}
	entry.Target, entry.Message = int32(target), why
	if ready > target {
		excess := ready - target
		left, err := r.drain(ctx, key, func(ctrd.WarmContainer) bool {
			if excess > 0 {
				excess--
				return true
			}
			return false
		})
		if err != nil {
			return ctrl.Result{}, err
		}
		ready = left
	}
	after := r.resync()
	if ready < target {
		if wait := r.refillWait(); wait > 0 {
			after = wait
		} else {
			start := r.Clock.Now()
			if _, err := r.Runtime.Prestart(ctx, spec); err != nil {
				entry.Message = fmt.Sprintf("start a container: %v", err)
				r.warn(&pool, key, "PoolStartFailed", entry.Message)
				after = 5 * time.Second
			} else {
				ready++
				r.Metrics.observePrestart(r.Clock.Since(start))
				after = time.Millisecond // the next one, paced by refillWait
			}
		}
	}
	entry.Ready = int32(ready)
	r.Pools.setReserved(key, int64(ready)*r.memoryEach(spec))
	if ready == target {
		after = r.resync()
	}
	return r.writeStatus(ctx, &pool, key, entry, after)
}

// warmSpec is the runtime profile of a pool.
func (r *FunctionPoolReconciler) warmSpec(pool *fnletv1.FunctionPool) ctrd.WarmSpec {
	w := ctrd.WarmSpec{Pool: poolKey(pool.Namespace, pool.Name), Image: pool.Spec.Image,
		HostNetwork: pool.Spec.Network == fnletv1.NetworkHost, PodNetwork: pool.Spec.Network == fnletv1.NetworkPod}
	if res := pool.Spec.Resources; res != nil {
		if res.Memory != nil {
			w.MemoryBytes = res.Memory.Value()
		}
		if res.CPU != nil {
			w.MilliCPU = res.CPU.MilliValue()
		}
		if res.Pids != nil {
			w.Pids = *res.Pids
		}
	}
	if sc := pool.Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil || sc.RunAsGroup != nil {
			u := &ctrd.User{}
			if sc.RunAsUser != nil {
				u.UID = *sc.RunAsUser
				u.GID = *sc.RunAsUser
			}
			if sc.RunAsGroup != nil {
				u.GID = *sc.RunAsGroup
			}
			w.User = u
		}
		w.ReadOnlyRootfs = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	}
	return w
}

// memoryEach is what one ready container of spec counts against the
// node's budget: its class, or the default a call gets.
func (r *FunctionPoolReconciler) memoryEach(spec ctrd.WarmSpec) int64 {
	if spec.MemoryBytes > 0 {
		return spec.MemoryBytes
	}
	return r.Limits.DefaultMemoryBytes
}

// target is how many ready containers the node keeps for pool: its size,
// fewer when the memory budget, after the running calls and the other
// pools, has no room for all (then why says so).
func (r *FunctionPoolReconciler) target(ctx context.Context, pool *fnletv1.FunctionPool, key string, spec ctrd.WarmSpec) (int, string, error) {
	size := int(pool.Spec.Size)
	each := r.memoryEach(spec)
	if r.Capacity.MemoryBudgetBytes <= 0 || each <= 0 || size == 0 {
		return size, "", nil
	}
	_, used, err := r.Calls.active(ctx)
	if err != nil {
		return 0, "", err
	}
	free := r.Capacity.MemoryBudgetBytes - used - r.Pools.reservedExcept(key)
	fit := int(max(free/each, 0))
	if fit < size {
		return fit, fmt.Sprintf("the node's memory budget has room for %d of %d (running calls hold %d bytes)", fit, size, used), nil
	}
	return size, "", nil
}

// refillWait paces container starts over all pools: it returns 0 and
// books a start when one may go now, else how long to wait.
func (r *FunctionPoolReconciler) refillWait() time.Duration {
	rate := r.RefillPerSecond
	if rate <= 0 {
		rate = 5
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.Clock.Now()
	if wait := r.nextStart.Sub(now); wait > 0 {
		return wait
	}
	r.nextStart = now.Add(time.Duration(float64(time.Second) / rate))
	return 0
}

func (r *FunctionPoolReconciler) resync() time.Duration {
	if r.Resync > 0 {
		return r.Resync
	}
	return 30 * time.Second
}

// drain deletes the unclaimed containers of pool key that gone selects,
// and returns how many ready ones are left.
func (r *FunctionPoolReconciler) drain(ctx context.Context, key string, gone func(ctrd.WarmContainer) bool) (int, error) {
	ws, err := r.Runtime.WarmContainers(ctx)
	if err != nil {
		return 0, err
	}
	var errs []error
	left := 0
	for _, w := range ws {
		if w.Pool != key {
			continue
		}
		if !gone(w) {
			if w.Ready {
				left++
			}
			continue
		}
		if err := r.Runtime.DeleteWarm(ctx, w.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return left, errors.Join(errs...)
}

// writeStatus applies this node's entry of the pool's status when it
// changed, at most every StatusInterval; a change held back is written by
// the pass requeued for it.
func (r *FunctionPoolReconciler) writeStatus(ctx context.Context, pool *fnletv1.FunctionPool, key string, entry fnletv1.PoolNodeStatus, after time.Duration) (ctrl.Result, error) {
	interval := r.StatusInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	now := r.Clock.Now()
	r.mu.Lock()
	if r.written == nil {
		r.written = map[string]poolStatusWrite{}
	}
	last, ok := r.written[key]
	r.mu.Unlock()
	if ok && last.entry == entry && r.hasEntry(pool, entry) {
		return ctrl.Result{RequeueAfter: after}, nil
	}
	if ok && now.Sub(last.at) < interval {
		return ctrl.Result{RequeueAfter: min(after, interval-now.Sub(last.at))}, nil
	}
	t := metav1.NewTime(now)
	applied := entry
	applied.UpdatedAt = &t
	patch := &fnletv1.FunctionPool{
		TypeMeta:   metav1.TypeMeta{APIVersion: fnletv1.GroupVersion.String(), Kind: "FunctionPool"},
		ObjectMeta: metav1.ObjectMeta{Namespace: pool.Namespace, Name: pool.Name},
		Status:     fnletv1.FunctionPoolStatus{Nodes: []fnletv1.PoolNodeStatus{applied}},
	}
	//nolint:staticcheck // SA1019: a typed apply of one list entry; the apply configurations are not generated for this API.
	if err := r.Client.Status().Patch(ctx, patch, client.Apply, client.FieldOwner("fnlet-node-"+r.NodeName), client.ForceOwnership); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("write status of pool %s: %w", key, err)
	}
	r.mu.Lock()
	r.written[key] = poolStatusWrite{entry: entry, at: now}
	r.mu.Unlock()
	return ctrl.Result{RequeueAfter: after}, nil
}

// hasEntry reports whether the cached pool shows entry (a pool re-created
// under the same name starts without one).
func (r *FunctionPoolReconciler) hasEntry(pool *fnletv1.FunctionPool, entry fnletv1.PoolNodeStatus) bool {
	for _, e := range pool.Status.Nodes {
		if e.Node == entry.Node {
			e.UpdatedAt = nil
			return e == entry
		}
	}
	return false
}

// warn sends a Warning Event for pool once per distinct message; an empty
// message clears the memory, so the trouble coming back warns again.
func (r *FunctionPoolReconciler) warn(pool *fnletv1.FunctionPool, key, reason, msg string) {
	r.mu.Lock()
	if r.warned == nil {
		r.warned = map[string]string{}
	}
	same := r.warned[key] == msg
	r.warned[key] = msg
	r.mu.Unlock()
	if same || msg == "" || r.Recorder == nil {
		return
	}
	logf.Log.WithName("pool").Info(msg, "pool", key, "node", r.NodeName)
	r.Recorder.Eventf(pool, nil, corev1.EventTypeWarning, reason, "Prestart", "node %s: %s", r.NodeName, msg)
}
