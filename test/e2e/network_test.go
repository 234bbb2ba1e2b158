package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fnlet/fnlet/internal/testenv"
)

// podNetworkDeployed says whether the DaemonSet runs with network: pod
// (config/components/pod-network: --cni-conf-dir).
func podNetworkDeployed(t *testing.T) bool {
	t.Helper()
	var ds appsv1.DaemonSet
	if err := env.k8s.Get(context.Background(), client.ObjectKey{Namespace: systemNamespace, Name: daemonSetName}, &ds); err != nil {
		t.Fatal(err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, a := range c.Args {
			if strings.HasPrefix(a, "--cni-conf-dir=") {
				return true
			}
		}
	}
	return false
}

// TestPodNetworkOnCluster runs calls on the cluster's own pod network (its
// bridge CNI), with fnlet deployed with config/components/pod-network:
// a call serves HTTP on its podIP, a second fetches from it, a call
// without a network cannot reach it, and the namespaces go with the calls.
func TestPodNetworkOnCluster(t *testing.T) {
	requireCluster(t)
	if !podNetworkDeployed(t) {
		t.Skip("fnlet is deployed without config/components/pod-network (hack/e2e.sh runs this test again with it)")
	}
	apply(t, fcYAML("net-server", []string{"-http-serve", ":8080"}, "network: pod"))
	var ip string
	testenv.Eventually(t, 2*time.Minute, 200*time.Millisecond, "net-server's podIP", func() error {
		if ip = jsonpath(t, "net-server", "{.status.podIP}"); ip == "" {
			return errors.New("none yet")
		}
		return nil
	})
	if net.ParseIP(ip) == nil {
		t.Fatalf("podIP %q", ip)
	}
	url := "http://" + ip + ":8080/"
	apply(t, fcYAML("net-client", []string{"-http-get", url}, "network: pod"))
	waitFinished(t, "net-client", 2*time.Minute)
	expectOutcome(t, "net-client", "Succeeded", "Completed", "0")
	if out := jsonpath(t, "net-client", "{.status.stdout}"); !strings.HasPrefix(out, "served-by=") {
		t.Errorf("net-client stdout %q", out)
	}
	apply(t, fcYAML("net-none", []string{"-http-get", url}))
	waitFinished(t, "net-none", 2*time.Minute)
	expectOutcome(t, "net-none", "Failed", "Error", "111")

	kubectl(t, "patch", "fc", "net-server", "--type=merge", "-p", `{"spec":{"cancel":true}}`)
	waitFinished(t, "net-server", 2*time.Minute)
	expectOutcome(t, "net-server", "Failed", "Cancelled", "")
	node := jsonpath(t, "net-server", "{.status.nodeName}")
	cid := jsonpath(t, "net-server", "{.status.containerID}")
	testenv.Eventually(t, time.Minute, 200*time.Millisecond, "net-server's namespace removed", func() error {
		out, err := onNode(t, node, "ls", "/run/fnlet/netns")
		if err != nil || strings.Contains(out, cid) {
			return fmt.Errorf("ls /run/fnlet/netns: %q %v", out, err)
		}
		return nil
	})
}
