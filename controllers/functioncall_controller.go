package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// Finalizer keeps a FunctionCall until its node removed the container.
const Finalizer = "fnlet.dev/container"

// Capacity bounds what one node runs at once.
type Capacity struct {
	MaxCalls          int
	MemoryBudgetBytes int64 // 0 = unlimited
}

// FunctionCallReconciler runs the FunctionCalls bound to one node.
//
// The state machine, top to bottom: claim an unassigned call (status write
// with the object's resourceVersion: exactly one node wins), make sure the
// image is there, start the container, and when the runtime reports the
// exit, write the result and only then remove the container. Phases only
// move forward. Exits arrive from the runtime's event stream (see
// RuntimeEvents); requeues are only for deadlines and retries.
type FunctionCallReconciler struct {
	// Client reads calls from the cache of this node's calls.
	Client client.Client
	// Unassigned reads the cache of calls no node has claimed yet.
	Unassigned client.Reader
	// APIReader reads Secrets/ConfigMaps directly (never cached).
	APIReader client.Reader
	Recorder  events.EventRecorder
	Runtime   Runtime
	Clock     clock.PassiveClock

	// ManagerUser is the manager's own user name (from a SelfSubjectReview),
	// named in the RoleBinding a call's namespace is asked to create when
	// the manager may not read its Secrets or ConfigMaps. May be empty.
	ManagerUser string

	NodeName   string
	NodeLabels labels.Set
	Capacity   Capacity
	Limits     Limits

	// Nodes lists the fnlet nodes from their Leases; nil: this node alone.
	Nodes NodeLister
	// ClaimStagger: the node ranked k-th for a call (rendezvous order of
	// the live nodes that fit it) waits k×ClaimStagger, at most
	// maxStaggerRanks×, before it claims the call. 0: DefaultClaimStagger;
	// negative: no ranking, every fitting node claims at once (the old
	// protocol, kept for the scale harness's comparison).
	ClaimStagger time.Duration
	// Dispatchers: with more live nodes than this, offers shard the watch
	// of unassigned calls (see OfferLabel); 0: every node watches and
	// ranks every unassigned call.
	Dispatchers int

	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	KillGrace      time.Duration

	Metrics *Metrics
	// Pools, when set, lets calls run in pre-started containers (see
	// FunctionPoolReconciler); nil runs every call cold.
	Pools *Pools

	// RunningWriteDelay is how long a started call may run before its
	// Running status is written: a call that exits sooner goes straight to
	// its final status, one write instead of two. 0 means
	// DefaultRunningWriteDelay; negative writes Running at once.
	RunningWriteDelay time.Duration

	calls  tracker
	writes writeLatency
	spread spread
}

// DefaultRunningWriteDelay: most function calls are short; a call that runs
// longer shows Running this much later than it started (status.startedAt
// is still the real start).
const DefaultRunningWriteDelay = 200 * time.Millisecond

func (r *FunctionCallReconciler) runningWriteDelay() time.Duration {
	if r.RunningWriteDelay == 0 {
		return DefaultRunningWriteDelay
	}
	return max(r.RunningWriteDelay, 0)
}

// +kubebuilder:rbac:groups=fnlet.dev,resources=functioncalls,verbs=get;list;watch;patch;delete
// +kubebuilder:rbac:groups=fnlet.dev,resources=functioncalls/status,verbs=update
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile reads top to bottom: fetch the freshest view of the call, skip
// other nodes' calls, handle deletion, claim an unassigned call, clean up
// after a finished one, and otherwise drive it forward.
func (r *FunctionCallReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	fc, err := r.get(ctx, req.NamespacedName)
	if err != nil || fc == nil {
		return ctrl.Result{}, err
	}
	ctx = logf.IntoContext(ctx, logf.FromContext(ctx).WithValues("uid", fc.UID))

	switch {
	case fc.Status.NodeName != "" && fc.Status.NodeName != r.NodeName:
		return ctrl.Result{}, nil // another node's call
	case !fc.DeletionTimestamp.IsZero():
		return ctrl.Result{}, r.finalize(ctx, fc)
	case fc.Status.NodeName == "":
		claimed, res, err := r.claim(ctx, fc)
		if !claimed || err != nil {
			return res, err
		}
	}
	if fc.IsFinished() {
		return r.cleanUp(ctx, fc)
	}
	return r.drive(ctx, fc)
}

// get finds the call in this node's cache, then among the unassigned, and
// prefers our own latest write where the cache has not caught up with it.
func (r *FunctionCallReconciler) get(ctx context.Context, key types.NamespacedName) (*fnletv1.FunctionCall, error) {
	var fc fnletv1.FunctionCall
	err := r.Client.Get(ctx, key, &fc)
	if apierrors.IsNotFound(err) && r.Unassigned != nil {
		err = r.Unassigned.Get(ctx, key, &fc)
	}
	if apierrors.IsNotFound(err) {
		return r.calls.resolve(key, nil), nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return r.calls.resolve(key, &fc), nil
}

// ---- claim ----

// DefaultClaimStagger, maxStaggerRanks and maxClaimDelay: see claimDelay.
const (
	DefaultClaimStagger = 200 * time.Millisecond
	maxStaggerRanks     = 4
	maxClaimDelay       = 30 * time.Second
)

// claimDelay is how long the node ranked rank waits before claiming: one
// stagger per rank up to maxStaggerRanks, then doubling up to
// maxClaimDelay. With the first-ranked node up and not full a call costs
// one claim write; a full or dead first node delays it by one stagger. The
// doubling keeps the tail from claiming all at once when claim writes are
// slow (measured with make scale: with a flat cap, every node past the cap
// raced once writes took longer than the cap, and claims became O(N)).
func claimDelay(rank int, stagger time.Duration) time.Duration {
	if rank <= maxStaggerRanks {
		return time.Duration(rank) * stagger
	}
	return min(time.Duration(maxStaggerRanks)*stagger<<min(rank-maxStaggerRanks, 16), maxClaimDelay)
}

// claim binds an unassigned call to this node if it is this node's turn,
// the call may run here and the node has room, or offers it to the node
// whose turn it is (see offerTurn). The status write carries the
// resourceVersion we read, so of several nodes racing, exactly one
// succeeds; the others get a conflict and drop the call. A node whose turn
// came after a wait reads the call afresh first: the node before it most
// likely acted, and its cache may not show that yet (a read is much
// cheaper than a write that ends in a conflict).
func (r *FunctionCallReconciler) claim(ctx context.Context, fc *fnletv1.FunctionCall) (bool, ctrl.Result, error) {
	t, err := r.claimTurn(ctx, fc)
	if err != nil || !t.claim && t.offerTo == "" {
		return false, ctrl.Result{RequeueAfter: t.wait}, err
	}
	if t.fresh {
		var cur fnletv1.FunctionCall
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(fc), &cur); err != nil {
			return false, ctrl.Result{}, client.IgnoreNotFound(err)
		}
		if cur.UID != fc.UID || cur.Status.NodeName != "" || cur.Labels[OfferLabel] != fc.Labels[OfferLabel] {
			return false, ctrl.Result{}, nil // taken or offered; the cache will show it
		}
		*fc = cur
	}
	if t.offerTo != "" {
		return false, ctrl.Result{}, r.offer(ctx, fc, t.offerTo)
	}
	if ok, err := r.hasRoom(ctx, fc); err != nil || !ok {
		if err == nil && t.passTo != "" {
			return false, ctrl.Result{}, r.offer(ctx, fc, t.passTo) // a full node never holds a call up
		}
		// A slot frees when a call finishes; poll gently until then.
		return false, ctrl.Result{RequeueAfter: 500 * time.Millisecond}, err
	}
	if _, ok := fc.Labels[fnletv1.LabelFinished]; ok {
		// A new call with a finished one's label (its YAML applied again):
		// this node's cache, which leaves such calls out, would lose it
		// once claimed.
		if err := r.patchMeta(ctx, fc, func() { delete(fc.Labels, fnletv1.LabelFinished) }); err != nil {
			return false, ctrl.Result{}, client.IgnoreNotFound(fmt.Errorf("remove stale %s label: %w", fnletv1.LabelFinished, err))
		}
	}
	now := metav1.NewTime(r.Clock.Now())
	fc.Status.NodeName = r.NodeName
	fc.Status.Phase = fnletv1.PhasePending
	fc.Status.ClaimedAt = &now
	fc.Status.ContainerID = ctrd.ContainerID(string(fc.UID))
	fc.Status.LogDir = ""
	fc.Status.PodIP = ""
	fc.Status.ObservedGeneration = fc.Generation
	setCondition(fc, fnletv1.ConditionClaimed, metav1.ConditionTrue, "Claimed", "claimed by node "+r.NodeName)
	start := time.Now()
	err = r.updateStatus(ctx, fc)
	r.writes.observe(time.Since(start))
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return false, ctrl.Result{}, nil // another node won, or it is gone
		}
		return false, ctrl.Result{}, fmt.Errorf("claim: %w", err)
	}
	r.Metrics.observeClaim(fc)
	// No Normal Event: status.nodeName and the Claimed condition say it.
	if w := commandWarning(fc); w != "" {
		r.event(fc, corev1.EventTypeWarning, "SuspiciousCommand", "Validate", "%s", w)
	}
	return true, ctrl.Result{}, nil
}

// offer labels the call for node (see OfferLabel), guarded by the
// resourceVersion read: of two nodes offering at once, one wins.
func (r *FunctionCallReconciler) offer(ctx context.Context, fc *fnletv1.FunctionCall, node string) error {
	before := fc.ResourceVersion
	patch := client.MergeFromWithOptions(fc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if fc.Labels == nil {
		fc.Labels = map[string]string{}
	}
	if fc.Annotations == nil {
		fc.Annotations = map[string]string{}
	}
	fc.Labels[OfferLabel] = node
	fc.Annotations[annOfferedAt] = r.Clock.Now().UTC().Format(time.RFC3339Nano)
	start := time.Now()
	err := r.Client.Patch(ctx, fc, patch)
	r.writes.observe(time.Since(start))
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // another node acted first, or it is gone
		}
		return fmt.Errorf("offer to node %s: %w", node, err)
	}
	r.calls.wrote(before, fc)
	return nil
}

// claimTurn places the call among the live nodes (see place) and says
// what this node does about it (see turn). Without offers (Dispatchers 0,
// or no more live nodes than dispatchers) every node sees every call: the
// first in rank claims at once, the k-th after a wait. With offers, see
// offerTurn. When no live node fits the call, one node (the reporter) says
// so on the call.
func (r *FunctionCallReconciler) claimTurn(ctx context.Context, fc *fnletv1.FunctionCall) (turn, error) {
	var nodes []Node
	if r.Nodes != nil {
		// Bounded: a Lease informer that cannot sync (say, RBAC missing in
		// the Lease namespace) must fail the reconcile, not hang it.
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		nodes, err = r.Nodes.Nodes(lctx)
		cancel()
		if err != nil {
			return turn{}, err
		}
	}
	now := r.Clock.Now()
	self := Node{Name: r.NodeName, Labels: r.NodeLabels, MaxMemoryBytes: r.Limits.MaxMemoryBytes, MaxMilliCPU: r.Limits.MaxMilliCPU, Networks: r.Limits.Networks}
	p := place(fc, self, nodes, now, r.Limits)
	offers := r.Dispatchers > 0 && len(p.live) > r.Dispatchers && r.ClaimStagger >= 0
	if offers {
		p.reporter = dispatchOrder(fc, p.live, r.Dispatchers)[0] == r.NodeName // only they see every call
	}
	stagger := r.ClaimStagger
	if stagger <= 0 {
		stagger = DefaultClaimStagger
	}
	// Give the node before us twice our own write time at least.
	stagger = r.writes.atLeast(stagger, 2)
	switch {
	case p.unschedulable != "":
		if !p.reporter {
			return turn{}, nil
		}
		// Re-checked now and then: the message counts the live nodes.
		return turn{wait: unschedulableRecheck}, r.reportUnschedulable(ctx, fc, p.unschedulable)
	case offers:
		if fc.Labels[OfferLabel] == "" {
			p.order = r.spread.choose(p.order, now)
		}
		since := func() time.Time { return r.calls.waitingSince(fc, now) }
		t := offerTurn(fc, r.NodeName, p, r.Dispatchers, now, since, stagger, r.writes.atLeast(offerTimeout, 10))
		switch {
		case t.offerTo != "":
			r.spread.gave(t.offerTo, now)
		case t.claim && fc.Labels[OfferLabel] == "":
			r.spread.gave(r.NodeName, now)
		}
		return t, nil
	case p.rank < 0:
		return turn{}, nil // another node's to take
	case p.rank == 0, r.ClaimStagger < 0:
		return turn{claim: true}, nil
	}
	due := r.calls.waitingSince(fc, now).Add(claimDelay(p.rank, stagger))
	if due.After(now) {
		return turn{wait: due.Sub(now)}, nil
	}
	return turn{claim: true, fresh: true}, nil
}

// unschedulableRecheck is how often the reporter re-checks a call no node fits.
const unschedulableRecheck = 10 * time.Second

// reportUnschedulable records, once per distinct reason, that no live node
// can take the call: condition Claimed=False/Unschedulable and a Warning
// Event. The call stays Pending and is claimed when a fitting node appears.
func (r *FunctionCallReconciler) reportUnschedulable(ctx context.Context, fc *fnletv1.FunctionCall, msg string) error {
	if c := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionClaimed); c != nil &&
		c.Reason == fnletv1.ReasonUnschedulable && c.Message == msg {
		return nil
	}
	fc.Status.Phase = fnletv1.PhasePending
	fc.Status.ObservedGeneration = fc.Generation
	setCondition(fc, fnletv1.ConditionClaimed, metav1.ConditionFalse, fnletv1.ReasonUnschedulable, msg)
	if err := r.updateStatus(ctx, fc); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // changed meanwhile: its event reconciles it again
		}
		return fmt.Errorf("record unschedulable: %w", err)
	}
	r.event(fc, corev1.EventTypeWarning, fnletv1.ReasonUnschedulable, "Place", "%s", msg)
	return nil
}

// hasRoom checks the node's capacity against the calls it already runs.
// Ready pre-started containers do not count: a call that needs their room
// is claimed, and the pools shrink to the budget on their next pass.
func (r *FunctionCallReconciler) hasRoom(ctx context.Context, fc *fnletv1.FunctionCall) (bool, error) {
	active, mem, err := r.active(ctx)
	if err != nil {
		return false, err
	}
	r.Metrics.setRunning(active)
	if r.Capacity.MaxCalls > 0 && active >= r.Capacity.MaxCalls {
		return false, nil
	}
	if r.Capacity.MemoryBudgetBytes > 0 && mem+r.memoryOf(fc) > r.Capacity.MemoryBudgetBytes {
		return false, nil
	}
	return true, nil
}

// active counts this node's unfinished calls and the memory they hold.
func (r *FunctionCallReconciler) active(ctx context.Context) (int, int64, error) {
	var list fnletv1.FunctionCallList
	// Only the active calls (an index, see ActiveNodeIndex), read-only: with
	// thousands of finished calls cached, listing and copying them all
	// dominated claim time.
	if err := r.Client.List(ctx, &list, client.MatchingFields{ActiveNodeIndex: r.NodeName}, client.UnsafeDisableDeepCopy); err != nil {
		return 0, 0, fmt.Errorf("list calls: %w", err)
	}
	active, mem := 0, int64(0)
	for i := range list.Items {
		c := &list.Items[i]
		if c.Status.NodeName != r.NodeName || c.IsFinished() {
			continue
		}
		active++
		mem += r.memoryOf(c)
	}
	return active, mem, nil
}

func (r *FunctionCallReconciler) memoryOf(fc *fnletv1.FunctionCall) int64 {
	if res := fc.Spec.Resources; res != nil && res.Memory != nil {
		return res.Memory.Value()
	}
	return r.Limits.DefaultMemoryBytes
}

// ---- run ----

// drive moves a claimed, unfinished call forward from what the runtime
// reports — the runtime is the truth, the status may lag behind it.
func (r *FunctionCallReconciler) drive(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	// An attempt this process started and has not written as Running yet:
	// the runtime knows how it is doing, no second start.
	pending, _ := r.calls.pendingStart(fc)
	if pending > 0 {
		fc.Status.Attempts = max(fc.Status.Attempts, pending)
	}
	retrying := meta.IsStatusConditionTrue(fc.Status.Conditions, conditionRetrying)
	if fc.Status.Phase != fnletv1.PhaseRunning && !retrying && pending == 0 {
		// The cold path: nothing started yet as far as the status knows. Run
		// is idempotent and resumes a container an earlier attempt left, so
		// no State round trip first.
		return r.start(ctx, fc)
	}
	if err := r.ensureFinalizer(ctx, fc); err != nil {
		return ctrl.Result{}, err
	}
	st, err := r.Runtime.State(ctx, string(fc.UID))
	if err != nil {
		return r.runtimeFailure(ctx, fc, fmt.Errorf("read state: %w", err))
	}
	switch st.Phase {
	case ctrd.PhaseExited:
		if pending > 0 {
			// It exited before its Running write was due: the final status
			// carries the start too.
			r.applyStarted(fc, st)
		}
		return r.finish(ctx, fc, st)
	case ctrd.PhaseRunning:
		return r.running(ctx, fc, st)
	case ctrd.PhaseCreated:
		// The container exists and the program never ran: a create or a
		// start cut short by a kill (internal/ctrd, neverRan). Run resumes
		// it, still exactly once.
		return r.start(ctx, fc)
	}
	// No container.
	if !retrying || pending > 0 {
		return r.runtimeFailure(ctx, fc, errors.New("the container disappeared while the call was running"))
	}
	if c := meta.FindStatusCondition(fc.Status.Conditions, conditionRetrying); c != nil {
		// Our own status write wakes us at once: wait out the backoff.
		if left := c.LastTransitionTime.Add(retryBackoff(fc.Status.Attempts)).Sub(r.Clock.Now()); left > 0 {
			return ctrl.Result{RequeueAfter: left}, nil
		}
	}
	return r.start(ctx, fc)
}

// start makes sure the image is there and starts an attempt.
func (r *FunctionCallReconciler) start(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	if fc.Spec.Cancel {
		return r.fail(ctx, fc, fnletv1.ReasonCancelled, "cancelled before it started")
	}
	call, auth, err := inputResolver{reader: r.APIReader, managerUser: r.ManagerUser}.buildCall(ctx, fc, r.Limits)
	if errors.Is(err, errInvalidSpec) {
		return r.fail(ctx, fc, fnletv1.ReasonInvalidSpec, err.Error())
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	policy := ctrd.PullPolicy(fc.Spec.ImagePullPolicy)
	if policy == "" {
		policy = ctrd.PullIfNotPresent
	}
	fc.Status.Attempts++ // persisted with Running, or with the failure
	pullStart := r.Clock.Now()
	info, err := r.Runtime.EnsureImage(ctx, call.Image, policy, auth)
	var ie *ctrd.ImageError
	if errors.As(err, &ie) {
		fc.Status.PullError = fnletv1.PullError(ie.Class)
		return r.fail(ctx, fc, fnletv1.ReasonImagePullFailed, fmt.Sprintf("pull %s: %v", fc.Spec.Image, ie.Err))
	}
	if err != nil {
		return r.runtimeFailure(ctx, fc, fmt.Errorf("pull %s: %w", fc.Spec.Image, err))
	}
	if info.Pulled {
		r.Metrics.observePull(r.Clock.Since(pullStart))
		r.event(fc, corev1.EventTypeNormal, "Pulled", "Pull", "Pulled %s (%s) in %s", info.Ref, info.Digest, r.Clock.Since(pullStart).Round(time.Millisecond))
	}
	// The finalizer goes on before there is a container to clean up, not
	// earlier: a call that fails before it runs needs none.
	if err := r.ensureFinalizer(ctx, fc); err != nil {
		return ctrl.Result{}, err
	}
	st, err := r.run(ctx, fc, call)
	if err != nil {
		if isInvalidArgument(err) {
			return r.fail(ctx, fc, fnletv1.ReasonInvalidSpec, err.Error())
		}
		return r.runtimeFailure(ctx, fc, fmt.Errorf("start: %w", err))
	}
	if st.Phase == ctrd.PhaseExited {
		// An earlier attempt's container, which exited meanwhile (a manager
		// restarted before its Running write): the final status carries
		// the start too — container, log dir, and the pool that ran it.
		r.applyStarted(fc, st)
		return r.finish(ctx, fc, st)
	}
	if r.runningWriteDelay() > 0 {
		// Most calls exit within the delay: their exit event finds this
		// pending start and writes the final status directly.
		r.calls.started(fc, fc.Status.Attempts, r.Clock.Now())
	}
	return r.running(ctx, fc, st)
}

// WarmRunner is the runtime's warm start (ctrd.Runtime.RunWarm): the call
// in a pre-started container of a pool it fits, or a miss and why.
type WarmRunner interface {
	RunWarm(ctx context.Context, call ctrd.Call) (ctrd.State, string, error)
}

// run starts the call in a pre-started container of a pool of its
// namespace it fits (spec.pool, or any), else in a container of its own.
// A miss is counted, never fatal.
func (r *FunctionCallReconciler) run(ctx context.Context, fc *fnletv1.FunctionCall, call ctrd.Call) (ctrd.State, error) {
	warm, ok := r.Runtime.(WarmRunner)
	if !ok || r.Pools == nil {
		return r.Runtime.Run(ctx, call)
	}
	if fc.Spec.Pool != "" {
		call.Pools = []string{poolKey(fc.Namespace, fc.Spec.Pool)}
	} else {
		var pools fnletv1.FunctionPoolList
		if err := r.Client.List(ctx, &pools, client.InNamespace(fc.Namespace), client.UnsafeDisableDeepCopy); err != nil {
			return ctrd.State{}, fmt.Errorf("list pools: %w", err)
		}
		for i := range pools.Items {
			call.Pools = append(call.Pools, poolKey(fc.Namespace, pools.Items[i].Name))
		}
	}
	if len(call.Pools) == 0 {
		return r.Runtime.Run(ctx, call)
	}
	st, miss, err := warm.RunWarm(ctx, call)
	if err != nil {
		return st, err
	}
	if miss == "" {
		if st.Pool != "" {
			r.Pools.taken(st.Pool)
			r.Metrics.observeWarm("")
		}
		return st, nil
	}
	r.Metrics.observeWarm(miss)
	if fc.Spec.Pool != "" {
		r.Pools.missed(call.Pools[0])
	}
	return r.Runtime.Run(ctx, call)
}

// running handles a call whose container runs: its Running write once it
// is due, then the deadline.
func (r *FunctionCallReconciler) running(ctx context.Context, fc *fnletv1.FunctionCall, st ctrd.State) (ctrl.Result, error) {
	if fc.Status.Phase != fnletv1.PhaseRunning {
		wait := r.runningWriteWait(fc)
		if wait > 0 && !fc.Spec.Cancel && r.Clock.Now().Before(r.deadline(fc)) {
			return ctrl.Result{RequeueAfter: min(wait, r.deadline(fc).Sub(r.Clock.Now()))}, nil
		}
		if wait == 0 {
			if err := r.markRunning(ctx, fc, st); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	return r.enforceDeadline(ctx, fc)
}

// runningWriteWait is how much longer the Running write of a start this
// process made may wait (0: write it now). A call started by an earlier
// process, or whose status write was lost, has none pending: write now.
func (r *FunctionCallReconciler) runningWriteWait(fc *fnletv1.FunctionCall) time.Duration {
	n, at := r.calls.pendingStart(fc)
	if n == 0 {
		return 0
	}
	return max(at.Add(r.runningWriteDelay()).Sub(r.Clock.Now()), 0)
}

func (r *FunctionCallReconciler) markRunning(ctx context.Context, fc *fnletv1.FunctionCall, st ctrd.State) error {
	fc.Status.Phase = fnletv1.PhaseRunning
	r.applyStarted(fc, st)
	if err := r.updateStatus(ctx, fc); err != nil {
		return fmt.Errorf("record start: %w", err)
	}
	r.calls.clearStart(fc)
	r.Metrics.observeStart(fc)
	// No Normal Event: the Started condition and status.startedAt say it.
	return nil
}

// applyStarted sets what a started container tells about the call (the
// Running write, or the final one of a call that exited before it).
func (r *FunctionCallReconciler) applyStarted(fc *fnletv1.FunctionCall, st ctrd.State) {
	started := metav1.NewTime(r.Clock.Now())
	if !st.StartedAt.IsZero() {
		started = metav1.NewTime(st.StartedAt)
	}
	fc.Status.StartedAt = &started
	fc.Status.ContainerID = st.ContainerID
	fc.Status.LogDir = st.LogDir
	fc.Status.PodIP = st.IP
	fc.Status.Pool = ""
	if st.Pool != "" {
		fc.Status.Pool = splitPoolKey(st.Pool).Name
	}
	fc.Status.Attempts = max(fc.Status.Attempts, 1)
	meta.RemoveStatusCondition(&fc.Status.Conditions, conditionRetrying)
	setCondition(fc, fnletv1.ConditionImageReady, metav1.ConditionTrue, "ImagePresent", "image "+fc.Spec.Image+" is on the node")
	setCondition(fc, fnletv1.ConditionStarted, metav1.ConditionTrue, "Started", "container "+st.ContainerID+" started")
}

// enforceDeadline stops a running call that is cancelled or past its
// timeout, and otherwise asks to be woken at the deadline.
func (r *FunctionCallReconciler) enforceDeadline(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	uid := string(fc.UID)
	if fc.Spec.Cancel {
		if err := r.Runtime.Stop(ctx, uid, r.KillGrace); err != nil && !ctrd.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("stop cancelled call: %w", err)
		}
		r.event(fc, corev1.EventTypeNormal, "Stopping", "Cancel", "Cancel requested: SIGTERM, SIGKILL after %s", r.KillGrace)
		return ctrl.Result{RequeueAfter: r.KillGrace + time.Second}, nil
	}
	left := r.deadline(fc).Sub(r.Clock.Now())
	if left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	if err := r.Runtime.Stop(ctx, uid, r.KillGrace); err != nil && !ctrd.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("stop timed-out call: %w", err)
	}
	r.event(fc, corev1.EventTypeWarning, "Stopping", "Timeout", "Timeout of %s reached: SIGTERM, SIGKILL after %s", r.timeout(fc), r.KillGrace)
	return ctrl.Result{RequeueAfter: r.KillGrace + time.Second}, nil
}

func (r *FunctionCallReconciler) timeout(fc *fnletv1.FunctionCall) time.Duration {
	t := r.DefaultTimeout
	if fc.Spec.Timeout != nil {
		t = fc.Spec.Timeout.Duration
	}
	if r.MaxTimeout > 0 && t > r.MaxTimeout {
		t = r.MaxTimeout
	}
	return t
}

// deadline counts from the claim (activeDeadline semantics).
func (r *FunctionCallReconciler) deadline(fc *fnletv1.FunctionCall) time.Time {
	from := r.Clock.Now()
	if fc.Status.ClaimedAt != nil {
		from = fc.Status.ClaimedAt.Time
	}
	return from.Add(r.timeout(fc))
}

// runtimeFailure retries failures that are not the user's fault, up to
// spec.retries attempts beyond the first, with exponential backoff; then
// fails with RuntimeError. A containerd outage is waited out until the
// call's deadline: the call may well be alive in its shim.
func (r *FunctionCallReconciler) runtimeFailure(ctx context.Context, fc *fnletv1.FunctionCall, cause error) (ctrl.Result, error) {
	if ctrd.IsUnavailable(cause) {
		if r.Clock.Now().Before(r.deadline(fc)) {
			r.event(fc, corev1.EventTypeWarning, "RuntimeUnavailable", "Wait", "containerd unavailable: %v", cause)
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		// No retry: the call's time is up, another attempt would only start
		// a process past its deadline.
		return r.fail(ctx, fc, fnletv1.ReasonRuntimeError,
			fmt.Sprintf("containerd was unavailable until the call's timeout (%s) passed: %v", r.timeout(fc), cause))
	}
	retries := int32(0)
	if fc.Spec.Retries != nil {
		retries = *fc.Spec.Retries
	}
	if fc.Status.Attempts > retries {
		return r.fail(ctx, fc, fnletv1.ReasonRuntimeError, cause.Error())
	}
	if err := r.Runtime.Delete(ctx, string(fc.UID)); err != nil {
		return ctrl.Result{}, fmt.Errorf("clean before retry: %w", err)
	}
	backoff := retryBackoff(fc.Status.Attempts)
	// The condition's transition time is when this attempt failed: the
	// backoff counts from it.
	meta.RemoveStatusCondition(&fc.Status.Conditions, conditionRetrying)
	meta.SetStatusCondition(&fc.Status.Conditions, metav1.Condition{Type: conditionRetrying, Status: metav1.ConditionTrue,
		Reason: string(fnletv1.ReasonRuntimeError), Message: cause.Error(), ObservedGeneration: fc.Generation,
		LastTransitionTime: metav1.NewTime(r.Clock.Now())})
	if err := r.updateStatus(ctx, fc); err != nil {
		return ctrl.Result{}, fmt.Errorf("record retry: %w", err)
	}
	r.calls.clearStart(fc)
	r.event(fc, corev1.EventTypeWarning, "Retrying", "Retry", "attempt %d failed (%v); retrying in %s", fc.Status.Attempts, cause, backoff)
	return ctrl.Result{RequeueAfter: backoff}, nil
}

// conditionRetrying is True between a failed attempt and the next start.
const conditionRetrying = "Retrying"

// retryBackoff is the wait after the given number of failed attempts.
func retryBackoff(attempts int32) time.Duration {
	return time.Duration(1<<min(attempts, 6)) * time.Second
}

// ---- end ----
//
// Every call ends through end: final status → remove the container →
// release (finalizer off, finished label on) → TTL. The status comes
// first: if the manager dies after it, the next reconcile sees a finished
// call and runs the rest (cleanUp). finish and fail only say how it ended.

// finish ends a call whose container exited, from its result.
func (r *FunctionCallReconciler) finish(ctx context.Context, fc *fnletv1.FunctionCall, st ctrd.State) (ctrl.Result, error) {
	res := st.Result
	phase, reason, msg := outcome(fc, res, r.deadline(fc))
	applyResult(fc, res)
	if fc.Status.StartedAt == nil && !res.StartedAt.IsZero() {
		t := metav1.NewTime(res.StartedAt)
		fc.Status.StartedAt = &t
	}
	return r.end(ctx, fc, phase, reason, msg)
}

// outcome maps a runtime result to phase, reason and message. What fnlet
// did to the call (output cap, cancel, timeout) explains a kill better than
// the signal itself; OOM only counts when the kernel says so.
func outcome(fc *fnletv1.FunctionCall, res *ctrd.Result, deadline time.Time) (fnletv1.CallPhase, fnletv1.CallReason, string) {
	switch {
	case res.ExitStatusLost:
		return fnletv1.PhaseFailed, fnletv1.ReasonRuntimeError, "exit status lost: the process ended while containerd was down, and containerd discarded the task when it restarted; stdout/stderr are what it wrote"
	case res.OutputLimitExceeded:
		return fnletv1.PhaseFailed, fnletv1.ReasonOutputLimitExceeded, "killed: stdout+stderr exceeded the node's output limit"
	case res.InputIncomplete:
		return fnletv1.PhaseFailed, fnletv1.ReasonRuntimeError, "killed: the manager restarted before the input was completely delivered"
	case fc.Spec.Cancel && res.ExitCode != 0:
		return fnletv1.PhaseFailed, fnletv1.ReasonCancelled, "stopped because spec.cancel was set"
	case !res.FinishedAt.Before(deadline) && res.ExitCode != 0:
		return fnletv1.PhaseFailed, fnletv1.ReasonTimedOut, "stopped at its timeout"
	case res.OOMKilled:
		return fnletv1.PhaseFailed, fnletv1.ReasonOOMKilled, "the kernel killed the process: it exceeded its memory limit"
	case res.ExitCode == 0:
		return fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, "exited with code 0"
	case res.Signal != "":
		return fnletv1.PhaseFailed, fnletv1.ReasonError, fmt.Sprintf("killed by %s (exit code %d)", res.Signal, res.ExitCode)
	}
	return fnletv1.PhaseFailed, fnletv1.ReasonError, fmt.Sprintf("exited with code %d", res.ExitCode)
}

func applyResult(fc *fnletv1.FunctionCall, res *ctrd.Result) {
	code := res.ExitCode
	fc.Status.ExitCode = &code
	if res.ExitStatusLost {
		fc.Status.ExitCode = nil
	}
	fc.Status.Signal = res.Signal
	fc.Status.Stdout = strings.ToValidUTF8(string(res.Stdout.Data), "\uFFFD")
	fc.Status.StdoutTruncated = res.Stdout.Truncated
	fc.Status.Stderr = strings.ToValidUTF8(string(res.Stderr.Data), "\uFFFD")
	fc.Status.StderrTruncated = res.Stderr.Truncated
	fc.Status.Usage = &fnletv1.Usage{PeakMemoryBytes: res.Usage.PeakMemoryBytes, CPUNanoseconds: res.Usage.CPU.Nanoseconds()}
	if !res.FinishedAt.IsZero() {
		t := metav1.NewTime(res.FinishedAt)
		fc.Status.FinishedAt = &t
	}
}

// fail ends a call that produced no result.
func (r *FunctionCallReconciler) fail(ctx context.Context, fc *fnletv1.FunctionCall, reason fnletv1.CallReason, msg string) (ctrl.Result, error) {
	return r.end(ctx, fc, fnletv1.PhaseFailed, reason, msg)
}

// end writes the final status, then does what is left (cleanUp).
func (r *FunctionCallReconciler) end(ctx context.Context, fc *fnletv1.FunctionCall, phase fnletv1.CallPhase, reason fnletv1.CallReason, msg string) (ctrl.Result, error) {
	fc.Status.Phase, fc.Status.Reason, fc.Status.Message = phase, reason, msg
	if fc.Status.FinishedAt == nil {
		t := metav1.NewTime(r.Clock.Now())
		fc.Status.FinishedAt = &t
	}
	fc.Status.ObservedGeneration = fc.Generation
	meta.RemoveStatusCondition(&fc.Status.Conditions, conditionRetrying)
	setCondition(fc, fnletv1.ConditionFinished, metav1.ConditionTrue, string(reason), msg)
	if err := r.updateStatus(ctx, fc); err != nil {
		return ctrl.Result{}, fmt.Errorf("record %s: %w", phase, err)
	}
	if n, _ := r.calls.pendingStart(fc); n > 0 {
		r.Metrics.observeStart(fc) // its start went out with this write
		r.calls.clearStart(fc)
	}
	r.Metrics.observeFinish(fc)
	// A success is in the status; every failure is also a Warning Event.
	if phase != fnletv1.PhaseSucceeded {
		r.event(fc, corev1.EventTypeWarning, string(reason), "Finish", "%s", msg)
	}
	return r.cleanUp(ctx, fc)
}

// cleanUp finishes the work on a finished call: remove its container
// (unless this process did already), release it, then apply
// ttlSecondsAfterFinished. Each step is idempotent, so a crash anywhere
// only means it runs again.
func (r *FunctionCallReconciler) cleanUp(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	if !r.calls.removed(fc) {
		if err := r.Runtime.Delete(ctx, string(fc.UID)); err != nil {
			return ctrl.Result{}, fmt.Errorf("remove container of finished call: %w", err)
		}
		r.calls.markRemoved(fc)
	}
	if err := r.release(ctx, fc); err != nil {
		return ctrl.Result{}, err
	}
	if fc.Spec.TTLSecondsAfterFinished == nil || fc.Status.FinishedAt == nil {
		return ctrl.Result{}, nil
	}
	expiry := fc.Status.FinishedAt.Add(time.Duration(*fc.Spec.TTLSecondsAfterFinished) * time.Second)
	if left := expiry.Sub(r.Clock.Now()); left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	err := r.Client.Delete(ctx, fc, client.Preconditions{UID: &fc.UID})
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("delete after TTL: %w", err)
	}
	return ctrl.Result{}, nil
}

// finalize handles deletion, at any phase: kill and remove the container,
// then let go of the call.
func (r *FunctionCallReconciler) finalize(ctx context.Context, fc *fnletv1.FunctionCall) error {
	if !controllerutil.ContainsFinalizer(fc, Finalizer) {
		return nil
	}
	if err := r.Runtime.Delete(ctx, string(fc.UID)); err != nil {
		return fmt.Errorf("remove container of deleted call: %w", err)
	}
	if !fc.IsFinished() {
		r.event(fc, corev1.EventTypeNormal, "Deleted", "Delete", "Call deleted while %s: container killed and removed", fc.Status.Phase)
	}
	r.calls.clearStart(fc)
	return r.release(ctx, fc)
}

// release lets go of a call whose container is gone, in one patch: it
// drops the finalizer and, once nothing is left for this process to do
// with a finished call (no TTL to enforce), sets fnletv1.LabelFinished,
// which takes the call out of this node's cache: memory does not grow with
// the number of finished calls kept.
func (r *FunctionCallReconciler) release(ctx context.Context, fc *fnletv1.FunctionCall) error {
	mark := fc.IsFinished() && fc.Spec.TTLSecondsAfterFinished == nil && fc.DeletionTimestamp.IsZero() &&
		fc.Labels[fnletv1.LabelFinished] != "true"
	if !controllerutil.ContainsFinalizer(fc, Finalizer) && !mark {
		return nil
	}
	err := r.patchMeta(ctx, fc, func() {
		controllerutil.RemoveFinalizer(fc, Finalizer)
		if mark {
			if fc.Labels == nil {
				fc.Labels = map[string]string{}
			}
			fc.Labels[fnletv1.LabelFinished] = "true"
		}
	})
	if apierrors.IsNotFound(err) {
		r.calls.forget(fc)
		return nil
	}
	if err != nil {
		return fmt.Errorf("release call: %w", err)
	}
	return nil
}

// ---- writes ----

// updateStatus writes fc's status and remembers the result (see tracker).
func (r *FunctionCallReconciler) updateStatus(ctx context.Context, fc *fnletv1.FunctionCall) error {
	before := fc.ResourceVersion
	if err := r.Client.Status().Update(ctx, fc); err != nil {
		return err
	}
	r.calls.wrote(before, fc)
	return nil
}

func (r *FunctionCallReconciler) ensureFinalizer(ctx context.Context, fc *fnletv1.FunctionCall) error {
	if controllerutil.ContainsFinalizer(fc, Finalizer) {
		return nil
	}
	before, status := fc.ResourceVersion, fc.Status.DeepCopy()
	patch := client.MergeFromWithOptions(fc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(fc, Finalizer)
	if err := r.Client.Patch(ctx, fc, patch); err != nil {
		return fmt.Errorf("add finalizer: %w", err)
	}
	r.calls.wrote(before, fc)
	// The patch returns the stored status: keep what this reconcile set
	// and has yet to write (the attempt count).
	fc.Status = *status
	return nil
}

// patchMeta applies change to fc's metadata with a merge patch, without a
// resourceVersion precondition, and remembers the result (see tracker).
func (r *FunctionCallReconciler) patchMeta(ctx context.Context, fc *fnletv1.FunctionCall, change func()) error {
	before := fc.ResourceVersion
	patch := client.MergeFrom(fc.DeepCopy())
	change()
	if err := r.Client.Patch(ctx, fc, patch); err != nil {
		return err
	}
	r.calls.wrote(before, fc)
	return nil
}

func (r *FunctionCallReconciler) event(fc *fnletv1.FunctionCall, typ, reason, action, format string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(fc, nil, typ, reason, action, format, args...)
	}
}

func setCondition(fc *fnletv1.FunctionCall, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&fc.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: fc.Generation,
	})
}
