package integration

import (
	"context"
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
// the pod network refuses such a call with a reason that says why. After
// the calls, no address, veth, iptables chain or namespace is left.
func TestPodNetworkCalls(t *testing.T) {
	requireEnv(t)
	if why := cninet.Missing(); why != "" {
		testenv.Missing(t, "%s", why)
	}
	n, err := cninet.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Remove)
	ns := newNamespace(t)
	startManager(t, "n1", t.TempDir(), "--cni-conf-dir", n.ConfDir,
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
	for _, key := range []types.NamespacedName{server, {Namespace: ns, Name: "client"}, {Namespace: ns, Name: "isolated"}} {
		env.calls.WaitReleased(t, key, time.Minute)
	}
	l, err := n.Count()
	if err != nil {
		t.Fatal(err)
	}
	if !l.Zero() {
		t.Errorf("left on the pod network after the calls: %s", l)
	}
}
