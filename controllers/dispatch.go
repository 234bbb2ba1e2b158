package controllers

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// Offers shard the watch of unassigned calls. With more live nodes than
// Dispatchers, a node watches only the unassigned calls offered to it
// (label OfferLabel=<node>); the few dispatchers, the first Dispatchers
// live nodes in rendezvous order for DispatchKey, also watch every
// unassigned call. The first dispatcher offers a new call to the node
// ranked first for it (see place), or claims it itself when it is that
// node; the others act only if it has not, one stagger later each. A
// node offered a call claims it; a full one passes it on down the
// ranking at once. A call whose node died, or that stays unclaimed
// offerTimeout after its offer, is offered to the next node. The offer
// is a metadata write with the resourceVersion read, the claim stays the
// status write it always was: exactly one node wins either.
//
// What this buys: a call's watch events reach the dispatchers and the
// node it is offered to, not every node (CRD selectable fields and labels
// are not indexed in the apiserver's watch cache, so every event is still
// matched against every watch, but it is sent and decoded only where it
// matches). What it costs: a call that the first dispatcher does not run
// itself takes one more write (the offer) and one more watch round trip
// before its claim.
const (
	OfferLabel         = "fnlet.dev/offered-to"
	annOfferedAt       = "fnlet.dev/offered-at"
	DispatchKey        = "fnlet/dispatch"
	DefaultDispatchers = 3
	offerTimeout       = 3 * time.Second
)

// dispatchers are the first k live nodes in rendezvous order for DispatchKey.
func dispatchers(live []string, k int) []string {
	order := rendezvous(DispatchKey, live)
	return order[:min(k, len(order))]
}

// dispatchOrder is the order in which the dispatchers act for the call:
// each is first for its share of the calls, so no one dispatcher's
// workers bound the rate at which calls are offered.
func dispatchOrder(fc *fnletv1.FunctionCall, live []string, k int) []string {
	return rendezvous(string(fc.UID), dispatchers(live, k))
}

// after is the node after n in order: the first when n is not in it,
// wrapping around when wrap is set, "" when there is no other node.
func after(order []string, n string, wrap bool) string {
	i := slices.Index(order, n)
	switch {
	case i < 0 && len(order) > 0:
		return order[0]
	case i < 0, len(order) == 1, i == len(order)-1 && !wrap:
		return ""
	}
	return order[(i+1)%len(order)]
}

// offeredAt is when the call was offered to its node (zero if unknown).
func offeredAt(fc *fnletv1.FunctionCall) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, fc.Annotations[annOfferedAt])
	return t
}

// turn is what a node does next about an unassigned call: claim it,
// offer it to another node, or look again after wait (none of them:
// leave it to others).
type turn struct {
	claim   bool
	offerTo string
	wait    time.Duration
	// fresh: read the call afresh before writing, the turn came after a
	// wait and the node before us most likely acted already.
	fresh bool
	// passTo is the node to offer the call to when this node has no room
	// ("": wait for room).
	passTo string
}

// offerTurn is a node's turn for a schedulable call when offers shard the
// watch (see Offers above): self is the node, p its placement of the call
// with k dispatchers, since when it first saw the call waiting (asked
// only when needed); timeout is how long an offer may stay unclaimed.
func offerTurn(fc *fnletv1.FunctionCall, self string, p placement, k int, now time.Time, since func() time.Time, stagger, timeout time.Duration) turn {
	offered := fc.Labels[OfferLabel]
	if offered == self {
		if p.rank < 0 {
			return turn{offerTo: p.order[0]} // it no longer fits here
		}
		return turn{claim: true, passTo: after(p.order, self, false)}
	}
	d := slices.Index(dispatchOrder(fc, p.live, k), self)
	if d < 0 {
		return turn{} // offered to another node, and not ours to watch over
	}
	target, stale, recheck := p.order[0], since(), time.Time{}
	if offered != "" {
		if slices.Contains(p.order, offered) {
			// Live: give it time, but look again when its Lease runs out.
			stale = maxTime(stale, offeredAt(fc).Add(timeout))
			recheck = p.expires[offered]
		} else if t, ok := p.expires[offered]; ok {
			stale = maxTime(stale, t) // dead since then
		}
		target = after(p.order, offered, true)
		if target == "" || target == offered {
			return turn{wait: timeout} // no other node to offer it to
		}
	}
	if due := stale.Add(claimDelay(d, stagger)); due.After(now) {
		if !recheck.IsZero() && recheck.Before(due) {
			due = maxTime(recheck, now.Add(time.Millisecond))
		}
		return turn{wait: due.Sub(now)}
	}
	t := turn{fresh: d > 0 || offered != ""}
	if target == self {
		t.claim, t.passTo = true, after(p.order, self, false)
	} else {
		t.offerTo = target
	}
	return t
}

// spread balances the calls a dispatcher places: of the first
// spreadChoices nodes ranked for a new call, it offers the call to the one
// it has given fewer calls lately (the "power of d choices"). Rendezvous
// order alone places calls uniformly at random, so the busiest node runs
// about twice the mean at a few calls per node (measured by make scale);
// choosing the lightest of a few bounds that gap. Each dispatcher counts
// only the calls it places, so no state is shared and no write is added.
// Counts decay (spreadDecay) so a node that came back recently, or a load
// of the past, does not weigh for ever. Zero value ready; safe for
// concurrent use.
type spread struct {
	mu    sync.Mutex
	given map[string]decayed
}

type decayed struct {
	n  float64
	at time.Time
}

// spreadChoices is how many of the first ranked nodes a dispatcher
// chooses from: two already bound the gap for one dispatcher; three keep
// it bounded when several dispatchers each balance only their share.
const spreadChoices = 3

// spreadDecay is the time constant of the placed-call counts.
const spreadDecay = time.Minute

func (d decayed) value(now time.Time) float64 {
	if dt := now.Sub(d.at); dt > 0 {
		return d.n * math.Exp(-float64(dt)/float64(spreadDecay))
	}
	return d.n
}

// choose reorders order (the nodes that fit a new call, in rendezvous
// order) so that its first node is the lightest of its first
// spreadChoices. Ties keep the rendezvous order.
func (s *spread) choose(order []string, now time.Time) []string {
	n := min(len(order), spreadChoices)
	if n < 2 {
		return order
	}
	best, least := 0, 0.0
	s.mu.Lock()
	for i, node := range order[:n] {
		if v := s.given[node].value(now); i == 0 || v < least {
			best, least = i, v
		}
	}
	s.mu.Unlock()
	if best == 0 {
		return order
	}
	out := slices.Clone(order)
	out[0], out[best] = out[best], out[0]
	return out
}

// gave counts a call placed on node.
func (s *spread) gave(node string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.given == nil {
		s.given = map[string]decayed{}
	}
	s.given[node] = decayed{n: s.given[node].value(now) + 1, at: now}
	if len(s.given) > 4096 {
		// Nodes that left: drop those whose count has decayed away.
		for k, v := range s.given {
			if v.value(now) < 0.01 {
				delete(s.given, k)
			}
		}
	}
}

// writeLatency is a moving average of how long this node's claim and
// offer writes take. The waits that give another node time to write
// (the stagger, the offer timeout) grow with it: with an apiserver that
// takes a second per write, a 200ms stagger would only make conflicts.
type writeLatency struct {
	mu  sync.Mutex
	avg time.Duration
}

func (l *writeLatency) observe(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.avg == 0 {
		l.avg = d
	} else {
		l.avg += (d - l.avg) / 8
	}
}

// atLeast is d, or n times the average write latency when that is longer.
func (l *writeLatency) atLeast(d time.Duration, n int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(d, time.Duration(n)*l.avg)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// ---- the dispatchers' watch ----

// DispatchWatch holds this node's watch of every unassigned call while
// the node is a dispatcher, and none otherwise. Every Interval it looks
// at the live Leases; when the node becomes a dispatcher it starts a cache
// of the unassigned calls (NewCache) whose changes go to Out, and when it
// stops being one it stops that cache. Get reads the cache (NotFound
// while there is none).
type DispatchWatch struct {
	Nodes       NodeLister
	Self        string
	Dispatchers int
	Interval    time.Duration
	Clock       clock.PassiveClock
	NewCache    func() (cache.Cache, error)
	Out         chan<- event.GenericEvent
	// OnEvent, when set, sees every watch event (the scale harness counts them).
	OnEvent func()

	mu  sync.Mutex
	cur cache.Cache // synced; nil while not a dispatcher
}

var _ manager.Runnable = (*DispatchWatch)(nil)
var _ client.Reader = (*DispatchWatch)(nil)

func (w *DispatchWatch) NeedLeaderElection() bool { return false }

// Start owns the cache's goroutine: it stops it before it returns.
func (w *DispatchWatch) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("dispatch-watch")
	t := time.NewTicker(w.Interval)
	defer t.Stop()
	var stop context.CancelFunc
	var done chan struct{}
	halt := func() {
		stop()
		w.mu.Lock()
		w.cur = nil
		w.mu.Unlock()
		<-done
		stop = nil
	}
	defer func() {
		if stop != nil {
			halt()
		}
	}()
	for {
		want, err := w.isDispatcher(ctx)
		switch {
		case err != nil:
			log.Error(err, "list nodes")
		case want && stop == nil:
			cctx, cancel := context.WithCancel(ctx)
			if done, err = w.start(cctx); err != nil {
				cancel()
				log.Error(err, "start the watch of unassigned calls")
			} else {
				stop = cancel
				log.V(1).Info("dispatcher: watching every unassigned call")
			}
		case !want && stop != nil:
			halt()
			log.V(1).Info("no longer a dispatcher")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (w *DispatchWatch) isDispatcher(ctx context.Context) (bool, error) {
	nodes, err := w.Nodes.Nodes(ctx)
	if err != nil {
		return false, err
	}
	now := w.Clock.Now()
	live := []string{w.Self}
	for _, n := range nodes {
		if n.Name != w.Self && n.Live(now) {
			live = append(live, n.Name)
		}
	}
	return slices.Contains(dispatchers(live, w.Dispatchers), w.Self), nil
}

// start runs a new cache until ctx ends; done closes when it has stopped.
func (w *DispatchWatch) start(ctx context.Context) (chan struct{}, error) {
	c, err := w.NewCache()
	if err != nil {
		return nil, err
	}
	inf, err := c.GetInformer(ctx, &fnletv1.FunctionCall{})
	if err != nil {
		return nil, err
	}
	// synced closes once Get reads from c. The initial list's events come
	// before that: sent at once, their reconcile would read NotFound and
	// drop a call that nothing changes again (seen as a call never claimed
	// when it was created just as the node became a dispatcher). Handlers
	// run on the informer's own listener goroutine, so holding them back
	// does not hold back the sync.
	synced := make(chan struct{})
	send := func(obj any) {
		if w.OnEvent != nil {
			w.OnEvent()
		}
		fc, ok := obj.(*fnletv1.FunctionCall)
		if !ok {
			return // a delete: claimed or gone, nothing to dispatch
		}
		select {
		case <-synced:
		case <-ctx.Done():
			return
		}
		select {
		case w.Out <- event.GenericEvent{Object: fc}:
		case <-ctx.Done():
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    send,
		UpdateFunc: func(_, obj any) { send(obj) },
		DeleteFunc: func(any) {
			if w.OnEvent != nil {
				w.OnEvent()
			}
		},
	}); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = c.Start(ctx)
	}()
	go func() { // returns when the cache syncs or ctx ends
		defer wg.Done()
		if c.WaitForCacheSync(ctx) {
			w.mu.Lock()
			if ctx.Err() == nil {
				w.cur = c
				close(synced)
			}
			w.mu.Unlock()
		}
	}()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	return done, nil
}

func (w *DispatchWatch) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	w.mu.Lock()
	c := w.cur
	w.mu.Unlock()
	if c == nil {
		return apierrors.NewNotFound(schema.GroupResource{Group: fnletv1.GroupVersion.Group, Resource: "functioncalls"}, key.Name)
	}
	return c.Get(ctx, key, obj, opts...)
}

func (w *DispatchWatch) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	w.mu.Lock()
	c := w.cur
	w.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.List(ctx, list, opts...)
}

// Readers reads an object from the first of its readers that has it.
type Readers []client.Reader

func (rs Readers) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	var err error = apierrors.NewNotFound(schema.GroupResource{}, key.Name)
	for _, r := range rs {
		if err = r.Get(ctx, key, obj, opts...); !apierrors.IsNotFound(err) {
			return err
		}
	}
	return err
}

// List lists from the first reader only.
func (rs Readers) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return rs[0].List(ctx, list, opts...)
}
