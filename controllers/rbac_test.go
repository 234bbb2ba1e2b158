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

// TestUnitManagerRoleIsLeastPrivilege reads the generated ClusterRole and
// compares what it grants with managerRoleAllowlist, both ways.
func TestUnitManagerRoleIsLeastPrivilege(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(b, &role); err != nil {
		t.Fatalf("role.yaml: %v", err)
	}
	if role.Kind != "ClusterRole" || role.Name != "fnlet-manager" {
		t.Fatalf("role.yaml is %s %q, want ClusterRole fnlet-manager", role.Kind, role.Name)
	}
	if role.AggregationRule != nil {
		t.Errorf("the manager's role aggregates other roles: %+v", role.AggregationRule)
	}
	granted := map[string]bool{}
	for i, rule := range role.Rules {
		if len(rule.ResourceNames) > 0 || len(rule.NonResourceURLs) > 0 {
			t.Errorf("rule %d: resourceNames %v / nonResourceURLs %v: not expected from the markers", i, rule.ResourceNames, rule.NonResourceURLs)
		}
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					if g == "*" || res == "*" || v == "*" || strings.Contains(res, "*") {
						t.Errorf("rule %d grants a wildcard: group %q resource %q verb %q", i, g, res, v)
					}
					granted[g+" "+res+" "+v] = true
				}
			}
		}
	}
	var extra, missing []string
	for p := range granted {
		if _, ok := managerRoleAllowlist[p]; !ok {
			extra = append(extra, p)
		}
	}
	for p := range managerRoleAllowlist {
		if !granted[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	if len(extra) > 0 {
		t.Errorf("the role grants what the manager does not use (drop the +kubebuilder:rbac marker and run `make manifests`, or justify it in managerRoleAllowlist): %q", extra)
	}
	if len(missing) > 0 {
		t.Errorf("the role lacks what the manager uses (add a +kubebuilder:rbac marker and run `make manifests`): %q", missing)
	}
}
