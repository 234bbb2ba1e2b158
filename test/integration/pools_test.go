package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"k8s.io/apimachinery/pkg/types"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

// poolContainers lists the IDs of pool key's pre-started containers in
// the suite's containerd namespace, claimed or not.
func poolContainers(t *testing.T, key string) []string {
	t.Helper()
	c, err := client.New(env.containerd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), env.ctrdNS)
	cs, err := c.Containers(ctx, fmt.Sprintf(`labels."%s"==%q`, ctrd.LabelPool, key))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ct := range cs {
		ids = append(ids, ct.ID())
	}
	slices.Sort(ids)
	return ids
}

// waitPool waits until the pool's status entry of node satisfies cond.
func waitPool(t *testing.T, key types.NamespacedName, node, what string, cond func(fnletv1.PoolNodeStatus) bool) fnletv1.PoolNodeStatus {
	t.Helper()
	var last fnletv1.PoolNodeStatus
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var p fnletv1.FunctionPool
		if err := env.k8s.Get(context.Background(), key, &p); err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Status.Nodes {
			if e.Node == node {
				last = e
				if cond(e) {
					return e
				}
			}
		}
	}
	t.Fatalf("pool %s on %s: not %s within 60s; last entry %+v", key, node, what, last)
	return last
}

// TestWarmPool: a FunctionPool keeps its containers ready on the node; a
// call that fits runs in one (status.pool) and one that does not (limits,
// volumes) runs cold; the pool refills; a restarted manager adopts the ready ones; a
// deleted pool leaves nothing behind.
func TestWarmPool(t *testing.T) {
	requireEnv(t)
	ns := newNamespace(t)
	const node = "it-pool"
	logDir := t.TempDir()
	mgr := startManager(t, node, logDir)
	ctx := context.Background()

	// The class of a call without limits on this manager: 256Mi by default.
	pool := utiltesting.MakeFunctionPool("warm", ns, testImage).ImagePullPolicy("Never").Size(2).Memory("256Mi").Obj()
	if err := env.k8s.Create(ctx, pool); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: "warm"}
	runtimeKey := ns + "/warm"
	waitPool(t, key, node, "2 ready", func(e fnletv1.PoolNodeStatus) bool { return e.Ready == 2 && e.Target == 2 && e.Digest != "" })

	// A call that fits runs warm, in one of the pool's containers.
	before := poolContainers(t, runtimeKey)
	fc := waitFinished(t, create(t, call("fits", ns, node).Args("-stdout-text", "warm").Obj()), 60*time.Second)
	expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
	if fc.Status.Pool != "warm" || !slices.Contains(before, fc.Status.ContainerID) {
		t.Fatalf("call ran in %s (pool %q), want one of the pool's %v", fc.Status.ContainerID, fc.Status.Pool, before)
	}
	if !strings.HasPrefix(fc.Status.Stdout, "warm\n") {
		t.Errorf("stdout %q", fc.Status.Stdout)
	}
	if b, err := os.ReadFile(filepath.Join(fc.Status.LogDir, "stdout")); err != nil || !strings.HasPrefix(string(b), "warm\n") {
		t.Errorf("full stdout in %s: %q, %v", fc.Status.LogDir, b, err)
	}

	// One that names the pool but asks for more memory runs cold and is
	// counted as the pool's miss.
	big := waitFinished(t, create(t, call("too-big", ns, node).Pool("warm").Memory("512Mi").Args("-exit", "3").Obj()), 60*time.Second)
	expectOutcome(t, big, fnletv1.PhaseFailed, fnletv1.ReasonError, i32(3))
	if big.Status.Pool != "" || big.Status.ContainerID != ctrd.ContainerID(string(big.UID)) {
		t.Errorf("a call over the pool's class ran in %s (pool %q), want its own container", big.Status.ContainerID, big.Status.Pool)
	}
	// So does one with a volume: a pre-started container's mounts were
	// fixed when it was made (miss reason Volumes).
	vol := waitFinished(t, create(t, call("with-volume", ns, node).Pool("warm").EmptyDir("work", "/work", "1Mi").Args("-exit", "0").Obj()), 60*time.Second)
	expectOutcome(t, vol, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
	if vol.Status.Pool != "" || vol.Status.ContainerID != ctrd.ContainerID(string(vol.UID)) {
		t.Errorf("a call with a volume ran in %s (pool %q), want its own container", vol.Status.ContainerID, vol.Status.Pool)
	}
	// The pool refills, and its entry counts the hit and the misses.
	e := waitPool(t, key, node, "refilled with 1 hit and 2 misses", func(e fnletv1.PoolNodeStatus) bool {
		return e.Ready == 2 && e.Hits == 1 && e.Misses == 2
	})
	if e.UpdatedAt == nil {
		t.Errorf("entry without updatedAt: %+v", e)
	}
	ready := poolContainers(t, runtimeKey)
	if len(ready) != 2 || slices.Contains(ready, fc.Status.ContainerID) {
		t.Fatalf("after one call the pool has %v; want 2 containers, not the used %s", ready, fc.Status.ContainerID)
	}

	// A restarted manager adopts the ready containers instead of making new
	// ones, and runs a call in one of them.
	mgr.Kill9()
	mgr.Restart()
	fc2 := waitFinished(t, create(t, call("after-restart", ns, node).Args("-stdout-text", "adopted").Obj()), 60*time.Second)
	expectOutcome(t, fc2, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
	if !slices.Contains(ready, fc2.Status.ContainerID) {
		t.Errorf("after the restart the call ran in %s, want an adopted container of %v", fc2.Status.ContainerID, ready)
	}

	// Deleting the pool removes its containers and their directories.
	if err := env.k8s.Delete(ctx, pool); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); len(poolContainers(t, runtimeKey)) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pool deleted, containers left: %v", poolContainers(t, runtimeKey))
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(logDir, "fnlet-warm-*"))
	for _, d := range dirs {
		if !strings.HasSuffix(fc.Status.LogDir, filepath.Base(d)) && !strings.HasSuffix(fc2.Status.LogDir, filepath.Base(d)) {
			t.Errorf("directory of an unused pre-started container left: %s", d)
		}
	}
}

// TestPoolImagePullFailed: a pool whose image cannot be pulled says so in
// its node's status entry (no ready container, the pull error as message)
// and with a Warning Event, once per distinct error; the node keeps no
// container of it and calls still run cold.
func TestPoolImagePullFailed(t *testing.T) {
	requireEnv(t)
	ns := newNamespace(t)
	const node = "it-pool-pull"
	startManager(t, node, t.TempDir())
	ctx := context.Background()

	// Nothing listens on port 1: the pull is refused at once, no network needed.
	const image = "127.0.0.1:1/fnlet/missing:v1"
	pool := utiltesting.MakeFunctionPool("unpullable", ns, image).Size(2).Obj()
	if err := env.k8s.Create(ctx, pool); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: "unpullable"}
	e := waitPool(t, key, node, "reporting the pull error", func(e fnletv1.PoolNodeStatus) bool { return e.Message != "" })
	if e.Ready != 0 || e.Digest != "" || !strings.Contains(e.Message, "pull "+image) {
		t.Errorf("entry %+v: want ready 0, no digest and a message about pulling %s", e, image)
	}
	testenv.Eventually(t, 30*time.Second, 50*time.Millisecond, "a Warning Event PoolImagePullFailed", func() error {
		if !hasEvent(t, key, "PoolImagePullFailed", "node "+node+": pull "+image) {
			return fmt.Errorf("no such event in namespace %s", ns)
		}
		return nil
	})
	if ids := poolContainers(t, ns+"/unpullable"); len(ids) > 0 {
		t.Errorf("containers of an unpullable pool: %v", ids)
	}

	// A call of the same image in the pool's namespace is not failed by the
	// pool: it runs (cold) and fails on its own pull, like any call.
	fc := waitFinished(t, create(t, call("same-image", ns, node).Image(image).Obj()), 60*time.Second)
	expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonImagePullFailed, nil)
	if fc.Status.Pool != "" {
		t.Errorf("call ran in pool %q", fc.Status.Pool)
	}
	// And a call of another image runs as if there were no pool.
	ok := waitFinished(t, create(t, call("other-image", ns, node).Obj()), 60*time.Second)
	expectOutcome(t, ok, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
}
