// Package node wires one fnlet node agent: the controller-runtime manager
// and its caches, the FunctionCallReconciler, the node's Lease and the
// NodeLost detector. cmd/manager runs one over containerd; the scale
// harness (test/scale) runs many in one process over a fake runtime, so
// both exercise the same wiring.
package node

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/controllers"
)

// Options are what a node agent is made of besides its rest.Config.
type Options struct {
	NodeName string
	Runtime  controllers.Runtime
	// ManagerUser is the node agent's own user name, for the messages that
	// tell a namespace which RoleBinding to create (see controllers).
	ManagerUser string
	// Manager holds the controller-runtime options that are not about
	// caches (metrics and probe addresses, pprof, NewClient, ...). Scheme
	// and Cache are set by New.
	Manager ctrl.Options
	// Metrics of the reconciler; nil records none.
	Metrics *controllers.Metrics
	// SkipNameValidation lets several nodes run in one process (the scale
	// harness): controller-runtime otherwise wants unique controller names.
	SkipNameValidation bool

	Workers        int
	Capacity       controllers.Capacity
	Limits         controllers.Limits
	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	KillGrace      time.Duration

	LeaseNamespace string
	LeaseDuration  time.Duration
	LeaseRenew     time.Duration
	NodeLostGrace  time.Duration
	ClaimStagger   time.Duration
	// Dispatchers: with more live nodes than this, a node watches only the
	// unassigned calls offered to it, and only the dispatchers watch them
	// all (see controllers.OfferLabel); 0: every node watches every one.
	Dispatchers int

	// PoolRuntime, when set, serves FunctionPools on this node (the
	// runtime must then also implement controllers.WarmRunner); nil runs
	// every call cold and ignores pools.
	PoolRuntime controllers.PoolRuntime
	// PoolRefillPerSecond bounds the node's pre-started container starts.
	PoolRefillPerSecond float64
	// LogAddress is where peers reach this node's log API (host:port),
	// published on its Lease; empty for none.
	LogAddress string
	// LogCert gives the SHA-256 of the certificate that log API serves,
	// published on the Lease for peers to pin; nil for none.
	LogCert func() string
}

// Node is a wired, not yet started, node agent: Manager.Start runs it.
type Node struct {
	Manager    ctrl.Manager
	Reconciler *controllers.FunctionCallReconciler
	// Pools is nil unless Options.PoolRuntime was set.
	Pools    *controllers.FunctionPoolReconciler
	Lease    *controllers.NodeLease
	Detector *controllers.NodeLossDetector
	// Unassigned is the cache of calls no node has claimed yet: all of
	// them without offers (Options.Dispatchers 0), else those offered to
	// this node.
	Unassigned cache.Cache
	// Dispatch watches every unassigned call while this node is a
	// dispatcher; nil without offers.
	Dispatch *controllers.DispatchWatch
	// Events wakes the reconciler for a call (the runtime's exit hints).
	Events chan event.GenericEvent
}

// NewScheme is the scheme of a node agent: client-go's types and fnlet's.
func NewScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := fnletv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return scheme, nil
}

// New wires a node agent on cfg. It reads the node's labels from its Node
// object (none without one), so it needs the apiserver.
//
// The caches are as narrow as the reconciler allows: the manager's holds
// this node's unfinished calls (field selector status.nodeName, label
// selector controllers.UnfinishedCalls) and the node Leases of the Lease
// namespace; a second cache holds the calls no node has claimed.
func New(ctx context.Context, cfg *rest.Config, o Options) (*Node, error) {
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	mine := fields.OneTermEqualSelector(controllers.NodeNameField, o.NodeName)
	mo := o.Manager
	mo.Scheme = scheme
	// Managed fields are ~40% of a cached call and unused here.
	mo.Cache = cache.Options{DefaultTransform: cache.TransformStripManagedFields(), ByObject: map[client.Object]cache.ByObject{
		&fnletv1.FunctionCall{}: {Field: mine, Label: controllers.UnfinishedCalls()},
		&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{o.LeaseNamespace: {}},
			Label: labels.SelectorFromSet(labels.Set{controllers.NodeLeaseLabel: "true"})},
	}}
	if o.SkipNameValidation {
		skip := true
		mo.Controller.SkipNameValidation = &skip
	}
	mgr, err := ctrl.NewManager(cfg, mo)
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	// Calls no node has claimed yet, in a second, equally narrow cache: with
	// offers, only those offered to this node.
	unassignedCache := func(offered labels.Selector) (cache.Cache, error) {
		// No other label selector: a call copied from a finished one may
		// carry its finished label; claim removes it.
		return cache.New(cfg, cache.Options{Scheme: scheme, Mapper: mgr.GetRESTMapper(),
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&fnletv1.FunctionCall{}: {Field: fields.OneTermEqualSelector(controllers.NodeNameField, ""), Label: offered},
			}})
	}
	var offered labels.Selector
	if o.Dispatchers > 0 {
		offered = labels.SelectorFromSet(labels.Set{controllers.OfferLabel: o.NodeName})
	}
	unassigned, err := unassignedCache(offered)
	if err != nil {
		return nil, fmt.Errorf("create unassigned-calls cache: %w", err)
	}
	if err := mgr.Add(unassigned); err != nil {
		return nil, err
	}
	nodeLabels, err := readNodeLabels(ctx, mgr.GetAPIReader(), o.NodeName)
	if err != nil {
		return nil, err
	}
	n := &Node{Manager: mgr, Unassigned: unassigned, Events: make(chan event.GenericEvent, 1024)}
	self := controllers.Node{Name: o.NodeName, Labels: nodeLabels, MaxMemoryBytes: o.Limits.MaxMemoryBytes, MaxMilliCPU: o.Limits.MaxMilliCPU,
		Networks: o.Limits.Networks, LogAddress: o.LogAddress}
	n.Lease = &controllers.NodeLease{Client: mgr.GetClient(), Namespace: o.LeaseNamespace, Node: self,
		Duration: o.LeaseDuration, RenewInterval: o.LeaseRenew, Clock: clock.RealClock{}, LogCert: o.LogCert}
	if err := mgr.Add(n.Lease); err != nil {
		return nil, err
	}
	leases := &controllers.LeaseNodes{Reader: mgr.GetClient(), Namespace: o.LeaseNamespace}
	var unassignedReader client.Reader = unassigned
	if o.Dispatchers > 0 {
		n.Dispatch = &controllers.DispatchWatch{Nodes: leases, Self: o.NodeName, Dispatchers: o.Dispatchers,
			Interval: o.LeaseRenew, Clock: clock.RealClock{}, Out: n.Events,
			NewCache: func() (cache.Cache, error) { return unassignedCache(nil) }}
		if err := mgr.Add(n.Dispatch); err != nil {
			return nil, err
		}
		unassignedReader = controllers.Readers{unassigned, n.Dispatch}
	}
	n.Reconciler = &controllers.FunctionCallReconciler{
		Client: mgr.GetClient(), Unassigned: unassignedReader, APIReader: mgr.GetAPIReader(), ManagerUser: o.ManagerUser,
		Recorder: mgr.GetEventRecorder("fnlet-manager"), Runtime: o.Runtime, Clock: clock.RealClock{},
		NodeName: o.NodeName, NodeLabels: nodeLabels,
		Nodes:          leases,
		ClaimStagger:   o.ClaimStagger,
		Dispatchers:    o.Dispatchers,
		Capacity:       o.Capacity,
		Limits:         o.Limits,
		DefaultTimeout: o.DefaultTimeout, MaxTimeout: o.MaxTimeout, KillGrace: o.KillGrace,
		Metrics: o.Metrics,
	}
	if o.PoolRuntime != nil {
		pools := controllers.NewPools()
		n.Reconciler.Pools = pools
		n.Pools = &controllers.FunctionPoolReconciler{Client: mgr.GetClient(), Recorder: n.Reconciler.Recorder,
			Runtime: o.PoolRuntime, Clock: clock.RealClock{}, NodeName: o.NodeName, NodeLabels: nodeLabels,
			Capacity: o.Capacity, Limits: o.Limits, Calls: n.Reconciler, Pools: pools,
			RefillPerSecond: o.PoolRefillPerSecond, Metrics: o.Metrics}
		if err := n.Pools.SetupWithManager(mgr); err != nil {
			return nil, fmt.Errorf("set up pool controller: %w", err)
		}
	}
	if err := n.Reconciler.SetupWithManager(mgr, unassigned, n.Events, o.Workers); err != nil {
		return nil, fmt.Errorf("set up controller: %w", err)
	}
	n.Detector = &controllers.NodeLossDetector{Calls: n.Reconciler, Lease: n.Lease, Grace: o.NodeLostGrace, Interval: o.LeaseRenew}
	if err := mgr.Add(n.Detector); err != nil {
		return nil, err
	}
	return n, nil
}

// readNodeLabels reads this node's labels for spec.nodeSelector. Without a
// Node object (a bare control plane) the node has no labels.
func readNodeLabels(ctx context.Context, r client.Reader, name string) (labels.Set, error) {
	var n corev1.Node
	err := r.Get(ctx, types.NamespacedName{Name: name}, &n)
	if apierrors.IsNotFound(err) {
		return labels.Set{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node %s: %w", name, err)
	}
	return labels.Set(n.Labels), nil
}
