package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

// healthyLease is this node's Lease, renewed without a miss for an hour.
func healthyLease(h *harness) *NodeLease {
	return &NodeLease{Duration: 2 * time.Second, Clock: h.clock, healthySince: t0.Add(-time.Hour), lastRenew: t0}
}

// What a lost node's calls become, decided by the one live manager that
// acts for that node.
func TestUnitNodeLossTakeOver(t *testing.T) {
	lost := Node{Name: otherNode, ExpiresAt: t0.Add(-10 * time.Second)}
	onLostW := func(name string) *utiltesting.FunctionCallWrapper {
		return newCall(name).Finalizers(Finalizer).ClaimedBy(otherNode)
	}
	onLost := func(name string) *fnletv1.FunctionCall { return onLostW(name).Obj() }
	type want struct {
		phase      fnletv1.CallPhase
		reason     fnletv1.CallReason
		node       string
		attempts   int32
		message    string
		claimed    string // Claimed condition "Status/Reason"
		finished   bool   // the finished label
		sameStatus bool
	}
	cases := map[string]struct {
		call *fnletv1.FunctionCall
		want want
	}{
		"running, no retries: Failed/NodeLost": {
			call: newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Obj(),
			want: want{phase: fnletv1.PhaseFailed, reason: fnletv1.ReasonNodeLost, node: otherNode, attempts: 1,
				message: "node node-b was lost: its lease expired at", finished: true},
		},
		"running, a retry left: back to unassigned, attempt counted": {
			call: newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Retries(1).Obj(),
			want: want{phase: fnletv1.PhasePending, attempts: 1, claimed: "False/NodeLost",
				message: "node node-b was lost"},
		},
		"claimed, not started yet, no retries: the attempt counts": {
			call: onLost("a"),
			want: want{phase: fnletv1.PhaseFailed, reason: fnletv1.ReasonNodeLost, node: otherNode, attempts: 1, finished: true},
		},
		// The Running write is deferred: a node killed before it had
		// started an attempt the status does not show yet.
		"requeued once, claimed again and lost before its Running write: that attempt counts too": {
			call: onLostW("a").Attempts(1).Retries(1).Obj(),
			want: want{phase: fnletv1.PhaseFailed, reason: fnletv1.ReasonNodeLost, node: otherNode, attempts: 2, finished: true},
		},
		"a retry under way after a failed attempt: the retry counts": {
			call: newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Retries(2).
				Condition(metav1.Condition{Type: conditionRetrying, Status: metav1.ConditionTrue, Reason: "RuntimeError"}).Obj(),
			want: want{phase: fnletv1.PhasePending, attempts: 2, claimed: "False/NodeLost", message: "attempt 2 counted"},
		},
		"past its deadline: TimedOut, even with retries left": {
			call: newCall("a").Now(t0.Add(-time.Hour)).Finalizers(Finalizer).ClaimedBy(otherNode).Running().Retries(3).Obj(),
			want: want{phase: fnletv1.PhaseFailed, reason: fnletv1.ReasonTimedOut, node: otherNode, attempts: 1,
				message: "passed while its node node-b was lost", finished: true},
		},
		"finished before the node was lost: only released": {
			call: newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Succeeded().Obj(),
			want: want{phase: fnletv1.PhaseSucceeded, reason: fnletv1.ReasonCompleted, node: otherNode, attempts: 1, finished: true, sameStatus: true},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.r.Nodes = staticNodes{lost}
			d := &NodeLossDetector{Calls: h.r, Lease: healthyLease(h), Grace: 5 * time.Second}
			before := h.mustCall("a")

			if err := d.scan(context.Background()); err != nil {
				t.Fatal(err)
			}

			got := h.mustCall("a")
			if got.Status.Phase != tc.want.phase || got.Status.Reason != tc.want.reason || got.Status.NodeName != tc.want.node || got.Status.Attempts != tc.want.attempts {
				t.Errorf("phase/reason/node/attempts = %s/%s/%q/%d, want %s/%s/%q/%d", got.Status.Phase, got.Status.Reason, got.Status.NodeName, got.Status.Attempts,
					tc.want.phase, tc.want.reason, tc.want.node, tc.want.attempts)
			}
			if tc.want.sameStatus && got.Status.Message != before.Status.Message {
				t.Errorf("status of a finished call changed: %q", got.Status.Message)
			}
			msg := got.Status.Message
			if c := meta.FindStatusCondition(got.Status.Conditions, fnletv1.ConditionClaimed); tc.want.claimed != "" {
				if c == nil || string(c.Status)+"/"+c.Reason != tc.want.claimed {
					t.Errorf("Claimed condition %+v, want %s", c, tc.want.claimed)
				} else {
					msg = c.Message
				}
			}
			if !strings.Contains(msg, tc.want.message) {
				t.Errorf("message %q, want it to contain %q", msg, tc.want.message)
			}
			if controllerutil.ContainsFinalizer(got, Finalizer) {
				t.Error("the lost node's finalizer is still there")
			}
			if (got.Labels[fnletv1.LabelFinished] == "true") != tc.want.finished {
				t.Errorf("finished label %v, want %v", got.Labels, tc.want.finished)
			}
			if !tc.want.sameStatus {
				checkEvents(t, h.events(), []string{"Warning NodeLost"})
			}
		})
	}
}

// Nobody acts too early, or twice: within the grace period, while this
// node's own renewals are not proven, or when another live node is the one
// that acts for the lost node.
func TestUnitNodeLossWhoActs(t *testing.T) {
	call := func() client.Object { return newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Obj() }
	// A live peer that rendezvous puts first for the lost node.
	var first string
	for i := range 100 {
		p := fmt.Sprint("node-", i)
		if rendezvous("node/"+otherNode, []string{testNode, p})[0] == p {
			first = p
			break
		}
	}
	if first == "" {
		t.Fatal("no peer ranks above this node: pick other names")
	}
	cases := map[string]struct {
		nodes   staticNodes
		lease   func(h *harness) *NodeLease
		wantAct bool
	}{
		"expired beyond the grace: acts": {
			nodes: staticNodes{{Name: otherNode, ExpiresAt: t0.Add(-6 * time.Second)}}, lease: healthyLease, wantAct: true,
		},
		"expired within the grace: waits": {
			nodes: staticNodes{{Name: otherNode, ExpiresAt: t0.Add(-4 * time.Second)}}, lease: healthyLease,
		},
		"own renewals not proven for a lease duration: waits": {
			nodes: staticNodes{{Name: otherNode, ExpiresAt: t0.Add(-time.Minute)}},
			lease: func(h *harness) *NodeLease {
				return &NodeLease{Duration: 2 * time.Second, Clock: h.clock, healthySince: t0.Add(-time.Second), lastRenew: t0}
			},
		},
		"another live node acts for it": {
			nodes: staticNodes{{Name: otherNode, ExpiresAt: t0.Add(-time.Minute)}, liveNode(first)}, lease: healthyLease,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, call())
			h.r.Nodes = tc.nodes
			d := &NodeLossDetector{Calls: h.r, Lease: tc.lease(h), Grace: 5 * time.Second}
			if err := d.scan(context.Background()); err != nil {
				t.Fatal(err)
			}
			acted := h.mustCall("a").IsFinished()
			if acted != tc.wantAct {
				t.Errorf("took over: %v, want %v", acted, tc.wantAct)
			}
		})
	}
}
