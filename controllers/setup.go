package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/source"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// NodeNameField is the selectable field binding a call to a node.
const NodeNameField = "status.nodeName"

// UnfinishedCalls selects the calls the manager still has work on: those
// without fnletv1.LabelFinished.
func UnfinishedCalls() labels.Selector {
	req, err := labels.NewRequirement(fnletv1.LabelFinished, selection.DoesNotExist, nil)
	if err != nil {
		panic(err) // a constant, valid key
	}
	return labels.NewSelector().Add(*req)
}

// SetupWithManager wires the reconciler: the manager's cache holds this
// node's calls, unassigned is a second cache of calls no node has claimed,
// and runtimeEvents carries the runtime's exit/OOM hints.
func (r *FunctionCallReconciler) SetupWithManager(mgr ctrl.Manager, unassigned cache.Cache, runtimeEvents <-chan event.GenericEvent, workers int) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &fnletv1.FunctionCall{}, ActiveNodeIndex, ActiveNode); err != nil {
		return fmt.Errorf("index %s: %w", ActiveNodeIndex, err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&fnletv1.FunctionCall{}).
		Named("functioncall").
		WatchesRawSource(source.Kind(unassigned, &fnletv1.FunctionCall{}, &handler.TypedEnqueueRequestForObject[*fnletv1.FunctionCall]{})).
		WatchesRawSource(source.Channel(runtimeEvents, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(r)
}

// ActiveNodeIndex indexes the cache's calls by the node that runs them,
// for unfinished calls only: the capacity check lists what is active
// without walking (and copying) every finished call the cache holds.
const ActiveNodeIndex = "fnlet.dev/activeNode"

// ActiveNode is the ActiveNodeIndex function.
func ActiveNode(o client.Object) []string {
	fc, ok := o.(*fnletv1.FunctionCall)
	if !ok || fc.Status.NodeName == "" || fc.IsFinished() {
		return nil
	}
	return []string{fc.Status.NodeName}
}

// RuntimeEvents turns runtime events into reconcile requests. It is a
// manager Runnable that owns the runtime's Watch loop.
type RuntimeEvents struct {
	Runtime *ctrd.Runtime
	Out     chan event.GenericEvent
}

func (e *RuntimeEvents) Start(ctx context.Context) error {
	return e.Runtime.Watch(ctx, func(ev ctrd.Event) {
		obj := &fnletv1.FunctionCall{ObjectMeta: metav1.ObjectMeta{Namespace: ev.Call.Namespace, Name: ev.Call.Name}}
		select {
		case e.Out <- event.GenericEvent{Object: obj}:
		case <-ctx.Done():
		}
	})
}

// OrphanCollector removes containers whose FunctionCall is gone, finished
// or no longer bound to this node (konlet's stale-container cleanup), once
// at start and then periodically, and prunes old logs. Its first pass is
// the runtime's Recover, run once per manager start (until it succeeds);
// later passes only List.
type OrphanCollector struct {
	Runtime      *ctrd.Runtime
	APIReader    client.Reader
	NodeName     string
	Interval     time.Duration
	LogRetention time.Duration
	LogKeep      int
}

func (o *OrphanCollector) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("gc")
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	list := o.Runtime.Recover
	// The first pass takes every stray lease: no create of this process is
	// under way yet. Later ones leave young leases to creates of other
	// processes that share the namespace.
	strayAge := time.Duration(0)
	for {
		n, err := o.collect(ctx, list)
		if err != nil {
			log.Error(err, "orphan collection")
		} else {
			list = o.Runtime.List // recovered
			if n > 0 {
				log.Info("removed orphan containers", "count", n)
			}
		}
		if n, err := o.collectStrayLeases(ctx, strayAge); err != nil {
			log.Error(err, "stray lease collection")
		} else if n > 0 {
			log.Info("removed the leases of calls that never got a container", "count", n)
		}
		strayAge = 2 * time.Minute
		if _, err := o.Runtime.PruneLogs(ctx, time.Now().Add(-o.LogRetention), o.LogKeep); err != nil {
			log.Error(err, "prune logs")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (o *OrphanCollector) collect(ctx context.Context, list func(context.Context) ([]ctrd.State, error)) (int, error) {
	states, err := list(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range states {
		var fc fnletv1.FunctionCall
		err := o.APIReader.Get(ctx, types.NamespacedName{Namespace: s.Call.Namespace, Name: s.Call.Name}, &fc)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return n, fmt.Errorf("get call of %s: %w", s.ContainerID, err)
		case string(fc.UID) == s.Call.UID && fc.Status.NodeName == o.NodeName && !fc.IsFinished():
			continue // ours and alive: the reconciler drives it
		}
		// Gone, another call of the name, bound elsewhere or back to
		// unassigned (this node was lost and its calls taken over), or
		// finished (its result is written): the container goes. This is the
		// fencing of a node that comes back.
		if err := o.Runtime.Delete(ctx, s.Call.UID); err != nil {
			return n, fmt.Errorf("delete orphan %s: %w", s.ContainerID, err)
		}
		n++
	}
	return n, nil
}

// collectStrayLeases removes the leases (and so the snapshots) of calls
// that never got a container, unless the call is still bound to this node
// and unfinished: the reconciler resumes those (Run is idempotent).
func (o *OrphanCollector) collectStrayLeases(ctx context.Context, minAge time.Duration) (int, error) {
	uids, err := o.Runtime.StrayLeases(ctx, minAge)
	if err != nil || len(uids) == 0 {
		return 0, err
	}
	var mine fnletv1.FunctionCallList
	if err := o.APIReader.List(ctx, &mine, client.MatchingFields{NodeNameField: o.NodeName},
		client.MatchingLabelsSelector{Selector: UnfinishedCalls()}); err != nil {
		return 0, fmt.Errorf("list this node's calls: %w", err)
	}
	live := map[string]bool{}
	for i := range mine.Items {
		if fc := &mine.Items[i]; fc.Status.NodeName == o.NodeName && !fc.IsFinished() {
			live[string(fc.UID)] = true
		}
	}
	n := 0
	for _, uid := range uids {
		if live[uid] {
			continue
		}
		if err := o.Runtime.Delete(ctx, uid); err != nil {
			return n, fmt.Errorf("delete stray lease of call %s: %w", uid, err)
		}
		n++
	}
	return n, nil
}

var _ manager.Runnable = (*OrphanCollector)(nil)
var _ manager.Runnable = (*RuntimeEvents)(nil)

func isInvalidArgument(err error) bool {
	return ctrd.IsInvalidArgument(err) || errors.Is(err, errInvalidSpec)
}
