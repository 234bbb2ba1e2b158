package ctrd

import (
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
)

// A lease without a container (a manager killed between making the two)
// is a stray: StrayLeases reports it, Delete removes it. A lease of a
// create under way in this process, or younger than minAge, is not.
func TestStrayLeases(t *testing.T) {
	rt := newTestRuntime(t, "")
	c, ctx := rawClient(t)
	stray := newUID(t)
	if _, err := c.LeasesService().Create(ctx, leases.WithID(ContainerID(stray)), leases.WithExpiration(time.Hour)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.LeasesService().Delete(ctx, leases.Lease{ID: ContainerID(stray)}) })
	inFlight := newUID(t)
	if _, err := c.LeasesService().Create(ctx, leases.WithID(ContainerID(inFlight)), leases.WithExpiration(time.Hour)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.LeasesService().Delete(ctx, leases.Lease{ID: ContainerID(inFlight)}) })
	rt.Runtime.mu.Lock()
	rt.Runtime.leased[ContainerID(inFlight)] = true
	rt.Runtime.mu.Unlock()

	got, err := rt.StrayLeases(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, stray) || slices.Contains(got, inFlight) {
		t.Fatalf("StrayLeases = %v, want %s and not %s (in flight)", got, stray, inFlight)
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
