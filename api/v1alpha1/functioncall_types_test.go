/*
Copyright The fnlet Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	fnletv1alpha1 "github.com/fnlet/fnlet/api/v1alpha1"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

func TestUnitIsFinished(t *testing.T) {
	cases := map[string]struct {
		call         *fnletv1alpha1.FunctionCall
		wantFinished bool
		wantClaimed  bool
	}{
		"new":       {call: utiltesting.MakeFunctionCall("a", "ns").Obj()},
		"claimed":   {call: utiltesting.MakeFunctionCall("a", "ns").ClaimedBy("n1").Obj(), wantClaimed: true},
		"running":   {call: utiltesting.MakeFunctionCall("a", "ns").ClaimedBy("n1").Running().Obj(), wantClaimed: true},
		"succeeded": {call: utiltesting.MakeFunctionCall("a", "ns").ClaimedBy("n1").Running().Succeeded().Obj(), wantFinished: true, wantClaimed: true},
		"failed": {
			call:         utiltesting.MakeFunctionCall("a", "ns").ClaimedBy("n1").Running().ExitCode(3).Failed(fnletv1alpha1.ReasonError, "exit 3").Obj(),
			wantFinished: true, wantClaimed: true,
		},
		"failed before claim": {
			call:         utiltesting.MakeFunctionCall("a", "ns").Failed(fnletv1alpha1.ReasonInvalidSpec, "bad").Obj(),
			wantFinished: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := tc.call.IsFinished(); got != tc.wantFinished {
				t.Errorf("IsFinished() = %v, want %v (phase %q)", got, tc.wantFinished, tc.call.Status.Phase)
			}
			if got := tc.call.IsClaimed(); got != tc.wantClaimed {
				t.Errorf("IsClaimed() = %v, want %v", got, tc.wantClaimed)
			}
		})
	}
}

// loadCRD reads the generated CRD, the one the apiserver gets.
func loadCRD(t *testing.T) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "crd", "bases", "fnlet.dev_functioncalls.yaml"))
	if err != nil {
		t.Fatalf("reading the generated CRD (run make manifests): %v", err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
		t.Fatalf("decoding the generated CRD: %v", err)
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Schema == nil {
		t.Fatalf("want one version with a schema, got %d versions", len(crd.Spec.Versions))
	}
	return &crd
}

// The spec is frozen by one root rule per field. A field added to the spec
// without a rule would silently stay mutable after the claim: catch that here.
func TestUnitImmutabilityRulesCoverSpec(t *testing.T) {
	crd := loadCRD(t)
	root := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	const msg = "spec is immutable once the call is claimed by a node (only spec.cancel may change)"

	covered := map[string]bool{}
	for _, r := range root.XValidations {
		if r.Message == msg {
			covered[r.FieldPath] = true
			if !strings.HasPrefix(r.Rule, "oldSelf.?status.?nodeName.orValue('') == '' || ") {
				t.Errorf("rule for %s does not start with the claimed check: %s", r.FieldPath, r.Rule)
			}
		}
	}
	spec := root.Properties["spec"]
	var want []string
	for name, prop := range spec.Properties {
		switch name {
		case "cancel":
			continue // the one mutable field
		case "resources":
			for sub := range prop.Properties {
				want = append(want, ".spec.resources."+sub)
			}
		default:
			want = append(want, ".spec."+name)
		}
	}
	slices.Sort(want)
	for _, path := range want {
		if !covered[path] {
			t.Errorf("no immutability rule with fieldPath %s on FunctionCall: add one next to the others", path)
		}
		delete(covered, path)
	}
	for path := range covered {
		t.Errorf("immutability rule for %s, which is not a spec field", path)
	}
}

// gofmt rewrites a pair of single quotes in a doc comment into a typographic
// quote, which turns a CEL rule (orValue of the empty string) into a compile
// error the apiserver reports only when the CRD is installed.
func TestUnitCRDRulesHaveNoTypographicQuotes(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "crd", "bases", "fnlet.dev_functioncalls.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"\u201c", "\u201d", "\u2018", "\u2019"} {
		if strings.Contains(string(raw), q) {
			t.Errorf("generated CRD contains %q: a marker with '' or `` sits in a doc comment that gofmt rewrote; move it to a separate comment block", q)
		}
	}
}

func TestUnitCRDShape(t *testing.T) {
	crd := loadCRD(t)
	v := crd.Spec.Versions[0]
	if crd.Spec.Group != "fnlet.dev" || v.Name != "v1alpha1" || crd.Spec.Names.Kind != "FunctionCall" {
		t.Errorf("got %s/%s %s", crd.Spec.Group, v.Name, crd.Spec.Names.Kind)
	}
	if crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
		t.Errorf("scope = %s, want Namespaced", crd.Spec.Scope)
	}
	if !slices.Contains(crd.Spec.Names.ShortNames, "fc") {
		t.Errorf("short names %v lack fc", crd.Spec.Names.ShortNames)
	}
	if v.Subresources == nil || v.Subresources.Status == nil {
		t.Error("no status subresource")
	}
	var selectable []string
	for _, f := range v.SelectableFields {
		selectable = append(selectable, f.JSONPath)
	}
	// The managers watch with fieldSelector status.nodeName=<node> and status.nodeName=.
	if !slices.Contains(selectable, ".status.nodeName") {
		t.Errorf("selectable fields %v lack .status.nodeName", selectable)
	}
	var columns []string
	for _, c := range v.AdditionalPrinterColumns {
		columns = append(columns, c.Name)
	}
	if want := []string{"Phase", "Reason", "Exit", "Node", "IP", "Started", "Finished", "Age"}; !reflect.DeepEqual(columns, want) {
		t.Errorf("printer columns = %v, want %v", columns, want)
	}
}
