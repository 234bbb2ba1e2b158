package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// NodeLossDetector takes over the unfinished calls of nodes that are gone.
//
// A node is lost when its Lease has been expired for longer than Grace (a
// clean stop releases the Lease, so a restart within Grace loses nothing).
// Of the live nodes, exactly one acts for a lost node: the first in
// rendezvous order for the lost node's name, so the managers agree without
// a race and without a leader. A manager only judges others while its own
// renewals have succeeded for a whole Lease duration: after an apiserver
// outage every Lease looks expired, and the others need that long to
// renew theirs.
//
// What happens to a lost node's call is in takeOver. Semantics: a node
// that was only partitioned may still be running the call, so a call
// retried after NodeLost runs at least once; a call without retries left
// is never run again. When such a node comes back, its OrphanCollector
// removes the containers of calls no longer bound to it, and its status
// writes carry resourceVersions the takeover made stale: it never
// overwrites the outcome.
type NodeLossDetector struct {
	Calls    *FunctionCallReconciler
	Lease    *NodeLease
	Grace    time.Duration
	Interval time.Duration

	mu   sync.Mutex
	done map[string]time.Time // lost node → the expiry whose calls were all taken over
}

var _ manager.Runnable = (*NodeLossDetector)(nil)

func (d *NodeLossDetector) NeedLeaderElection() bool { return false }

func (d *NodeLossDetector) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("node-loss")
	t := time.NewTicker(d.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := d.scan(logf.IntoContext(ctx, log)); err != nil {
			log.Error(err, "scan for lost nodes")
		}
	}
}

// scan finds the lost nodes this manager acts for and takes over their calls.
func (d *NodeLossDetector) scan(ctx context.Context) error {
	r := d.Calls
	if d.Lease.HealthyFor() < d.Lease.Duration {
		return nil // we may be the one cut off; let the others renew first
	}
	nodes, err := r.Nodes.Nodes(ctx)
	if err != nil {
		return err
	}
	now := r.Clock.Now()
	live := []string{r.NodeName}
	var lost []Node
	for _, n := range nodes {
		switch {
		case n.Name == r.NodeName:
		case n.Live(now):
			live = append(live, n.Name)
		case now.After(n.ExpiresAt.Add(d.Grace)):
			lost = append(lost, n)
		}
	}
	for _, n := range lost {
		if rendezvous("node/"+n.Name, live)[0] != r.NodeName || d.isDone(n) {
			continue
		}
		left, err := d.takeOver(ctx, n, now)
		if err != nil {
			return fmt.Errorf("take over calls of lost node %s: %w", n.Name, err)
		}
		if left == 0 {
			d.markDone(n)
		}
	}
	return nil
}

func (d *NodeLossDetector) isDone(n Node) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.done[n.Name]
	return ok && at.Equal(n.ExpiresAt)
}

func (d *NodeLossDetector) markDone(n Node) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil {
		d.done = map[string]time.Time{}
	}
	d.done[n.Name] = n.ExpiresAt
}

// takeOver ends or requeues every unfinished call bound to the lost node n
// and returns how many it could not handle this time.
//
//   - past its deadline: Failed/TimedOut (the timeout still holds);
//   - no retries left (the lost attempt counts): Failed/NodeLost, with the
//     node and since when;
//   - otherwise: back to unassigned, attempt counted, Claimed=False/NodeLost
//     and a Warning Event naming the node; another node claims it.
//
// The lost node's finalizer goes too: its container is out of reach, and
// the node removes it itself if it comes back.
func (d *NodeLossDetector) takeOver(ctx context.Context, n Node, now time.Time) (int, error) {
	r := d.Calls
	var list fnletv1.FunctionCallList
	if err := r.APIReader.List(ctx, &list, client.MatchingFields{NodeNameField: n.Name},
		client.MatchingLabelsSelector{Selector: UnfinishedCalls()}); err != nil {
		return 0, fmt.Errorf("list calls: %w", err)
	}
	left := 0
	for i := range list.Items {
		fc := &list.Items[i]
		if fc.Status.NodeName != n.Name {
			continue
		}
		if err := d.takeOverCall(ctx, fc, n, now); err != nil {
			logf.FromContext(ctx).Error(err, "take over call", "call", client.ObjectKeyFromObject(fc), "node", n.Name)
			left++
		}
	}
	return left, nil
}

// lostAttempts is the call's attempt count once its node is lost, the
// lost node's attempt included. A node starts an attempt before it
// records it (the Running write is deferred, so short calls cost one
// write), so the status counts the attempt under way only when it says
// Running with no failed attempt waiting for a retry; otherwise the node
// may have started one more than the status shows, and it counts.
// Counting one that never started costs a retry; missing one that did
// would run the call more often than its retries allow.
func lostAttempts(fc *fnletv1.FunctionCall) int32 {
	if fc.Status.Phase == fnletv1.PhaseRunning && !meta.IsStatusConditionTrue(fc.Status.Conditions, conditionRetrying) {
		return max(fc.Status.Attempts, 1)
	}
	return fc.Status.Attempts + 1
}

func (d *NodeLossDetector) takeOverCall(ctx context.Context, fc *fnletv1.FunctionCall, n Node, now time.Time) error {
	r := d.Calls
	if !fc.IsFinished() {
		since := n.ExpiresAt.UTC().Format(time.RFC3339)
		attempts := lostAttempts(fc)
		retries := int32(0)
		if fc.Spec.Retries != nil {
			retries = *fc.Spec.Retries
		}
		var reason fnletv1.CallReason
		var msg string
		switch {
		case !now.Before(r.deadline(fc)):
			reason, msg = fnletv1.ReasonTimedOut, fmt.Sprintf("its timeout (%s) passed while its node %s was lost (lease expired at %s)", r.timeout(fc), n.Name, since)
		case attempts > retries:
			reason, msg = fnletv1.ReasonNodeLost, fmt.Sprintf("node %s was lost: its lease expired at %s; the call may have been running there, and has no retries left", n.Name, since)
		}
		fc.Status.Attempts = attempts
		fc.Status.ObservedGeneration = fc.Generation
		meta.RemoveStatusCondition(&fc.Status.Conditions, conditionRetrying)
		if reason != "" {
			fc.Status.Phase, fc.Status.Reason, fc.Status.Message = fnletv1.PhaseFailed, reason, msg
			t := metav1.NewTime(now)
			fc.Status.FinishedAt = &t
			setCondition(fc, fnletv1.ConditionFinished, metav1.ConditionTrue, string(reason), msg)
		} else {
			msg = fmt.Sprintf("node %s was lost (lease expired at %s); attempt %d counted, waiting for another node", n.Name, since, attempts)
			fc.Status.NodeName, fc.Status.Phase = "", fnletv1.PhasePending
			fc.Status.ClaimedAt, fc.Status.StartedAt, fc.Status.ContainerID, fc.Status.LogDir = nil, nil, "", ""
			meta.RemoveStatusCondition(&fc.Status.Conditions, fnletv1.ConditionStarted)
			meta.RemoveStatusCondition(&fc.Status.Conditions, fnletv1.ConditionImageReady)
			setCondition(fc, fnletv1.ConditionClaimed, metav1.ConditionFalse, fnletv1.ReasonRequeuedNodeLost, msg)
		}
		// The resourceVersion read guards this write: if the node came back
		// and wrote meanwhile, this one fails and the next scan looks again.
		if err := r.Client.Status().Update(ctx, fc); err != nil {
			return fmt.Errorf("record node loss: %w", err)
		}
		r.event(fc, corev1.EventTypeWarning, string(fnletv1.ReasonNodeLost), "TakeOver", "%s", msg)
	}
	patch := client.MergeFrom(fc.DeepCopy())
	controllerutil.RemoveFinalizer(fc, Finalizer)
	if fc.IsFinished() && fc.Spec.TTLSecondsAfterFinished == nil {
		if fc.Labels == nil {
			fc.Labels = map[string]string{}
		}
		fc.Labels[fnletv1.LabelFinished] = "true"
	}
	if err := r.Client.Patch(ctx, fc, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release call of lost node: %w", err)
	}
	return nil
}
