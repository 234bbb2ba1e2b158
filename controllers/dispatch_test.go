package controllers

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

func TestUnitAfter(t *testing.T) {
	order := []string{"a", "b", "c"}
	cases := []struct {
		order []string
		n     string
		wrap  bool
		want  string
	}{
		{order, "a", false, "b"},
		{order, "c", false, ""},
		{order, "c", true, "a"},
		{order, "x", false, "a"},
		{[]string{"a"}, "a", true, ""},
		{nil, "x", true, ""},
	}
	for _, tc := range cases {
		if got := after(tc.order, tc.n, tc.wrap); got != tc.want {
			t.Errorf("after(%q, %q, wrap %v) = %q, want %q", tc.order, tc.n, tc.wrap, got, tc.want)
		}
	}
}

// The dispatchers are a few live nodes all managers agree on; one more
// live node changes them only when it ranks among them.
func TestUnitDispatchers(t *testing.T) {
	var live []string
	for i := range 50 {
		live = append(live, fmt.Sprint("node-", i))
	}
	d := dispatchers(live, 3)
	if len(d) != 3 {
		t.Fatalf("dispatchers = %q, want 3", d)
	}
	shuffled := slices.Clone(live)
	slices.Reverse(shuffled)
	if got := dispatchers(shuffled, 3); !slices.Equal(got, d) {
		t.Errorf("dispatchers depend on the order of the live set: %q vs %q", got, d)
	}
	without := slices.DeleteFunc(slices.Clone(live), func(n string) bool { return n == d[0] })
	if got := dispatchers(without, 3); !slices.Equal(got[:2], d[1:]) {
		t.Errorf("after %s left, dispatchers = %q, want %q first", d[0], got, d[1:])
	}
	if got := dispatchers(live[:2], 3); len(got) != 2 {
		t.Errorf("two live nodes: dispatchers %q, want both", got)
	}
}

// offerTurn, for every role a node can have for a call: the node the call
// is offered to, the dispatchers in their order, everyone else.
func TestUnitOfferTurn(t *testing.T) {
	const k = 2
	now := t0
	stagger := 100 * time.Millisecond
	live := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	d := rendezvous("", dispatchers(live, k)) // the test calls have no UID
	var others []string                       // neither dispatcher
	for _, n := range live {
		if !slices.Contains(d, n) {
			others = append(others, n)
		}
	}
	// The ranking of the call puts a non-dispatcher first, then a
	// dispatcher, then the rest.
	order := []string{others[0], d[1], others[1], others[2], d[0], others[3]}
	expires := map[string]time.Time{}
	for _, n := range live {
		expires[n] = now.Add(10 * time.Second)
	}
	expires["gone"] = now.Add(-5 * time.Second)
	call := func(offeredTo string, at time.Time) *fnletv1.FunctionCall {
		w := utiltesting.MakeFunctionCall("a", testNS)
		if offeredTo != "" {
			w.Label(OfferLabel, offeredTo)
			w.Annotations = map[string]string{annOfferedAt: at.Format(time.RFC3339Nano)}
		}
		return w.Obj()
	}
	cases := map[string]struct {
		self  string
		fc    *fnletv1.FunctionCall
		order []string // default: order
		// expires overrides the Leases' expiry (default: 10s from now).
		expires map[string]time.Time
		since   time.Time
		want    turn
	}{
		"offered to this node: it claims, passing it on when full": {
			self: others[1], fc: call(others[1], now),
			want: turn{claim: true, passTo: others[2]},
		},
		"offered to the last node that fits: nobody to pass it to": {
			self: others[3], fc: call(others[3], now),
			want: turn{claim: true},
		},
		"offered to this node, which no longer fits: to the first that does": {
			self: others[1], fc: call(others[1], now), order: []string{others[0], d[1]},
			want: turn{offerTo: others[0]},
		},
		"new call, first dispatcher: offers it to the first in rank at once": {
			self: d[0], fc: call("", time.Time{}), since: now,
			want: turn{offerTo: others[0]},
		},
		"new call, first dispatcher ranked first: claims it itself": {
			self: d[0], fc: call("", time.Time{}), since: now, order: []string{d[0], others[0]},
			want: turn{claim: true, passTo: others[0]},
		},
		"new call, second dispatcher: waits one stagger": {
			self: d[1], fc: call("", time.Time{}), since: now,
			want: turn{wait: stagger},
		},
		"new call, second dispatcher after its stagger: offers, reading afresh": {
			self: d[1], fc: call("", time.Time{}), since: now.Add(-stagger),
			want: turn{offerTo: others[0], fresh: true},
		},
		"new call, not a dispatcher: nothing": {
			self: others[2], fc: call("", time.Time{}), since: now,
		},
		"offered to a live node: look again when the offer times out": {
			self: d[0], fc: call(others[0], now.Add(-time.Second)), since: now.Add(-time.Second),
			want: turn{wait: offerTimeout - time.Second},
		},
		"offered to a live node whose Lease runs out first: look again then": {
			self: d[0], fc: call(others[0], now), since: now,
			expires: map[string]time.Time{others[0]: now.Add(time.Second)},
			want:    turn{wait: time.Second},
		},
		"offered, unclaimed past the timeout: the next node": {
			self: d[0], fc: call(others[0], now.Add(-offerTimeout)), since: now.Add(-offerTimeout),
			want: turn{offerTo: d[1], fresh: true},
		},
		"offered past the timeout, the next node is this dispatcher: claims": {
			self: d[1], fc: call(others[0], now.Add(-offerTimeout-stagger)), since: now.Add(-offerTimeout - stagger),
			want: turn{claim: true, passTo: others[1], fresh: true},
		},
		"offered to a node whose Lease ran out: the next at once": {
			self: d[0], fc: call("gone", now), since: now,
			want: turn{offerTo: others[0], fresh: true},
		},
		"offered to the only node that fits: nobody else to offer it to": {
			self: d[0], fc: call(others[0], now.Add(-time.Minute)), since: now.Add(-time.Minute), order: []string{others[0]},
			want: turn{wait: offerTimeout},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o := order
			if tc.order != nil {
				o = tc.order
			}
			exp := expires
			if tc.expires != nil {
				exp = tc.expires
			}
			p := placement{rank: slices.Index(o, tc.self), order: o, live: live, expires: exp}
			got := offerTurn(tc.fc, tc.self, p, k, now, func() time.Time { return tc.since }, stagger, offerTimeout)
			if got != tc.want {
				t.Errorf("offerTurn = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// With offers, the first dispatcher labels a new call for the node ranked
// first; that node, full, passes it down the ranking instead of holding it.
func TestUnitReconcileOffers(t *testing.T) {
	peers := []string{"node-c", "node-d", "node-e", "node-f"}
	all := append(slices.Clone(peers), testNode)
	nodes := staticNodes{}
	for _, p := range peers {
		nodes = append(nodes, liveNode(p))
	}
	order := rendezvous(uidOf("a"), all)
	d := rendezvous(uidOf("a"), dispatchers(all, 2))

	t.Run("dispatcher offers", func(t *testing.T) {
		h := newHarness(t, newCall("a").Obj())
		h.r.Nodes, h.r.Dispatchers = nodes, 2
		h.rt.withImages(image)
		h.mustReconcile("a")
		got := h.mustCall("a")
		switch {
		case d[0] != testNode:
			if got.Labels[OfferLabel] != "" || got.Status.NodeName != "" {
				t.Errorf("not the first dispatcher, yet wrote: offer %q, node %q", got.Labels[OfferLabel], got.Status.NodeName)
			}
		case order[0] == testNode:
			if got.Status.NodeName != testNode {
				t.Errorf("the dispatcher ranked first did not claim (node %q)", got.Status.NodeName)
			}
		default:
			if got.Labels[OfferLabel] != order[0] || got.Status.NodeName != "" {
				t.Errorf("offered to %q (node %q), want offered to %s", got.Labels[OfferLabel], got.Status.NodeName, order[0])
			}
		}
	})

	t.Run("a full node passes its offer on", func(t *testing.T) {
		i := slices.Index(order, testNode)
		if i == len(order)-1 {
			t.Skip("ranked last: nobody to pass to")
		}
		busy := runningCall("busy").Memory("64Mi").Obj()
		offered := newCall("a").Label(OfferLabel, testNode).Obj()
		h := newHarness(t, busy, offered)
		h.r.Nodes, h.r.Dispatchers, h.r.Capacity.MaxCalls = nodes, 2, 1
		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		got := h.mustCall("a")
		if got.Labels[OfferLabel] != order[i+1] || got.Status.NodeName != "" {
			t.Errorf("offered to %q (node %q), want passed on to %s", got.Labels[OfferLabel], got.Status.NodeName, order[i+1])
		}
		checkRuntime(t, h.rt.recorded(), nil)
	})

	t.Run("not a dispatcher, not offered: nothing", func(t *testing.T) {
		h := newHarness(t, newCall("a").Label(OfferLabel, "node-c").Obj())
		h.r.Nodes, h.r.Dispatchers, h.r.NodeLabels = nodes, 2, labels.Set{}
		if slices.Contains(d, testNode) {
			t.Skip("this node is a dispatcher for this live set")
		}
		checkResult(t, h.mustReconcile("a"), ctrl.Result{})
		if w := h.statusWrites(); len(w) != 0 {
			t.Errorf("status writes %q", w)
		}
	})
}

func TestUnitSpreadChoose(t *testing.T) {
	now := time.Unix(1000, 0)
	order := []string{"a", "b", "c", "d"}
	cases := []struct {
		name  string
		given map[string]int // calls given to each node, at now
		at    time.Time
		want  []string
	}{
		{"no history: rendezvous order", nil, now, order},
		{"tie: rendezvous order", map[string]int{"a": 2, "b": 2, "c": 2}, now, order},
		{"first is heavier: the lightest goes first", map[string]int{"a": 3, "b": 1}, now, []string{"c", "b", "a", "d"}},
		{"second lightest of the three", map[string]int{"a": 3, "b": 1, "c": 2}, now, []string{"b", "a", "c", "d"}},
		{"only the first three count", map[string]int{"a": 1, "b": 2, "c": 2}, now, order},
		{"decayed counts still compare", map[string]int{"a": 3, "b": 1, "c": 2}, now.Add(10 * spreadDecay), []string{"b", "a", "c", "d"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var s spread
			for n, k := range tc.given {
				for range k {
					s.gave(n, now)
				}
			}
			if got := s.choose(order, tc.at); !slices.Equal(got, tc.want) {
				t.Errorf("choose = %v, want %v", got, tc.want)
			}
			if !slices.Equal(order, []string{"a", "b", "c", "d"}) {
				t.Errorf("choose changed its argument: %v", order)
			}
		})
	}
	if got := (&spread{}).choose([]string{"a"}, now); !slices.Equal(got, []string{"a"}) {
		t.Errorf("one node: %v", got)
	}
}

// TestUnitSpreadBalances places 9 calls per node on 100 nodes, as make
// scale does, by rendezvous order alone and with spread (three dispatchers,
// each balancing the calls it is first for): the busiest node's load over
// the mean must fall from about 2 to at most 1.5 (the bound).
func TestUnitSpreadBalances(t *testing.T) {
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("node-%d", i))
	}
	const calls = 900
	maxOverMean := func(count map[string]int) float64 {
		m := 0
		for _, c := range count {
			m = max(m, c)
		}
		return float64(m) * float64(len(names)) / calls
	}
	now := time.Unix(1000, 0)
	plain, spreadCount := map[string]int{}, map[string]int{}
	ds := dispatchers(names, DefaultDispatchers)
	byDispatcher := map[string]*spread{}
	for _, d := range ds {
		byDispatcher[d] = &spread{}
	}
	for i := range calls {
		uid := fmt.Sprintf("call-%d", i)
		order := rendezvous(uid, names)
		plain[order[0]]++
		s := byDispatcher[rendezvous(uid, ds)[0]]
		n := s.choose(order, now)[0]
		s.gave(n, now)
		spreadCount[n]++
		now = now.Add(50 * time.Millisecond) // 20 calls/s
	}
	p, sp := maxOverMean(plain), maxOverMean(spreadCount)
	t.Logf("busiest node / mean: rendezvous alone %.2f, with spread %.2f", p, sp)
	if sp > 1.5 {
		t.Errorf("with spread the busiest node runs %.2f× the mean, want <= 1.5", sp)
	}
	if sp >= p {
		t.Errorf("spread (%.2f) no better than rendezvous alone (%.2f)", sp, p)
	}
}

// TestUnitDispatchWatchSendsOnlyWhatGetReads: an event of the watch's
// initial list must not reach the reconciler before Get can read its call
// (a reconcile that read NotFound dropped the call for good).
func TestUnitDispatchWatchSendsOnlyWhatGetReads(t *testing.T) {
	fc := utiltesting.MakeFunctionCall("early", "ns").Obj()
	c := &gatedCache{inf: &handlerInformer{handlers: make(chan toolscache.ResourceEventHandler, 1)}, synced: make(chan struct{}), obj: fc}
	out := make(chan event.GenericEvent, 1)
	w := &DispatchWatch{Nodes: noNodes{}, Self: "a", Dispatchers: 3, Interval: time.Hour, Clock: clock.RealClock{},
		NewCache: func() (cache.Cache, error) { return c, nil }, Out: out}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = w.Start(ctx)
	}()
	defer func() {
		cancel()
		<-stopped
	}()
	h := <-c.inf.handlers
	go h.OnAdd(fc, true) // as the initial list does, before the cache syncs

	readable := func(ev event.GenericEvent) {
		t.Helper()
		var got fnletv1.FunctionCall
		if err := w.Get(ctx, client.ObjectKeyFromObject(ev.Object), &got); err != nil {
			t.Fatalf("event for %s sent, but Get says: %v", ev.Object.GetName(), err)
		}
	}
	select {
	case ev := <-out:
		readable(ev) // early is fine only if Get already reads it
	case <-time.After(200 * time.Millisecond):
	}
	close(c.synced)
	select {
	case ev := <-out:
		readable(ev)
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the call after the cache synced")
	}
}

type noNodes struct{}

func (noNodes) Nodes(context.Context) ([]Node, error) { return nil, nil }

// gatedCache syncs when synced closes and reads obj for any key.
type gatedCache struct {
	cache.Cache // nil: only the methods below are used
	inf         *handlerInformer
	synced      chan struct{}
	obj         *fnletv1.FunctionCall
}

func (c *gatedCache) GetInformer(context.Context, client.Object, ...cache.InformerGetOption) (cache.Informer, error) {
	return c.inf, nil
}

func (c *gatedCache) Start(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (c *gatedCache) WaitForCacheSync(ctx context.Context) bool {
	select {
	case <-c.synced:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *gatedCache) Get(_ context.Context, _ client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	c.obj.DeepCopyInto(obj.(*fnletv1.FunctionCall))
	return nil
}

type handlerInformer struct {
	cache.Informer // nil: only AddEventHandler is used
	handlers       chan toolscache.ResourceEventHandler
}

func (i *handlerInformer) AddEventHandler(h toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error) {
	i.handlers <- h
	return nil, nil
}
