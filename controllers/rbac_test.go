package controllers

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// managerRoleAllowlist is every permission the manager uses, each with the
// code that needs it: "group resource verb" → why. The generated ClusterRole
// (config/rbac/role.yaml, from the +kubebuilder:rbac markers) must grant
// exactly these. The integration and chaos suites run the real manager
// bound to that role, which proves the list is enough; this test proves it
// is no more.
var managerRoleAllowlist = map[string]string{
	// The manager's two FunctionCall caches (this node's calls, unassigned
	// calls: cmd/manager) list and watch; hasRoom lists from the cache.
	"fnlet.dev functioncalls list":  "informers of the node's and the unassigned calls",
	"fnlet.dev functioncalls watch": "informers of the node's and the unassigned calls",
	// OrphanCollector reads a container's call directly (APIReader), to tell
	// a live call from an orphan even when the cache lags.
	"fnlet.dev functioncalls get": "OrphanCollector.collect: direct GET of a container's call",
	// ensureFinalizer/release: merge patches of metadata.finalizers (and the finished label).
	// No update: the manager never PUTs a whole FunctionCall.
	"fnlet.dev functioncalls patch": "ensureFinalizer / release",
	// ttlSecondsAfterFinished.
	"fnlet.dev functioncalls delete": "ttlResult: delete after spec.ttlSecondsAfterFinished",
	// Every status write (claim with the read resourceVersion, Running,
	// final, Retrying) is Status().Update: the conflict on a stale
	// resourceVersion is what makes exactly one node win a claim. No get
	// (status is read with the object) and no patch.
	"fnlet.dev functioncalls/status update": "claim, markRunning, complete, runtimeFailure",
	// Env and input from Secrets/ConfigMaps of the call's own namespace, and
	// imagePullSecrets: direct GETs by name (inputs.go). No list or watch: no
	// cluster-wide cache of Secrets.
	" secrets get":    "inputResolver: secretKeyRef, imagePullSecrets",
	" configmaps get": "inputResolver: configMapKeyRef",
	// The node's labels for spec.nodeSelector, read once at start.
	" nodes get": "cmd/manager readNodeLabels",
	// The event recorder (events.k8s.io/v1): create an event, patch its
	// series when it repeats.
	"events.k8s.io events create": "Recorder: Claimed, Started, Finish... events",
	"events.k8s.io events patch":  "Recorder: event series",
}

// managerNamespaceRoleAllowlist is the same for the Role in the manager's
// own namespace (fnlet-system): the node Leases and nothing else.
var managerNamespaceRoleAllowlist = map[string]string{
	"coordination.k8s.io leases get":    "NodeLease.write: read this node's Lease before renewing it",
	"coordination.k8s.io leases create": "NodeLease.write: the first start on a node",
	"coordination.k8s.io leases update": "NodeLease.write: renew and release; NodeLossDetector never writes peers' Leases",
	"coordination.k8s.io leases list":   "LeaseNodes: the informer of the node Leases (placement, NodeLost)",
	"coordination.k8s.io leases watch":  "LeaseNodes: the informer of the node Leases (placement, NodeLost)",
}

// TestUnitManagerRoleIsLeastPrivilege reads the generated roles (a
// ClusterRole, and a Role in the manager's namespace) and compares what
// each grants with its allowlist, both ways.
func TestUnitManagerRoleIsLeastPrivilege(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(b), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("role.yaml has %d documents, want the ClusterRole and the namespace Role", len(docs))
	}
	var cluster rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &cluster); err != nil {
		t.Fatalf("role.yaml: %v", err)
	}
	if cluster.Kind != "ClusterRole" || cluster.Name != "fnlet-manager" {
		t.Fatalf("role.yaml starts with %s %q, want ClusterRole fnlet-manager", cluster.Kind, cluster.Name)
	}
	if cluster.AggregationRule != nil {
		t.Errorf("the manager's role aggregates other roles: %+v", cluster.AggregationRule)
	}
	checkGrants(t, "ClusterRole", cluster.Rules, managerRoleAllowlist)

	var ns rbacv1.Role
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &ns); err != nil {
		t.Fatalf("role.yaml: %v", err)
	}
	if ns.Kind != "Role" || ns.Name != "fnlet-manager" || ns.Namespace != "fnlet-system" {
		t.Fatalf("role.yaml's second document is %s %s/%s, want Role fnlet-system/fnlet-manager", ns.Kind, ns.Namespace, ns.Name)
	}
	checkGrants(t, "Role", ns.Rules, managerNamespaceRoleAllowlist)
}

func checkGrants(t *testing.T, kind string, rules []rbacv1.PolicyRule, allow map[string]string) {
	t.Helper()
	granted := map[string]bool{}
	for i, rule := range rules {
		if len(rule.ResourceNames) > 0 || len(rule.NonResourceURLs) > 0 {
			t.Errorf("%s rule %d: resourceNames %v / nonResourceURLs %v: not expected from the markers", kind, i, rule.ResourceNames, rule.NonResourceURLs)
		}
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					if g == "*" || res == "*" || v == "*" || strings.Contains(res, "*") {
						t.Errorf("%s rule %d grants a wildcard: group %q resource %q verb %q", kind, i, g, res, v)
					}
					granted[g+" "+res+" "+v] = true
				}
			}
		}
	}
	var extra, missing []string
	for p := range granted {
		if _, ok := allow[p]; !ok {
			extra = append(extra, p)
		}
	}
	for p := range allow {
		if !granted[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	if len(extra) > 0 {
		t.Errorf("the %s grants what the manager does not use (drop the +kubebuilder:rbac marker and run `make manifests`, or justify it in the allowlist): %q", kind, extra)
	}
	if len(missing) > 0 {
		t.Errorf("the %s lacks what the manager uses (add a +kubebuilder:rbac marker and run `make manifests`): %q", kind, missing)
	}
}
