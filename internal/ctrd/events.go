package ctrd

import (
	"context"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
)

// Watch runs the runtime's single event subscription until ctx ends,
// calling fn for every event about a call. fn must be quick and must not
// call back into Watch; events of one container are delivered in order.
//
// containerd replays nothing, so after every (re)subscribe Watch re-lists
// the runtime's containers and sends EventExit for each exited one. It also
// polls the output caps (see limit.go). Watch returns nil when ctx ends.
func (r *Runtime) Watch(ctx context.Context, fn func(Event)) error {
	ctx = r.ctx(ctx)
	r.mu.Lock()
	r.watching++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.watching--; r.watching == 0 {
			r.limitKills = nil
		}
		r.mu.Unlock()
	}()
	tick := time.NewTicker(r.pollInterval)
	defer tick.Stop()
	var q serialQueue
	defer q.wait()
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return nil
		}
		sctx, cancel := context.WithCancel(ctx)
		envelopes, errs := r.client.Subscribe(sctx,
			`namespace==`+r.namespace+`,topic~="/tasks/"`)
		// Subscribe before listing: an exit between the two is then seen twice
		// (harmless) rather than never.
		if err := r.resync(ctx, fn); err != nil {
			log.G(ctx).WithError(err).Warn("fnlet: resync after subscribe failed")
		}
		streamErr := r.pump(ctx, &q, envelopes, errs, tick.C, fn)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		r.reconnects.Add(1)
		log.G(ctx).WithError(streamErr).Warn("fnlet: containerd event stream broken; reconnecting")
		r.waitServing(ctx)
	}
}

// Reconnects counts event-stream reconnections, for metrics.
func (r *Runtime) Reconnects() int64 { return r.reconnects.Load() }

func (r *Runtime) pump(ctx context.Context, q *serialQueue, envelopes <-chan *events.Envelope, errs <-chan error, tick <-chan time.Time, fn func(Event)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case env := <-envelopes:
			r.dispatch(ctx, q, env, fn)
		case <-tick:
			r.enforceOutputLimits(ctx, fn)
		}
	}
}

func (r *Runtime) dispatch(ctx context.Context, q *serialQueue, env *events.Envelope, fn func(Event)) {
	if env == nil || env.Event == nil {
		return
	}
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		log.G(ctx).WithError(err).WithField("topic", env.Topic).Debug("fnlet: undecodable event")
		return
	}
	var id string
	var kind EventKind
	var pid uint32
	switch e := v.(type) {
	case *eventstypes.TaskExit:
		if e.ID != e.ContainerID { // an exec'd process, not the call's init
			return
		}
		id, kind, pid = e.ContainerID, EventExit, e.Pid
	case *eventstypes.TaskOOM:
		id, kind = e.ContainerID, EventOOM
	default:
		return
	}
	if !strings.HasPrefix(id, containerPrefix) {
		return
	}
	q.run(id, func() {
		if kind == EventOOM {
			r.mu.Lock()
			seen := r.oom[id]
			r.oom[id] = true
			r.mu.Unlock()
			if seen { // one OOM kill can send dozens of TaskOOM events
				return
			}
		}
		h := r.handle(id)
		if h == nil {
			var err error
			if h, err = r.load(ctx, id); err != nil {
				return // deleted meanwhile
			}
		}
		// Only the exit of the task this handle holds ends the wait (and
		// the kill escalation): containerd's late cleanup of an interrupted
		// create publishes an exit for the same container ID while the task
		// made after it runs. Handlers get the event either way and read
		// State for the truth.
		if kind == EventExit && h.isTask(pid) {
			h.markExited()
		}
		ref := h.callRef()
		if ref.UID == "" {
			r.warmExited(id) // a pre-started container no call holds
			return
		}
		fn(Event{Kind: kind, Call: ref})
	})
}

// resync lists the runtime's containers and reports every exited task: the
// exits that happened while no stream was connected. It also repairs the
// inputs a containerd restart may have cut (see repairInputs).
func (r *Runtime) resync(ctx context.Context, fn func(Event)) error {
	states, err := r.List(ctx)
	if err != nil {
		return err
	}
	r.repairInputs(ctx, states)
	for _, s := range states {
		if s.Phase == PhaseExited {
			fn(Event{Kind: EventExit, Call: s.Call})
		}
	}
	return nil
}

func (r *Runtime) waitServing(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		// Reconnect re-dials at once instead of waiting out gRPC's backoff.
		if err := r.client.Reconnect(); err == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ok, _ := r.client.IsServing(pctx)
			cancel()
			if ok {
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// serialQueue runs functions in order per key and in parallel across keys
// (moby's libcontainerd queue): one container's events never race.
type serialQueue struct {
	mu    sync.Mutex
	tails map[string]chan struct{}
	wg    sync.WaitGroup
}

func (q *serialQueue) run(key string, fn func()) {
	q.mu.Lock()
	if q.tails == nil {
		q.tails = map[string]chan struct{}{}
	}
	prev := q.tails[key]
	done := make(chan struct{})
	q.tails[key] = done
	q.mu.Unlock()
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		if prev != nil {
			<-prev
		}
		fn()
		close(done)
		q.mu.Lock()
		if q.tails[key] == done {
			delete(q.tails, key)
		}
		q.mu.Unlock()
	}()
}

func (q *serialQueue) wait() { q.wg.Wait() }
