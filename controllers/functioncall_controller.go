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

	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	KillGrace      time.Duration

	Metrics *Metrics

	// RunningWriteDelay is how long a started call may run before its
	// Running status is written: a call that exits sooner goes straight to
	// its final status, one write instead of two. 0 means
	// DefaultRunningWriteDelay; negative writes Running at once.
	RunningWriteDelay time.Duration

	finished finishedSet
	memos    memos
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

func (r *FunctionCallReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	fc, err := r.get(ctx, req.NamespacedName)
	if err != nil || fc == nil {
		return ctrl.Result{}, err
	}
	log := logf.FromContext(ctx).WithValues("uid", fc.UID)
	ctx = logf.IntoContext(ctx, log)

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
		return r.afterFinish(ctx, fc)
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
		return r.memos.resolve(key, nil), nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return r.memos.resolve(key, &fc), nil
}

// updateStatus writes fc's status and remembers the result (see memos).
func (r *FunctionCallReconciler) updateStatus(ctx context.Context, fc *fnletv1.FunctionCall) error {
	before := fc.ResourceVersion
	if err := r.Client.Status().Update(ctx, fc); err != nil {
		return err
	}
	r.memos.wrote(before, fc)
	return nil
}

// claim binds an unassigned call to this node if it may run here and the
// node has room. The status write carries the resourceVersion we read, so
// of several nodes racing, exactly one succeeds; the others get a conflict
// and drop the call.
func (r *FunctionCallReconciler) claim(ctx context.Context, fc *fnletv1.FunctionCall) (bool, ctrl.Result, error) {
	if !fc.DeletionTimestamp.IsZero() {
		// Never ours, no container: just let it go.
		return false, ctrl.Result{}, r.release(ctx, fc)
	}
	if fc.Spec.NodeName != "" && fc.Spec.NodeName != r.NodeName {
		return false, ctrl.Result{}, nil
	}
	if !labels.SelectorFromSet(fc.Spec.NodeSelector).Matches(r.NodeLabels) {
		return false, ctrl.Result{}, nil
	}
	if ok, err := r.hasRoom(ctx, fc); err != nil || !ok {
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
	fc.Status.ObservedGeneration = fc.Generation
	setCondition(fc, fnletv1.ConditionClaimed, metav1.ConditionTrue, "Claimed", "claimed by node "+r.NodeName)
	if err := r.updateStatus(ctx, fc); err != nil {
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

// hasRoom checks the node's capacity against the calls it already runs.
func (r *FunctionCallReconciler) hasRoom(ctx context.Context, fc *fnletv1.FunctionCall) (bool, error) {
	var list fnletv1.FunctionCallList
	// Only the active calls (an index, see ActiveNodeIndex), read-only: with
	// thousands of finished calls cached, listing and copying them all
	// dominated claim time.
	if err := r.Client.List(ctx, &list, client.MatchingFields{ActiveNodeIndex: r.NodeName}, client.UnsafeDisableDeepCopy); err != nil {
		return false, fmt.Errorf("list calls: %w", err)
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
	r.Metrics.setRunning(active)
	if r.Capacity.MaxCalls > 0 && active >= r.Capacity.MaxCalls {
		return false, nil
	}
	if r.Capacity.MemoryBudgetBytes > 0 && mem+r.memoryOf(fc) > r.Capacity.MemoryBudgetBytes {
		return false, nil
	}
	return true, nil
}

func (r *FunctionCallReconciler) memoryOf(fc *fnletv1.FunctionCall) int64 {
	if res := fc.Spec.Resources; res != nil && res.Memory != nil {
		return res.Memory.Value()
	}
	return r.Limits.DefaultMemoryBytes
}

// drive moves a claimed, unfinished call forward from what the runtime
// reports — the runtime is the truth, the status may lag behind it.
func (r *FunctionCallReconciler) drive(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	if r.finished.has(fc.UID) {
		// We wrote this call's final status already; the cache has not caught
		// up. Acting on the stale copy could start a finished call again.
		return ctrl.Result{}, nil
	}
	retrying := meta.IsStatusConditionTrue(fc.Status.Conditions, conditionRetrying)
	// An attempt this process started and has not written as Running yet:
	// the runtime knows how it is doing, no second start.
	startedAttempt, startedAt := r.memos.pendingStart(fc)
	if startedAttempt > 0 {
		fc.Status.Attempts = max(fc.Status.Attempts, startedAttempt)
	}
	if fc.Status.Phase != fnletv1.PhaseRunning && !retrying && startedAttempt == 0 {
		// The cold path: nothing started yet as far as the status knows. Run
		// is idempotent and resumes a container an earlier attempt left, so
		// no State round trip first.
		if fc.Spec.Cancel {
			return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonCancelled, "cancelled before it started", nil)
		}
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
		if startedAttempt == 0 {
			return r.finish(ctx, fc, st)
		}
		// It exited before its Running write was due: the final status
		// carries the start too.
		r.applyStarted(fc, st)
		res, err := r.finish(ctx, fc, st)
		if fc.IsFinished() && r.finished.has(fc.UID) {
			r.Metrics.observeStart(fc)
		}
		return res, err
	case ctrd.PhaseRunning:
		if fc.Status.Phase != fnletv1.PhaseRunning {
			if startedAttempt > 0 {
				if wait := startedAt.Add(r.runningWriteDelay()).Sub(r.Clock.Now()); wait > 0 {
					if fc.Spec.Cancel || !r.Clock.Now().Before(r.deadline(fc)) {
						return r.enforceDeadline(ctx, fc) // stop it; the exit writes the rest
					}
					return ctrl.Result{RequeueAfter: min(wait, r.deadline(fc).Sub(r.Clock.Now()))}, nil
				}
			}
			// Running longer than the write delay, or started by an earlier
			// attempt whose status write was lost.
			if err := r.markRunning(ctx, fc, st); err != nil {
				return ctrl.Result{}, err
			}
		}
		return r.enforceDeadline(ctx, fc)
	}
	// No container, or one whose task never started (a crash between
	// creating it and starting the task): Run resumes the latter.
	if !retrying || startedAttempt > 0 {
		return r.runtimeFailure(ctx, fc, errors.New("the container disappeared while the call was running"))
	}
	if fc.Spec.Cancel {
		return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonCancelled, "cancelled before it started", nil)
	}
	if c := meta.FindStatusCondition(fc.Status.Conditions, conditionRetrying); c != nil && c.Status == metav1.ConditionTrue {
		// Our own status write wakes us at once: wait out the backoff.
		if left := c.LastTransitionTime.Add(retryBackoff(fc.Status.Attempts)).Sub(r.Clock.Now()); left > 0 {
			return ctrl.Result{RequeueAfter: left}, nil
		}
	}
	return r.start(ctx, fc)
}

func (r *FunctionCallReconciler) start(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	call, auth, err := inputResolver{reader: r.APIReader, managerUser: r.ManagerUser}.buildCall(ctx, fc, r.Limits)
	if errors.Is(err, errInvalidSpec) {
		return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonInvalidSpec, err.Error(), nil)
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
		return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonImagePullFailed, fmt.Sprintf("pull %s: %v", fc.Spec.Image, ie.Err), nil)
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
	st, err := r.Runtime.Run(ctx, call)
	if err != nil {
		if isInvalidArgument(err) {
			return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonInvalidSpec, err.Error(), nil)
		}
		return r.runtimeFailure(ctx, fc, fmt.Errorf("start: %w", err))
	}
	if st.Phase == ctrd.PhaseExited {
		// An earlier attempt's container, which exited meanwhile.
		return r.finish(ctx, fc, st)
	}
	if d := r.runningWriteDelay(); d > 0 {
		// Most calls exit within the delay: their exit event finds this
		// pending start and writes the final status directly.
		r.memos.started(fc, fc.Status.Attempts, r.Clock.Now())
		left := r.deadline(fc).Sub(r.Clock.Now())
		if fc.Spec.Cancel || left <= 0 {
			return r.enforceDeadline(ctx, fc)
		}
		return ctrl.Result{RequeueAfter: min(d, left)}, nil
	}
	if err := r.markRunning(ctx, fc, st); err != nil {
		return ctrl.Result{}, err
	}
	return r.enforceDeadline(ctx, fc)
}

func (r *FunctionCallReconciler) markRunning(ctx context.Context, fc *fnletv1.FunctionCall, st ctrd.State) error {
	fc.Status.Phase = fnletv1.PhaseRunning
	r.applyStarted(fc, st)
	if err := r.updateStatus(ctx, fc); err != nil {
		return fmt.Errorf("record start: %w", err)
	}
	r.memos.clearStart(fc)
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

// finish writes the outcome of an exited call, then removes its container.
// The status comes first: if we die in between, the next reconcile finds a
// finished call and only cleans up.
func (r *FunctionCallReconciler) finish(ctx context.Context, fc *fnletv1.FunctionCall, st ctrd.State) (ctrl.Result, error) {
	res := st.Result
	phase, reason, msg := outcome(fc, res, r.deadline(fc))
	applyResult(fc, res)
	if fc.Status.StartedAt == nil && !res.StartedAt.IsZero() {
		t := metav1.NewTime(res.StartedAt)
		fc.Status.StartedAt = &t
	}
	if err := r.complete(ctx, fc, phase, reason, msg); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Runtime.Delete(ctx, string(fc.UID)); err != nil {
		return ctrl.Result{}, fmt.Errorf("remove container after finish: %w", err)
	}
	r.finished.markRemoved(fc.UID)
	// The container is gone: let go of the call now rather than in the
	// reconcile our status write causes.
	if err := r.release(ctx, fc); err != nil {
		return ctrl.Result{}, err
	}
	return r.ttlResult(ctx, fc)
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

// complete writes a final phase. It is the only way a call finishes.
func (r *FunctionCallReconciler) complete(ctx context.Context, fc *fnletv1.FunctionCall, phase fnletv1.CallPhase, reason fnletv1.CallReason, msg string) error {
	fc.Status.Phase, fc.Status.Reason, fc.Status.Message = phase, reason, msg
	if fc.Status.FinishedAt == nil {
		t := metav1.NewTime(r.Clock.Now())
		fc.Status.FinishedAt = &t
	}
	fc.Status.ObservedGeneration = fc.Generation
	setCondition(fc, fnletv1.ConditionFinished, metav1.ConditionTrue, string(reason), msg)
	if err := r.updateStatus(ctx, fc); err != nil {
		return fmt.Errorf("record %s: %w", phase, err)
	}
	r.finished.add(fc.UID)
	r.memos.clearStart(fc)
	r.Metrics.observeFinish(fc)
	// A success is in the status; every failure is also a Warning Event.
	if phase != fnletv1.PhaseSucceeded {
		r.event(fc, corev1.EventTypeWarning, string(reason), "Finish", "%s", msg)
	}
	return nil
}

// fail ends a call that never produced a result.
func (r *FunctionCallReconciler) fail(ctx context.Context, fc *fnletv1.FunctionCall, reason fnletv1.CallReason, msg string, _ error) error {
	meta.RemoveStatusCondition(&fc.Status.Conditions, conditionRetrying)
	if err := r.complete(ctx, fc, fnletv1.PhaseFailed, reason, msg); err != nil {
		return err
	}
	if err := r.Runtime.Delete(ctx, string(fc.UID)); err != nil {
		return fmt.Errorf("remove container after failure: %w", err)
	}
	r.finished.markRemoved(fc.UID)
	return r.release(ctx, fc)
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
		return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonRuntimeError,
			fmt.Sprintf("containerd was unavailable until the call's timeout (%s) passed: %v", r.timeout(fc), cause), cause)
	}
	retries := int32(0)
	if fc.Spec.Retries != nil {
		retries = *fc.Spec.Retries
	}
	if fc.Status.Attempts > retries {
		return ctrl.Result{}, r.fail(ctx, fc, fnletv1.ReasonRuntimeError, cause.Error(), cause)
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
	r.memos.clearStart(fc)
	r.event(fc, corev1.EventTypeWarning, "Retrying", "Retry", "attempt %d failed (%v); retrying in %s", fc.Status.Attempts, cause, backoff)
	return ctrl.Result{RequeueAfter: backoff}, nil
}

// conditionRetrying is True between a failed attempt and the next start.
const conditionRetrying = "Retrying"

// retryBackoff is the wait after the given number of failed attempts.
func retryBackoff(attempts int32) time.Duration {
	return time.Duration(1<<min(attempts, 6)) * time.Second
}

// afterFinish removes a finished call's container (if a crash left it) and
// applies ttlSecondsAfterFinished.
func (r *FunctionCallReconciler) afterFinish(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
	// Skip the runtime round trip when this process removed the container
	// after writing the result: nothing runs a finished call again.
	if !r.finished.removed(fc.UID) {
		if err := r.Runtime.Delete(ctx, string(fc.UID)); err != nil {
			return ctrl.Result{}, fmt.Errorf("remove container of finished call: %w", err)
		}
	}
	if err := r.release(ctx, fc); err != nil {
		return ctrl.Result{}, err
	}
	return r.ttlResult(ctx, fc)
}

func (r *FunctionCallReconciler) ttlResult(ctx context.Context, fc *fnletv1.FunctionCall) (ctrl.Result, error) {
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

// finalize handles deletion: kill and clean the container, then let go.
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
	r.memos.clearStart(fc)
	return r.release(ctx, fc)
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
	r.memos.wrote(before, fc)
	// The patch returns the stored status: keep what this reconcile set
	// and has yet to write (the attempt count).
	fc.Status = *status
	return nil
}

// release lets go of a call whose container is gone, in one patch: it
// drops the finalizer and, once nothing is left for this process to do
// with a finished call (no TTL to enforce), sets fnletv1.LabelFinished, which takes
// the call out of this node's cache: memory does not grow with the number
// of finished calls kept.
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
		r.memos.forget(fc)
		return nil
	}
	if err != nil {
		return fmt.Errorf("release call: %w", err)
	}
	return nil
}

// patchMeta applies change to fc's metadata with a merge patch, without a
// resourceVersion precondition, and remembers the result (see memos).
func (r *FunctionCallReconciler) patchMeta(ctx context.Context, fc *fnletv1.FunctionCall, change func()) error {
	before := fc.ResourceVersion
	patch := client.MergeFrom(fc.DeepCopy())
	change()
	if err := r.Client.Patch(ctx, fc, patch); err != nil {
		return err
	}
	r.memos.wrote(before, fc)
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

// finishedSet remembers the calls this process finished, so a reconcile of a
// stale cached copy never acts on them again, and whether it removed their
// container since. Bounded: the oldest entries go first; by then the cache
// has long caught up.
type finishedSet struct {
	mu    sync.Mutex
	set   map[types.UID]bool // true: container removed
	order []types.UID
}

const finishedSetSize = 10000

func (f *finishedSet) add(uid types.UID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.set == nil {
		f.set = map[types.UID]bool{}
	}
	if _, ok := f.set[uid]; ok {
		return
	}
	f.set[uid] = false
	f.order = append(f.order, uid)
	if len(f.order) > finishedSetSize {
		delete(f.set, f.order[0])
		f.order = f.order[1:]
	}
}

func (f *finishedSet) has(uid types.UID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.set[uid]
	return ok
}

// markRemoved records that a finished call's container is gone.
func (f *finishedSet) markRemoved(uid types.UID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.set[uid]; ok {
		f.set[uid] = true
	}
}

func (f *finishedSet) removed(uid types.UID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.set[uid]
}
