package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/cninet"
)

// TestPodNetworkCalls: calls with network: pod, on a manager whose node
// has a pod network (a throwaway bridge): one serves HTTP on its podIP,
// another fetches from it, one without a network cannot; a node without
// the pod network refuses such a call with a reason that says why. Calls
// end every way — exit, timeout, deletion, cancel after a manager SIGKILL —
// and after them no address, veth, iptables chain or namespace is left
// (the manager keeps --pod-network-pool namespaces attached ahead while
// it runs: those are counted out).
func TestPodNetworkCalls(t *testing.T) {
	requireEnv(t)
	n := cninet.ForTest(t)
	ns := newNamespace(t)
	logs := t.TempDir()
	m1 := startManager(t, "n1", logs, "--cni-conf-dir", n.ConfDir,
		"--cni-bin-dir", strings.Join(cninet.BinDirs, ","), "--netns-dir", n.NSDir)
	startManager(t, "n2", t.TempDir(), "--containerd-namespace", nodeNamespaces[1])

	server := create(t, call("server", ns, "n1").Network(fnletv1.NetworkPod).Args("-http-serve", ":8080").Obj())
	srv := env.calls.WaitFor(t, server, time.Minute, "podIP", func(fc *fnletv1.FunctionCall) bool {
		return fc.Status.PodIP != "" || fc.IsFinished()
	})
	if srv.IsFinished() || !strings.HasPrefix(srv.Status.PodIP, strings.TrimSuffix(n.Subnet, "0/24")) {
		t.Fatalf("server: phase %s, podIP %q (want one in %s)", srv.Status.Phase, srv.Status.PodIP, n.Subnet)
	}
	url := "http://" + srv.Status.PodIP + ":8080/"

	t.Run("a pod-network call reaches it", func(t *testing.T) {
		fc := waitFinished(t, create(t, call("client", ns, "n1").Network(fnletv1.NetworkPod).Args("-http-get", url).Obj()), time.Minute)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if !strings.HasPrefix(fc.Status.Stdout, "served-by=") {
			t.Errorf("stdout %q", fc.Status.Stdout)
		}
	})
	t.Run("a call without a network does not", func(t *testing.T) {
		fc := waitFinished(t, create(t, call("isolated", ns, "n1").Args("-http-get", url).Obj()), time.Minute)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonError, i32(111))
		if !strings.Contains(fc.Status.Stderr, "network is unreachable") {
			t.Errorf("stderr %q", fc.Status.Stderr)
		}
	})
	t.Run("a node without the pod network says so", func(t *testing.T) {
		fc := waitFinished(t, create(t, call("elsewhere", ns, "n2").Network(fnletv1.NetworkPod).Args("-exit", "0").Obj()), time.Minute)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonInvalidSpec, nil)
		if !strings.Contains(fc.Status.Message, "--cni-conf-dir") {
			t.Errorf("message %q does not name the flag", fc.Status.Message)
		}
	})

	t.Run("timed out", func(t *testing.T) {
		fc := waitFinished(t, create(t, call("slow", ns, "n1").Network(fnletv1.NetworkPod).Timeout(time.Second).Args("-sleep", "60s").Obj()), time.Minute)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonTimedOut, nil)
	})
	t.Run("deleted while running", func(t *testing.T) {
		key := create(t, call("doomed", ns, "n1").Network(fnletv1.NetworkPod).Args("-stdout-text", "up", "-sleep", "60s").Obj())
		env.calls.WaitFor(t, key, time.Minute, "podIP", func(fc *fnletv1.FunctionCall) bool { return fc.Status.PodIP != "" })
		var fc fnletv1.FunctionCall
		if err := env.k8s.Get(context.Background(), key, &fc); err != nil {
			t.Fatal(err)
		}
		if err := env.k8s.Delete(context.Background(), &fc); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, time.Minute, 50*time.Millisecond, "deleted", func() error {
			if err := env.k8s.Get(context.Background(), key, &fc); err == nil {
				return errors.New("still there")
			}
			return nil
		})
	})
	// The manager is killed while the server runs; the next one cancels
	// it and tears down a namespace it did not set up.
	m1.Kill9()
	startManager(t, "n1", logs, "--cni-conf-dir", n.ConfDir,
		"--cni-bin-dir", strings.Join(cninet.BinDirs, ","), "--netns-dir", n.NSDir)
	var fc fnletv1.FunctionCall
	if err := env.k8s.Get(context.Background(), server, &fc); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(fc.DeepCopy())
	fc.Spec.Cancel = true
	if err := env.k8s.Patch(context.Background(), &fc, patch); err != nil {
		t.Fatal(err)
	}
	expectOutcome(t, waitFinished(t, server, time.Minute), fnletv1.PhaseFailed, fnletv1.ReasonCancelled, nil)
	for _, name := range []string{"server", "client", "isolated", "slow"} {
		env.calls.WaitReleased(t, types.NamespacedName{Namespace: ns, Name: name}, time.Minute)
	}
	l, err := n.Count()
	if err != nil {
		t.Fatal(err)
	}
	const ahead = 2 // --pod-network-pool's default, refilled after the calls
	if (l != cninet.Leaks{Addresses: ahead, Veths: ahead, Chains: ahead, Pins: ahead}) {
		t.Errorf("left on the pod network after the calls: %s; want only the %d attached ahead", l, ahead)
	}
}
