package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// Metrics are the manager's Prometheus metrics. A nil *Metrics records
// nothing, so unit tests need not set one up.
type Metrics struct {
	calls         *prometheus.CounterVec
	applyToClaim  prometheus.Histogram
	claimToStart  prometheus.Histogram
	startToFinish prometheus.Histogram
	pull          prometheus.Histogram
	running       prometheus.Gauge
	warm          *prometheus.CounterVec
	prestart      prometheus.Histogram
}

// latencyBuckets span a fast call (tens of ms) to a long one (minutes).
var latencyBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// RuntimeCounters are the runtime's own counts of trouble with containerd.
type RuntimeCounters interface {
	// Reconnects counts event-stream reconnections.
	Reconnects() int64
	// CreateTimeouts counts task creates containerd did not answer in time.
	CreateTimeouts() int64
}

// NewMetrics registers fnlet's metrics, including rt's counters.
func NewMetrics(reg prometheus.Registerer, capacity int, rt RuntimeCounters) *Metrics {
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "fnlet", Name: name, Help: help, Buckets: latencyBuckets})
	}
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fnlet", Name: "calls_total",
			Help: "Calls that reached a phase on this node, by phase and reason."}, []string{"phase", "reason"}),
		applyToClaim:  h("apply_to_claim_seconds", "Time from a call's creation to its claim by this node."),
		claimToStart:  h("claim_to_start_seconds", "Time from claim to the container's start."),
		startToFinish: h("start_to_finish_seconds", "Time from the container's start to the call's final status."),
		pull:          h("image_pull_seconds", "Duration of image pulls that contacted a registry."),
		running:       prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "fnlet", Name: "running_calls", Help: "Calls claimed by this node and not finished."}),
		warm: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "fnlet", Name: "warm_starts_total",
			Help: "Calls of namespaces with pools, by result (hit: run in a pre-started container; miss: run cold) and the miss's reason."}, []string{"result", "reason"}),
		prestart: h("prestart_seconds", "Time to start one pre-started container of a pool (the refill)."),
	}
	capGauge := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "fnlet", Name: "capacity_calls", Help: "Maximum concurrent calls on this node."})
	capGauge.Set(float64(capacity))
	reg.MustRegister(m.calls, m.applyToClaim, m.claimToStart, m.startToFinish, m.pull, m.running, m.warm, m.prestart, capGauge,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "fnlet", Name: "event_stream_reconnects_total",
			Help: "Reconnections of the containerd event stream."}, func() float64 { return float64(rt.Reconnects()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "fnlet", Name: "task_create_timeouts_total",
			Help: "Task creates containerd did not answer within the create timeout (each retried with a new shim)."},
			func() float64 { return float64(rt.CreateTimeouts()) }))
	return m
}

func (m *Metrics) observeClaim(fc *fnletv1.FunctionCall) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(string(fnletv1.PhasePending), "Claimed").Inc()
	if fc.Status.ClaimedAt != nil {
		m.applyToClaim.Observe(fc.Status.ClaimedAt.Sub(fc.CreationTimestamp.Time).Seconds())
	}
}

func (m *Metrics) observeStart(fc *fnletv1.FunctionCall) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(string(fnletv1.PhaseRunning), "Started").Inc()
	if fc.Status.ClaimedAt != nil && fc.Status.StartedAt != nil {
		m.claimToStart.Observe(fc.Status.StartedAt.Sub(fc.Status.ClaimedAt.Time).Seconds())
	}
}

func (m *Metrics) observeFinish(fc *fnletv1.FunctionCall) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(string(fc.Status.Phase), string(fc.Status.Reason)).Inc()
	if fc.Status.StartedAt != nil && fc.Status.FinishedAt != nil {
		m.startToFinish.Observe(fc.Status.FinishedAt.Sub(fc.Status.StartedAt.Time).Seconds())
	}
}

func (m *Metrics) observePull(d time.Duration) {
	if m == nil {
		return
	}
	m.pull.Observe(d.Seconds())
}

func (m *Metrics) setRunning(n int) {
	if m == nil {
		return
	}
	m.running.Set(float64(n))
}

// observeWarm counts a call of a namespace with pools: a hit (miss empty)
// or a miss and its reason (ctrd.Miss*).
func (m *Metrics) observeWarm(miss string) {
	if m == nil {
		return
	}
	if miss == "" {
		m.warm.WithLabelValues("hit", "").Inc()
		return
	}
	m.warm.WithLabelValues("miss", miss).Inc()
}

func (m *Metrics) observePrestart(d time.Duration) {
	if m == nil {
		return
	}
	m.prestart.Observe(d.Seconds())
}
