package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv"
	"github.com/fnlet/fnlet/internal/testenv/managerproc"
)

// nowhere is a node label no node carries.
const nowhere = "fnlet.dev/e2e-nowhere"

// TestUnschedulableEvent: a call whose nodeSelector matches no fnlet node
// stays Pending with Claimed=False/Unschedulable and one Warning Event that
// says why, as kubectl shows it.
func TestUnschedulableEvent(t *testing.T) {
	requireCluster(t)
	apply(t, fcYAML("nowhere", []string{"-stdout-text", "never"}, `nodeSelector: {"`+nowhere+`": "true"}`))
	t.Cleanup(func() { _, _ = kubectlRaw("", "-n", env.ns, "delete", "fc", "nowhere", "--wait=false") })
	env.calls.WaitFor(t, key("nowhere"), 30*time.Second, "Claimed=False/Unschedulable", func(fc *fnletv1.FunctionCall) bool {
		c := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionClaimed)
		return c != nil && c.Reason == fnletv1.ReasonUnschedulable
	})
	got := jsonpath(t, "nowhere", `{.status.phase}|{.status.nodeName}|{.status.conditions[?(@.type=="Claimed")].status}|{.status.conditions[?(@.type=="Claimed")].message}`)
	if !regexp.MustCompile(`^Pending\|\|False\|0/\d+ fnlet nodes are available: \d+ nodeSelector does not match$`).MatchString(got) {
		t.Errorf("phase|node|Claimed|message = %q, want Pending, unassigned, False and the scheduler-like message", got)
	}
	// Events are written after the status: wait for the one.
	var events string
	testenv.Eventually(t, 20*time.Second, 250*time.Millisecond, "a Warning Unschedulable event", func() error {
		events = kubectl(t, "get", "events", "--field-selector", "involvedObject.name=nowhere,reason=Unschedulable",
			"-o", `jsonpath={range .items[*]}{.type} {.count} {.message}{"\n"}{end}`)
		if !strings.HasPrefix(events, "Warning ") {
			return fmt.Errorf("events: %q", events)
		}
		return nil
	})
	if n := strings.Count(strings.TrimSpace(events), "\n") + 1; n != 1 || !strings.Contains(events, "nodeSelector does not match") {
		t.Errorf("%d Unschedulable events, want 1 saying why:\n%s", n, events)
	}
	_, desc, _ := strings.Cut(kubectl(t, "describe", "fc", "nowhere"), "\nEvents:")
	if !regexp.MustCompile(`(?m)^\s+Warning\s+Unschedulable\s`).MatchString(desc) {
		t.Errorf("kubectl describe fc nowhere: no Warning Unschedulable event in:%s", desc)
	}
	t.Logf("kubectl get events: %s", strings.TrimSpace(events))
}

// TestDaemonSetMovedOffNodeMidCall: the DaemonSet's nodeSelector stops
// matching the node while a call (retries 0) runs there. The manager pod
// goes, its Lease is released, and a live peer declares the node lost: the
// call ends Failed/NodeLost naming the node. A single-node cluster has no
// second fnlet node, so the peer is a manager run here as a host process
// for a node without a Node object ("e2e-peer", a containerd namespace of
// its own, the manager's ServiceAccount). When the DaemonSet is back, its
// manager fences the call's container and leaves the status alone.
func TestDaemonSetMovedOffNodeMidCall(t *testing.T) {
	requireCluster(t)
	if env.nodeExec != "" {
		t.Skip("the peer manager runs on this machine: it needs the node's containerd socket here (FNLET_E2E_NODE_EXEC is set)")
	}
	ctx := context.Background()
	var ds appsv1.DaemonSet
	if err := env.k8s.Get(ctx, key2(systemNamespace, daemonSetName), &ds); err != nil {
		t.Fatal(err)
	}
	node := strings.TrimSpace(kubectl(t, "-n", systemNamespace, "get", "pods", "-l", managerSelector, "-o", "jsonpath={.items[0].spec.nodeName}"))
	pod := strings.TrimSpace(kubectl(t, "-n", systemNamespace, "get", "pods", "-l", managerSelector, "-o", "jsonpath={.items[0].metadata.name}"))
	if node == "" || pod == "" {
		t.Fatal("no manager pod")
	}

	peer := startPeer(t)

	apply(t, fcYAML("stranded", []string{"-stdout-text", "started", "-sleep", "5m"}, "timeout: 10m", "nodeName: "+node))
	fc := waitRunning(t, "stranded")
	uid := string(fc.UID)

	// Move the DaemonSet off the node; put it back whatever happens.
	orig, _ := json.Marshal(ds.Spec.Template.Spec.NodeSelector)
	restore := `[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]`
	if ds.Spec.Template.Spec.NodeSelector != nil {
		restore = `[{"op":"add","path":"/spec/template/spec/nodeSelector","value":` + string(orig) + `}]`
	}
	restored := false
	putBack := func() {
		if restored {
			return
		}
		restored = true
		if out, err := kubectlRaw("", "-n", systemNamespace, "patch", "ds", daemonSetName, "--type", "json", "-p", restore); err != nil {
			t.Errorf("restore the DaemonSet's nodeSelector: %v\n%s", err, out)
		}
		if out, err := kubectlRaw("", "-n", systemNamespace, "rollout", "status", "ds/"+daemonSetName, "--timeout=180s"); err != nil {
			t.Errorf("DaemonSet not rolled out again: %v\n%s", err, out)
		}
	}
	t.Cleanup(putBack)
	moved := time.Now()
	kubectl(t, "-n", systemNamespace, "patch", "ds", daemonSetName, "--type", "json",
		"-p", `[{"op":"add","path":"/spec/template/spec/nodeSelector","value":{"`+nowhere+`":"true"}}]`)
	kubectl(t, "-n", systemNamespace, "wait", "--for=delete", "pod/"+pod, "--timeout=120s")
	t.Logf("manager pod %s gone %s after the DaemonSet moved off %s", pod, time.Since(moved).Round(100*time.Millisecond), node)

	// Its Lease was released at the clean stop (or expires within
	// --lease-duration); then the peer's --node-lost-grace.
	fc = waitFinished(t, "stranded", 2*time.Minute)
	t.Logf("NodeLost %s after the DaemonSet moved: %q", time.Since(moved).Round(100*time.Millisecond), fc.Status.Message)
	expectOutcome(t, "stranded", "Failed", "NodeLost", "")
	if msg := fc.Status.Message; !strings.Contains(msg, "node "+node+" was lost") || !strings.Contains(msg, "lease expired at") {
		t.Errorf("NodeLost message %q: want the node %s and since when", msg, node)
	}
	testenv.Eventually(t, 20*time.Second, 250*time.Millisecond, "a Warning NodeLost event in kubectl describe", func() error {
		_, ev, _ := strings.Cut(kubectl(t, "describe", "fc", "stranded"), "\nEvents:")
		if !regexp.MustCompile(`(?m)^\s+Warning\s+NodeLost\s.*` + regexp.QuoteMeta(node)).MatchString(ev) {
			return fmt.Errorf("events:%s", ev)
		}
		return nil
	})
	// The takeover also removes the lost node's finalizer: then the call is
	// settled, and nothing may write it again.
	rv := env.calls.WaitReleased(t, key("stranded"), 30*time.Second).ResourceVersion
	peer.Stop()
	if !hasContainer(t, node, ctrd.ContainerID(uid)) {
		t.Logf("the call's container was already gone before the DaemonSet came back")
	}

	// Back on the node: the manager removes the stale container and writes
	// nothing to the call.
	putBack()
	// No watch reports a container's removal in containerd: poll.
	testenv.Eventually(t, 60*time.Second, 500*time.Millisecond, "the returning manager removes the stale container", func() error {
		if hasContainer(t, node, ctrd.ContainerID(uid)) {
			return fmt.Errorf("container %s still on %s", ctrd.ContainerID(uid), node)
		}
		return nil
	})
	after, err := getFC(t, "stranded")
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != rv {
		t.Errorf("the call was written after its node came back (resourceVersion %s -> %s): %+v", rv, after.ResourceVersion, after.Status)
	}
}

// startPeer runs a manager on this machine for the fake node e2e-peer, with
// a token of the DaemonSet's ServiceAccount (its roles, not the admin's),
// short leases and its own containerd namespace and log dir. It is stopped
// by PID when the test ends, and its Lease deleted.
func startPeer(t *testing.T) *managerproc.Process {
	t.Helper()
	dir := t.TempDir()
	bin, err := testenv.BuildManager(dir)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(kubectl(t, "-n", systemNamespace, "create", "token", "fnlet-manager", "--duration=1h"))
	admin, err := clientcmd.LoadFromFile(env.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cluster := admin.Clusters[admin.Contexts[admin.CurrentContext].Cluster]
	kc := clientcmdapi.NewConfig()
	kc.Clusters["e2e"] = cluster
	kc.AuthInfos["fnlet-manager"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "fnlet-manager"}
	kc.CurrentContext = "e2e"
	kubeconfig := filepath.Join(dir, "peer.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "calls")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	const peerNode, peerNS = "e2e-peer", "fnlet-e2e-peer"
	p := managerproc.Start(t, managerproc.Config{
		Binary: bin, Kubeconfig: kubeconfig, LogDir: dir, Name: peerNode,
		Args: []string{
			"--node-name", peerNode,
			"--containerd-address", env.ctrdSock,
			"--containerd-namespace", peerNS,
			"--log-dir", logDir,
			"--lease-namespace", systemNamespace,
			"--lease-duration", "2s", "--lease-renew-interval", "500ms", "--node-lost-grace", "3s",
			"--metrics-bind-address", "0", "--health-probe-bind-address", "0",
		},
	})
	t.Cleanup(func() {
		p.Stop()
		_, _ = kubectlRaw("", "-n", systemNamespace, "delete", "lease", "fnlet-node-"+peerNode, "--ignore-not-found")
		_, _ = onNode(t, "", append(strings.Fields(env.ctr), "--address", env.ctrdSock, "namespaces", "remove", peerNS)...)
	})
	// Up once its Lease is there (it renews from its start).
	if out, err := kubectlRaw("", "-n", systemNamespace, "wait", "--for=create", "lease/fnlet-node-"+peerNode, "--timeout=60s"); err != nil {
		t.Fatalf("the peer manager's Lease: %v\n%s\npeer log:\n%s", err, out, p.LogText())
	}
	return p
}

func key2(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }
