package ctrd

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fnlet/fnlet/internal/testenv/cninet"
)

// podNet makes a throwaway CNI network and a runtime option for it; at the
// end of the test nothing may be left on it.
func podNet(t *testing.T) (*cninet.Net, Opt) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs containerd and CNI plugins (-short)")
	}
	n := cninet.ForTest(t)
	return n, WithPodNetwork(n.ConfDir, cninet.BinDirs, n.NSDir, "")
}

func expectNoNetLeaks(t *testing.T, n *cninet.Net) {
	t.Helper()
	l, err := n.Count()
	if err != nil {
		t.Fatal(err)
	}
	if !l.Zero() {
		t.Errorf("left on the pod network: %s", l)
	}
}

// TestPodNetwork: a call serves HTTP on its own address, a second call on
// the pod network fetches from it, a call with no network cannot; every
// address, veth, masquerade chain and namespace goes with the calls. With
// a pool, the calls take namespaces attached ahead, and the pool's own go
// when the runtime closes.
func TestPodNetwork(t *testing.T) {
	for _, pool := range []int{0, 2} {
		t.Run(fmt.Sprintf("pool %d", pool), func(t *testing.T) { testPodNetwork(t, pool) })
	}
}

func testPodNetwork(t *testing.T, pool int) {
	n, opt := podNet(t)
	rt := newTestRuntime(t, "", opt, WithPodNetworkPool(pool))
	poolFilled := func() {
		if pool > 0 {
			poll(t, 30*time.Second, "pool filled", func() bool {
				rt.net.mu.Lock()
				defer rt.net.mu.Unlock()
				return len(rt.net.ready) == pool
			})
		}
	}
	poolFilled()
	ctx := ctxTimeout(t, 2*time.Minute)
	if _, err := rt.EnsureImage(ctx, testfnImage, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	server := testCall(t, "-http-serve", ":8080")
	server.PodNetwork = true
	st, err := rt.Run(ctx, server)
	if err != nil {
		t.Fatalf("Run server: %v", err)
	}
	waitOutput(t, rt, server.UID, "serving")
	_, subnet, _ := net.ParseCIDR(n.Subnet)
	if ip := net.ParseIP(st.IP); ip == nil || !subnet.Contains(ip) {
		t.Fatalf("server IP %q, want one in %s", st.IP, n.Subnet)
	}
	poolFilled() // the refill after the server's take runs at low priority
	if l, _ := n.Count(); l.Addresses != 1+pool || l.Veths != 1+pool || l.Chains != 1+pool || l.Pins != 1+pool {
		t.Errorf("with one call and %d ahead on the network: %s", pool, l)
	}
	if cniID, _ := os.ReadFile(n.NSDir + "/" + ContainerID(server.UID) + "/" + cniIDFile); pool > 0 != strings.HasPrefix(string(cniID), poolEntry) {
		t.Errorf("pool %d: the server's namespace was added as %q", pool, cniID)
	}

	fetch := func(pod bool) State {
		c := testCall(t, "-http-get", "http://"+st.IP+":8080/")
		c.PodNetwork = pod
		return runToExit(t, rt, c)
	}
	t.Run("pod network reaches it", func(t *testing.T) {
		s := fetch(true)
		stdout, _ := os.ReadFile(s.LogDir + "/stdout")
		if s.Result.ExitCode != 0 || !strings.HasPrefix(string(stdout), "served-by=") {
			t.Errorf("exit %d, stdout %q", s.Result.ExitCode, stdout)
		}
	})
	t.Run("network none does not", func(t *testing.T) {
		s := fetch(false)
		stderr, _ := os.ReadFile(s.LogDir + "/stderr")
		// 111 with the dial's error: refused for lack of a route, not a crash.
		if s.Result.ExitCode != 111 || !strings.Contains(string(stderr), "network is unreachable") {
			t.Errorf("a call without a network: exit %d, stderr %q; want 111 and network is unreachable", s.Result.ExitCode, stderr)
		}
	})
	if err := rt.Delete(ctx, server.UID); err != nil {
		t.Fatal(err)
	}
	rt.stop() // tears the pool down
	expectNoNetLeaks(t, n)
}

// TestPodNetworkAfterRestart: a manager that restarts (a new Runtime on
// the same directories) tears down the namespace of a call it did not set
// up, and Recover tears down a pin whose container is gone.
func TestPodNetworkAfterRestart(t *testing.T) {
	n, opt := podNet(t)
	io := t.TempDir()
	rt1 := newTestRuntime(t, io, opt)
	ctx := ctxTimeout(t, 2*time.Minute)
	if _, err := rt1.EnsureImage(ctx, busyboxImage, PullNever, nil); err != nil {
		t.Fatal(err)
	}
	call := Call{UID: newUID(t), Namespace: "default", Name: "sleeper", Image: busyboxImage, PodNetwork: true,
		Command: []string{"sh", "-c", "echo up; exec sleep 60"}}
	if _, err := rt1.Run(ctx, call); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, rt1, call.UID, "up")
	rt1.stop() // the manager goes; the call and its network stay

	// A pin with no container: what a manager killed between removing a
	// container and its network leaves.
	stray := "fnlet-" + newUID(t)
	if err := os.MkdirAll(n.NSDir+"/"+stray, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := pinNetNS(n.NSDir + "/" + stray + "/" + netnsFile); err != nil {
		t.Fatal(err)
	}

	rt2 := newTestRuntime(t, io, WithPodNetwork(n.ConfDir, cninet.BinDirs, n.NSDir, ""))
	if _, err := rt2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.NSDir + "/" + stray); !os.IsNotExist(err) {
		t.Errorf("Recover left the stray pin: %v", err)
	}
	if err := rt2.Delete(ctx, call.UID); err != nil {
		t.Fatal(err)
	}
	expectNoNetLeaks(t, n)
}
