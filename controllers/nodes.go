package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// A node's liveness is a coordination.k8s.io/v1 Lease named
// NodeLeasePrefix+node in the manager's namespace, labelled
// NodeLeaseLabel. Besides the renew time it carries what peers need to
// place a call without asking the node: its labels and its limits.
const (
	NodeLeasePrefix = "fnlet-node-"
	NodeLeaseLabel  = "fnlet.dev/node-lease"

	annNodeLabels = "fnlet.dev/node-labels"
	annMaxMemory  = "fnlet.dev/max-memory-bytes"
	annMaxCPU     = "fnlet.dev/max-millicpu"
	annLogAddress = "fnlet.dev/log-address"
	annLogCert    = "fnlet.dev/log-cert-sha256"
	annNetworks   = "fnlet.dev/networks"
)

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update,namespace=fnlet-system

// Node is one fnlet node as its Lease describes it.
type Node struct {
	Name           string
	Labels         labels.Set
	MaxMemoryBytes int64 // 0: no maximum
	MaxMilliCPU    int64 // 0: no maximum
	// Networks the node runs calls on; nil when its Lease does not say.
	Networks []fnletv1.NetworkMode
	// LogAddress is host:port of the node's log API (internal/logapi),
	// where a peer forwards a request for a call of this node; empty when
	// the node serves none.
	LogAddress string
	// LogCertSHA256 is the SHA-256 (hex) of the certificate that log API
	// serves: a forwarding peer accepts no other (logapi.Peers).
	LogCertSHA256 string
	// ExpiresAt is when the Lease runs out unless renewed; a released
	// Lease has expired at its release.
	ExpiresAt time.Time
}

// Live says whether the node's Lease is current at now.
func (n Node) Live(now time.Time) bool { return now.Before(n.ExpiresAt) }

// NodeLister lists the fnlet nodes known from their Leases, live or not.
type NodeLister interface {
	Nodes(ctx context.Context) ([]Node, error)
}

// LeaseNodes reads Nodes from Leases through a (cached) reader. It keeps
// each Lease's parsed Node by resourceVersion: placement lists the Leases
// for every unassigned call it looks at, and with hundreds of nodes
// decoding their annotations each time dominated a reconcile. Use it by
// pointer; the zero value of its memo is ready.
type LeaseNodes struct {
	Reader    client.Reader
	Namespace string

	mu     sync.Mutex
	parsed map[string]parsedLease // Lease name → its last parse
}

type parsedLease struct {
	resourceVersion string
	node            Node
	ok              bool
}

func (l *LeaseNodes) Nodes(ctx context.Context) ([]Node, error) {
	var list coordinationv1.LeaseList
	// Read-only: the Leases are parsed, never changed.
	if err := l.Reader.List(ctx, &list, client.InNamespace(l.Namespace), client.HasLabels{NodeLeaseLabel}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list node leases: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	next := make(map[string]parsedLease, len(list.Items))
	nodes := make([]Node, 0, len(list.Items))
	for i := range list.Items {
		lease := &list.Items[i]
		p, ok := l.parsed[lease.Name]
		if !ok || p.resourceVersion != lease.ResourceVersion || lease.ResourceVersion == "" {
			p.resourceVersion = lease.ResourceVersion
			p.node, p.ok = nodeOf(lease)
		}
		next[lease.Name] = p
		if p.ok {
			nodes = append(nodes, p.node)
		}
	}
	l.parsed = next // Leases gone are forgotten
	return nodes, nil
}

func nodeOf(l *coordinationv1.Lease) (Node, bool) {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return Node{}, false
	}
	n := Node{Name: *l.Spec.HolderIdentity, Labels: labels.Set{}}
	if l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil {
		n.ExpiresAt = l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	}
	_ = json.Unmarshal([]byte(l.Annotations[annNodeLabels]), &n.Labels)
	n.MaxMemoryBytes, _ = strconv.ParseInt(l.Annotations[annMaxMemory], 10, 64)
	n.MaxMilliCPU, _ = strconv.ParseInt(l.Annotations[annMaxCPU], 10, 64)
	n.LogAddress = l.Annotations[annLogAddress]
	n.LogCertSHA256 = l.Annotations[annLogCert]
	if v, ok := l.Annotations[annNetworks]; ok {
		n.Networks = []fnletv1.NetworkMode{}
		for _, m := range strings.Split(v, ",") {
			if m != "" {
				n.Networks = append(n.Networks, fnletv1.NetworkMode(m))
			}
		}
	}
	return n, true
}

// ---- placement ----

// fits says whether node may run the call, and if not, why (in words for
// the Unschedulable message).
func fits(fc *fnletv1.FunctionCall, n Node, lim Limits) (bool, string) {
	if fc.Spec.NodeName != "" && fc.Spec.NodeName != n.Name {
		return false, "not spec.nodeName"
	}
	if !labels.SelectorFromSet(fc.Spec.NodeSelector).Matches(n.Labels) {
		return false, "nodeSelector does not match"
	}
	mem, cpu := lim.DefaultMemoryBytes, lim.DefaultMilliCPU
	if r := fc.Spec.Resources; r != nil {
		if r.Memory != nil {
			mem = r.Memory.Value()
		}
		if r.CPU != nil {
			cpu = r.CPU.MilliValue()
		}
	}
	if n.MaxMemoryBytes > 0 && mem > n.MaxMemoryBytes {
		return false, "memory over the node's maximum"
	}
	if net := fc.Spec.Network; net != "" && net != fnletv1.NetworkNone && n.Networks != nil && !slices.Contains(n.Networks, net) {
		return false, "no network: " + string(net)
	}
	if n.MaxMilliCPU > 0 && cpu > n.MaxMilliCPU {
		return false, "cpu over the node's maximum"
	}
	return true, ""
}

// rendezvous orders node names by highest random weight for key
// (rendezvous hashing): every manager computes the same order from the
// same live set, without talking to each other, and a node joining or
// leaving moves only the keys it wins or held.
func rendezvous(key string, names []string) []string {
	type scored struct {
		name  string
		score uint64
	}
	s := make([]scored, len(names))
	for i, n := range names {
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(n))
		s[i] = scored{n, mix(h.Sum64())}
	}
	slices.SortFunc(s, func(a, b scored) int {
		if a.score != b.score {
			if a.score > b.score {
				return -1
			}
			return 1
		}
		if a.name < b.name {
			return -1
		}
		return 1
	})
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i].name
	}
	return out
}

// mix is a 64-bit finalizer (splitmix64's): FNV alone leaves the high
// bits of similar keys (node-1, node-2) correlated, which skews the ranks.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// placement is what a manager decides about an unassigned call from the
// live nodes: its own rank among the nodes that fit (-1: it does not
// fit), whether no live node fits at all (and why), and whether it is the
// one node that reports that.
type placement struct {
	rank          int
	unschedulable string // non-empty: no live node fits; the reason
	reporter      bool
	// order is the live nodes that fit, in rendezvous order for the call;
	// live is every live node's name, this one's included.
	order, live []string
	// expires is when each other node's Lease runs out (or ran out).
	expires map[string]time.Time
}

func place(fc *fnletv1.FunctionCall, self Node, nodes []Node, now time.Time, lim Limits) placement {
	var live, fitting []string
	why := map[string]int{}
	expires := map[string]time.Time{}
	seenSelf := false
	for _, n := range nodes {
		if n.Name == self.Name {
			n, seenSelf = self, true // our own view is the freshest
		} else if expires[n.Name] = n.ExpiresAt; !n.Live(now) {
			continue
		}
		live = append(live, n.Name)
		if ok, reason := fits(fc, n, lim); ok {
			fitting = append(fitting, n.Name)
		} else {
			why[reason]++
		}
	}
	if !seenSelf {
		live = append(live, self.Name)
		if ok, reason := fits(fc, self, lim); ok {
			fitting = append(fitting, self.Name)
		} else {
			why[reason]++
		}
	}
	order := rendezvous(string(fc.UID), fitting)
	p := placement{rank: slices.Index(order, self.Name), order: order, live: live, expires: expires}
	if len(fitting) == 0 {
		p.reporter = rendezvous(string(fc.UID), live)[0] == self.Name
		p.unschedulable = unschedulableMessage(len(live), why)
	}
	return p
}

// unschedulableMessage reads like the scheduler's "0/3 nodes are
// available: 2 node(s) didn't match ..., 1 ...".
func unschedulableMessage(live int, why map[string]int) string {
	reasons := make([]string, 0, len(why))
	for r := range why {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	msg := fmt.Sprintf("0/%d fnlet nodes are available", live)
	for i, r := range reasons {
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		msg += fmt.Sprintf("%s%d %s", sep, why[r], r)
	}
	return msg
}

// ---- this node's Lease ----

// NodeLease holds this node's Lease: it creates or takes it over at start,
// renews it every RenewInterval, and releases it on a clean stop (renew
// time now, duration 0: expired at once, so peers count the grace period
// from the stop). Healthy reports whether renewals have been succeeding
// long enough for this node to judge its peers (see NodeLossDetector).
type NodeLease struct {
	Client        client.Client
	Namespace     string
	Node          Node
	Duration      time.Duration
	RenewInterval time.Duration
	Clock         clock.PassiveClock
	// LogCert gives, at each renewal, the SHA-256 of the certificate the
	// node's log API serves now (it may be reloaded); nil: the static
	// Node.LogCertSHA256.
	LogCert func() string

	mu           sync.Mutex
	healthySince time.Time // zero: the last renewal failed
	lastRenew    time.Time
	current      *coordinationv1.Lease // what our last write returned
}

var _ manager.Runnable = (*NodeLease)(nil)

// NeedLeaderElection: every node holds its own Lease.
func (l *NodeLease) NeedLeaderElection() bool { return false }

func (l *NodeLease) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("node-lease")
	t := time.NewTicker(l.RenewInterval)
	defer t.Stop()
	for {
		if err := l.renew(ctx, l.Duration); err != nil {
			log.Error(err, "renew node lease")
		}
		select {
		case <-ctx.Done():
			// A clean stop: release, with a short context of our own (ctx is done).
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := l.renew(rctx, 0); err != nil {
				log.Error(err, "release node lease")
			}
			return nil
		case <-t.C:
		}
	}
}

// HealthyFor is how long this node's renewals have been succeeding
// without a miss (0 if the last one failed).
func (l *NodeLease) HealthyFor() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.healthySince.IsZero() || l.Clock.Since(l.lastRenew) > l.Duration {
		return 0
	}
	return l.Clock.Since(l.healthySince)
}

func (l *NodeLease) logCert() string {
	if l.LogCert != nil {
		return l.LogCert()
	}
	return l.Node.LogCertSHA256
}

func (l *NodeLease) renew(ctx context.Context, d time.Duration) error {
	err := l.write(ctx, d)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Clock.Now()
	if err != nil {
		l.healthySince = time.Time{}
		return err
	}
	if l.healthySince.IsZero() {
		l.healthySince = now
	}
	l.lastRenew = now
	return nil
}

func (l *NodeLease) write(ctx context.Context, d time.Duration) error {
	name := NodeLeasePrefix + l.Node.Name
	// Renew from what our last write returned: one write per renewal. After
	// a failure, read it again.
	l.mu.Lock()
	cur := l.current
	l.current = nil
	l.mu.Unlock()
	var lease coordinationv1.Lease
	create := false
	if cur != nil {
		lease = *cur
	} else if err := l.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: name}, &lease); err != nil {
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("get lease %s/%s: %w", l.Namespace, name, err)
		}
		create = true
	}
	lbl, err := json.Marshal(l.Node.Labels)
	if err != nil {
		return err
	}
	now := metav1.NewMicroTime(l.Clock.Now())
	secs := int32(d.Round(time.Second) / time.Second)
	renewed := now
	if d == 0 {
		// Release: the apiserver wants a positive duration, so the Lease is
		// written as renewed one second ago for one second: expired now.
		secs, renewed = 1, metav1.NewMicroTime(now.Add(-time.Second))
	}
	lease.Name, lease.Namespace = name, l.Namespace
	if lease.Labels == nil {
		lease.Labels = map[string]string{}
	}
	lease.Labels[NodeLeaseLabel] = "true"
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[annNodeLabels] = string(lbl)
	lease.Annotations[annMaxMemory] = strconv.FormatInt(l.Node.MaxMemoryBytes, 10)
	lease.Annotations[annMaxCPU] = strconv.FormatInt(l.Node.MaxMilliCPU, 10)
	if l.Node.Networks != nil {
		ns := make([]string, len(l.Node.Networks))
		for i, m := range l.Node.Networks {
			ns[i] = string(m)
		}
		lease.Annotations[annNetworks] = strings.Join(ns, ",")
	}
	if l.Node.LogAddress != "" {
		lease.Annotations[annLogAddress] = l.Node.LogAddress
	} else {
		delete(lease.Annotations, annLogAddress)
	}
	if pin := l.logCert(); pin != "" {
		lease.Annotations[annLogCert] = pin
	} else {
		delete(lease.Annotations, annLogCert)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != l.Node.Name || lease.Spec.AcquireTime == nil {
		lease.Spec.AcquireTime = &now
	}
	holder := l.Node.Name
	lease.Spec.HolderIdentity = &holder
	lease.Spec.LeaseDurationSeconds = &secs
	lease.Spec.RenewTime = &renewed
	if create {
		err = l.Client.Create(ctx, &lease)
	} else {
		err = l.Client.Update(ctx, &lease)
	}
	if err != nil {
		return fmt.Errorf("write lease %s/%s: %w", l.Namespace, name, err)
	}
	l.mu.Lock()
	l.current = &lease
	l.mu.Unlock()
	return nil
}
