package ctrd

import (
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
)

// A lease of this runtime's owner without a container (a manager killed
// between making the two) is a stray: StrayLeases reports it, Delete
// removes it. A lease of a create under way in this process, one younger
// than minAge, or one of another owner sharing the namespace, is not.
func TestStrayLeases(t *testing.T) {
	rt := newTestRuntime(t, "", WithOwner("node-a"))
	c, ctx := rawClient(t)
	lease := func(owner string) string {
		uid := newUID(t)
		if _, err := c.LeasesService().Create(ctx, leases.WithID(ContainerID(uid)), leases.WithExpiration(time.Hour),
			leases.WithLabel(LabelLeaseOwner, owner)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.LeasesService().Delete(ctx, leases.Lease{ID: ContainerID(uid)}) })
		return uid
	}
	stray, inFlight, others := lease("node-a"), lease("node-a"), lease("node-b")
	rt.Runtime.mu.Lock()
	rt.Runtime.leased[ContainerID(inFlight)] = true
	rt.Runtime.mu.Unlock()

	got, err := rt.StrayLeases(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, stray) || slices.Contains(got, inFlight) || slices.Contains(got, others) {
		t.Fatalf("StrayLeases = %v, want %s and neither %s (in flight) nor %s (another owner's)", got, stray, inFlight, others)
	}
	if got, _ := rt.StrayLeases(ctx, time.Hour); slices.Contains(got, stray) {
		t.Errorf("a lease younger than minAge is reported: %v", got)
	}
	if err := rt.Delete(ctx, stray); err != nil {
		t.Fatal(err)
	}
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.ID == ContainerID(stray) {
			t.Fatal("Delete left the stray lease")
		}
	}
}
