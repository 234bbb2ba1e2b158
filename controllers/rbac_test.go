package controllers

import (
	"os"
	"path/filepath"
	"reflect"
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
	// No Secrets and no ConfigMaps: a namespace opts in with a RoleBinding
	// of NamespaceReaderRole (namespaceReaderAllowlist).
	// The node's labels for spec.nodeSelector, read once at start.
	" nodes get": "cmd/manager readNodeLabels",
	// The event recorder (events.k8s.io/v1): create an event, patch its
	// series when it repeats.
	"events.k8s.io events create": "Recorder: Claimed, Started, Finish... events",
	"events.k8s.io events patch":  "Recorder: event series",
	// The metrics endpoint's filter (cmd/manager metricsOptions,
	// controller-runtime's WithAuthenticationAndAuthorization): who sent
	// the bearer token, and may they GET /metrics.
	"authentication.k8s.io tokenreviews create": "metrics filter: authenticate a scrape's token",
	// FunctionPools: the pool reconciler's informer and its GET from the
	// cache; its only write is server-side apply of this node's entry of
	// the status. No update, no write of a pool's spec.
	"fnlet.dev functionpools get":                      "FunctionPoolReconciler: the pool from the cache",
	"fnlet.dev functionpools list":                     "informer of the pools; run lists a namespace's pools",
	"fnlet.dev functionpools watch":                    "informer of the pools",
	"fnlet.dev functionpools/status get":               "server-side apply reads the status it applies to",
	"fnlet.dev functionpools/status patch":             "FunctionPoolReconciler.writeStatus: this node's entry, server-side apply",
	"authorization.k8s.io subjectaccessreviews create": "metrics filter: authorize GET /metrics; log API: authorize get functioncalls/log",
	// A manager forwards a log request to the call's node as itself; that
	// manager authorizes it like any user (internal/logapi).
	"logs.fnlet.dev functioncalls/log get": "logapi forward: the peer manager authorizes the forwarding manager",
}

// namespaceReaderAllowlist is all that config/rbac/namespace_reader_role.yaml
// (NamespaceReaderRole, bound per namespace) grants: env and input from
// Secrets/ConfigMaps of the call's own namespace, and imagePullSecrets,
// read by direct GETs by name (inputs.go). No list or watch: no cache of
// Secrets, and nothing to enumerate a namespace's Secrets with.
var namespaceReaderAllowlist = map[string]string{
	" secrets get":    "inputResolver: secretKeyRef, imagePullSecrets",
	" configmaps get": "inputResolver: configMapKeyRef",
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

// TestUnitManagerNamespaceRole checks the Role controller-gen writes after
// the ClusterRole in role.yaml: Leases in the manager's namespace only.
func TestUnitManagerNamespaceRole(t *testing.T) {
	docs := roleDocs(t, "role.yaml")
	if len(docs) != 2 {
		t.Fatalf("role.yaml has %d documents, want the ClusterRole and the namespace Role", len(docs))
	}
	var ns rbacv1.Role
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &ns); err != nil {
		t.Fatalf("role.yaml: %v", err)
	}
	if ns.Kind != "Role" || ns.Name != "fnlet-manager" || ns.Namespace != "fnlet-system" {
		t.Fatalf("role.yaml's second document is %s %s/%s, want Role fnlet-system/fnlet-manager", ns.Kind, ns.Namespace, ns.Name)
	}
	checkGrants(t, rbacv1.ClusterRole{ObjectMeta: ns.ObjectMeta, Rules: ns.Rules}, managerNamespaceRoleAllowlist,
		"drop the +kubebuilder:rbac marker and run `make manifests`", "add a +kubebuilder:rbac marker and run `make manifests`")
}

// TestUnitManagerRoleIsLeastPrivilege reads the generated ClusterRole and
// compares what it grants with managerRoleAllowlist, both ways: above all,
// it grants no Secret or ConfigMap access anywhere.
func TestUnitManagerRoleIsLeastPrivilege(t *testing.T) {
	role := readClusterRole(t, "role.yaml", "fnlet-manager")
	checkGrants(t, role, managerRoleAllowlist, "drop the +kubebuilder:rbac marker and run `make manifests`, or justify it in managerRoleAllowlist",
		"add a +kubebuilder:rbac marker and run `make manifests`")
}

// TestUnitNamespaceReaderRole checks the opt-in ClusterRole a namespace
// binds: get on Secrets and ConfigMaps, nothing else.
func TestUnitNamespaceReaderRole(t *testing.T) {
	role := readClusterRole(t, "namespace_reader_role.yaml", NamespaceReaderRole)
	checkGrants(t, role, namespaceReaderAllowlist, "config/rbac/namespace_reader_role.yaml grants more than the manager reads", "config/rbac/namespace_reader_role.yaml lacks")
}

// TestUnitMetricsReaderRole checks the ClusterRole a scraper is bound to:
// GET of the nonResourceURL /metrics, nothing else.
func TestUnitMetricsReaderRole(t *testing.T) {
	role := readClusterRole(t, "metrics_reader_role.yaml", "fnlet-metrics-reader")
	if len(role.Rules) != 1 {
		t.Fatalf("%d rules, want 1: %+v", len(role.Rules), role.Rules)
	}
	r := role.Rules[0]
	if len(r.APIGroups)+len(r.Resources)+len(r.ResourceNames) > 0 ||
		!reflect.DeepEqual(r.NonResourceURLs, []string{"/metrics"}) || !reflect.DeepEqual(r.Verbs, []string{"get"}) {
		t.Errorf("rule %+v, want only nonResourceURLs [/metrics] verbs [get]", r)
	}
}

// logReaderAllowlist is all that config/rbac/log_reader_role.yaml grants:
// reading calls' output through the log API, nothing else.
var logReaderAllowlist = map[string]string{
	"logs.fnlet.dev functioncalls/log get": "internal/logapi: whole, offset, tail, follow",
}

// TestUnitLogReaderRole checks the ClusterRole users bind to read output.
func TestUnitLogReaderRole(t *testing.T) {
	role := readClusterRole(t, "log_reader_role.yaml", "fnlet-log-reader")
	checkGrants(t, role, logReaderAllowlist, "config/rbac/log_reader_role.yaml grants more than the log API needs", "config/rbac/log_reader_role.yaml lacks")
}

// TestUnitManagerAuthReader checks the manager's one binding outside its
// namespace: the built-in reader of the apiserver's front-proxy CA, in
// kube-system, which the log API's delegated authentication needs.
func TestUnitManagerAuthReader(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "config", "manager", "auth_reader_rolebinding.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rb rbacv1.RoleBinding
	if err := yaml.UnmarshalStrict(b, &rb); err != nil {
		t.Fatal(err)
	}
	if rb.Namespace != "kube-system" || rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != "extension-apiserver-authentication-reader" {
		t.Errorf("RoleBinding %s/%s to %s %s, want kube-system to Role extension-apiserver-authentication-reader", rb.Namespace, rb.Name, rb.RoleRef.Kind, rb.RoleRef.Name)
	}
	if len(rb.Subjects) != 1 || rb.Subjects[0].Kind != rbacv1.ServiceAccountKind || rb.Subjects[0].Name != "fnlet-manager" || rb.Subjects[0].Namespace != "fnlet-system" {
		t.Errorf("subjects %+v, want only the manager's service account", rb.Subjects)
	}
}

// TestUnitNoClusterWideSecretAccess walks every manifest under config/: no
// ClusterRoleBinding may bind the namespace reader (that would give the
// manager every namespace's Secrets back), and the only ClusterRoleBinding
// of the manager's service account is to its own role.
func TestUnitNoClusterWideSecretAccess(t *testing.T) {
	var bindings int
	err := filepath.WalkDir(filepath.Join("..", "config"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, doc := range strings.Split(string(b), "\n---") {
			var crb rbacv1.ClusterRoleBinding
			if err := yaml.Unmarshal([]byte(doc), &crb); err != nil || crb.Kind != "ClusterRoleBinding" {
				continue
			}
			bindings++
			if crb.RoleRef.Name == NamespaceReaderRole {
				t.Errorf("%s: ClusterRoleBinding %s binds %s cluster-wide: it must be a RoleBinding per namespace", path, crb.Name, NamespaceReaderRole)
			}
			for _, sub := range crb.Subjects {
				if sub.Kind == rbacv1.ServiceAccountKind && sub.Name == "fnlet-manager" && crb.RoleRef.Name != "fnlet-manager" {
					t.Errorf("%s: ClusterRoleBinding %s gives the manager %s %s", path, crb.Name, crb.RoleRef.Kind, crb.RoleRef.Name)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if bindings == 0 {
		t.Fatal("no ClusterRoleBinding found under config/: the walk is broken (the manager's binding is in config/manager)")
	}
}

// roleDocs reads config/rbac/file as its YAML documents.
func roleDocs(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(b), "\n---\n")
}

// readClusterRole reads the ClusterRole that opens config/rbac/file.
func readClusterRole(t *testing.T, file, name string) rbacv1.ClusterRole {
	t.Helper()
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict([]byte(roleDocs(t, file)[0]), &role); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if role.Kind != "ClusterRole" || role.Name != name {
		t.Fatalf("%s is %s %q, want ClusterRole %s", file, role.Kind, role.Name, name)
	}
	if role.AggregationRule != nil {
		t.Errorf("%s aggregates other roles: %+v", file, role.AggregationRule)
	}
	return role
}

// checkGrants compares the resource rules of role with allow ("group
// resource verb" keys), both ways, and refuses wildcards, resourceNames
// and nonResourceURLs.
func checkGrants(t *testing.T, role rbacv1.ClusterRole, allow map[string]string, extraHint, missingHint string) {
	t.Helper()
	granted := map[string]bool{}
	for i, rule := range role.Rules {
		if len(rule.ResourceNames) > 0 || len(rule.NonResourceURLs) > 0 {
			t.Errorf("rule %d: resourceNames %v / nonResourceURLs %v: not expected", i, rule.ResourceNames, rule.NonResourceURLs)
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
		t.Errorf("%s grants what the manager does not use (%s): %q", role.Name, extraHint, extra)
	}
	if len(missing) > 0 {
		t.Errorf("%s lacks what the manager uses (%s): %q", role.Name, missingHint, missing)
	}
}
