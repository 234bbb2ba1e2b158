package controllers

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// TestUnitNodeLeasePublishesLogAPI: the Lease carries the log API's
// address and the pin of the certificate served at each renewal, and
// peers read back exactly those (a reloaded certificate is republished).
func TestUnitNodeLeasePublishesLogAPI(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).Build()
	pin := "aa11"
	l := &NodeLease{Client: c, Namespace: "fnlet-system", Duration: 10 * time.Second, RenewInterval: time.Second,
		Clock: clocktesting.NewFakePassiveClock(time.Now()),
		Node:  Node{Name: "n1", LogAddress: "10.0.0.1:8444"}, LogCert: func() string { return pin }}
	nodes := &LeaseNodes{Reader: c, Namespace: "fnlet-system"}
	for _, want := range []string{"aa11", "bb22", ""} {
		pin = want
		if err := l.renew(ctx, l.Duration); err != nil {
			t.Fatal(err)
		}
		got, err := nodes.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].LogAddress != "10.0.0.1:8444" || got[0].LogCertSHA256 != want {
			t.Fatalf("pin %q: peers read %+v", want, got)
		}
	}
}
