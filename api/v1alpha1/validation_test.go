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

// Admission tests: the generated CRD installed in a real kube-apiserver
// (envtest), and FunctionCalls created and updated against it. They prove
// that the markers in functioncall_types.go say what a user will be told.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/fnlet/fnlet/internal/testenv"

	fnletv1alpha1 "github.com/fnlet/fnlet/api/v1alpha1"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

const immutableMsg = "spec is immutable once the call is claimed by a node (only spec.cancel may change)"

// startAPIServer runs etcd and kube-apiserver from KUBEBUILDER_ASSETS with the
// FunctionCall CRD installed, and returns a client for them.
func startAPIServer(t *testing.T) client.Client {
	t.Helper()
	testenv.Short(t, "kube-apiserver and etcd (admission tests)")
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "admission tests: KUBEBUILDER_ASSETS is not set, so there is no kube-apiserver to install the CRD in; "+
			"run them with KUBEBUILDER_ASSETS=$(hack/build-k8s.sh --apiserver-only --print-assets) go test ./api/...")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd from KUBEBUILDER_ASSETS: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	scheme := runtime.NewScheme()
	if err := fnletv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// toUnstructured turns a built call into the JSON the apiserver receives, so
// a case can write what a typed Go client cannot (a missing field, "1d").
func toUnstructured(t *testing.T, call *fnletv1alpha1.FunctionCall) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(call)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(fnletv1alpha1.GroupVersion.WithKind("FunctionCall"))
	unstructured.RemoveNestedField(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u
}

func setField(t *testing.T, u *unstructured.Unstructured, value any, path ...string) {
	t.Helper()
	if err := unstructured.SetNestedField(u.Object, value, path...); err != nil {
		t.Fatal(err)
	}
}

// checkErr fails unless err is nil when want is "", or an Invalid error whose
// text contains want.
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("rejected, want accepted: %v", err)
	case want != "" && err == nil:
		t.Fatalf("accepted, want rejected with %q", want)
	case want != "" && !apierrors.IsInvalid(err):
		t.Fatalf("got %v, want an Invalid error containing %q", err, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error does not say %q:\n%v", want, err)
	case err != nil:
		t.Logf("rejected as expected: %v", err)
	}
}

func TestAdmission(t *testing.T) {
	c := startAPIServer(t)
	ctx := t.Context()

	t.Run("create", func(t *testing.T) { testCreate(ctx, t, c) })
	t.Run("defaults", func(t *testing.T) { testDefaults(ctx, t, c) })
	t.Run("update", func(t *testing.T) { testUpdate(ctx, t, c) })
	t.Run("status", func(t *testing.T) { testStatus(ctx, t, c) })
	t.Run("selectable fields", func(t *testing.T) { testSelectableFields(ctx, t, c) })
	t.Run("samples", func(t *testing.T) { testSamples(ctx, t, c) })
	t.Run("pool create", func(t *testing.T) { testPoolCreate(ctx, t, c) })
	t.Run("pool defaults", func(t *testing.T) { testPoolDefaults(ctx, t, c) })
}

const badImageMsg = "image must be an image reference such as registry.example.com/team/fn:v1"

// poolToUnstructured is toUnstructured for a FunctionPool.
func poolToUnstructured(t *testing.T, pool *fnletv1alpha1.FunctionPool) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pool)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(fnletv1alpha1.GroupVersion.WithKind("FunctionPool"))
	unstructured.RemoveNestedField(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u
}

// testPoolCreate: what a user is told about a FunctionPool that cannot be
// served.
func testPoolCreate(ctx context.Context, t *testing.T, c client.Client) {
	base := func() *utiltesting.FunctionPoolWrapper {
		return utiltesting.MakeFunctionPool("", "default", "localhost/fnlet/testfn:v1")
	}
	image := func(ref string) *utiltesting.FunctionPoolWrapper {
		return utiltesting.MakeFunctionPool("", "default", ref)
	}
	digest := "@sha256:" + strings.Repeat("ab", 32)
	cases := map[string]struct {
		pool    *utiltesting.FunctionPoolWrapper
		raw     func(t *testing.T, u *unstructured.Unstructured)
		wantErr string
	}{
		"valid minimal pool": {pool: base()},
		"valid pool using every field": {pool: base().ImagePullPolicy(corev1.PullAlways).Size(8).
			Memory("128Mi").CPU("500m").Pids(64).Network(fnletv1alpha1.NetworkHost).
			RunAs(1000, 1000).ReadOnlyRootFilesystem().NodeSelector("disk", "ssd")},
		"size 0 keeps none":                {pool: base().Size(0)},
		"size 64 is the most":              {pool: base().Size(64)},
		"image by short name":              {pool: image("busybox")},
		"image with registry port and tag": {pool: image("registry.example.com:5000/team/fn-a_b.c:v1.2-rc")},
		"image by digest":                  {pool: image("docker.io/library/busybox" + digest)},
		"image with tag and digest":        {pool: image("busybox:1.36" + digest)},

		"negative size": {pool: base().Size(-1), wantErr: "spec.size in body should be greater than or equal to 0"},
		"size over 64":  {pool: base().Size(65), wantErr: "spec.size in body should be less than or equal to 64"},
		"missing image": {pool: base(), wantErr: "spec.image: Required value",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				unstructured.RemoveNestedField(u.Object, "spec", "image")
			}},
		"empty image":               {pool: image(""), wantErr: "spec.image in body should be at least 1 chars long"},
		"image with a space":        {pool: image("busybox latest"), wantErr: badImageMsg},
		"image with uppercase path": {pool: image("localhost/Fnlet/testfn:v1"), wantErr: badImageMsg},
		"image with an empty tag":   {pool: image("busybox:"), wantErr: badImageMsg},
		"image with a scheme":       {pool: image("https://registry.example.com/fn:v1"), wantErr: badImageMsg},
		"image with a short digest": {pool: image("busybox@sha256:abc"), wantErr: badImageMsg},
		"image too long":            {pool: image("a/" + strings.Repeat("b", 511)), wantErr: "spec.image: Too long"},
		"memory under 4Mi":          {pool: base().Memory("1Mi"), wantErr: "memory must be at least 4Mi"},
		"memory over 64Gi":          {pool: base().Memory("65Gi"), wantErr: "memory must be at most 64Gi"},
		"cpu 0":                     {pool: base().CPU("0"), wantErr: "cpu must be at least 1m"},
		"cpu over 64":               {pool: base().CPU("65"), wantErr: "cpu must be at most 64"},
		"pids 0":                    {pool: base().Pids(0), wantErr: "spec.resources.pids in body should be greater than or equal to 1"},
		"pids over 32768":           {pool: base().Pids(32769), wantErr: "spec.resources.pids in body should be less than or equal to 32768"},
		"unknown network":           {pool: base().Network("bridge"), wantErr: `spec.network: Unsupported value: "bridge": supported values: "none", "pod", "host"`},
		"unknown pull policy":       {pool: base().ImagePullPolicy("Sometimes"), wantErr: `spec.imagePullPolicy: Unsupported value: "Sometimes"`},
		"negative runAsUser":        {pool: base().RunAs(-1, 0), wantErr: "spec.securityContext.runAsUser in body should be greater than or equal to 0"},
		"negative runAsGroup":       {pool: base().RunAs(0, -1), wantErr: "spec.securityContext.runAsGroup in body should be greater than or equal to 0"},
		"memory not a quantity": {pool: base(), wantErr: "spec.resources.memory",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, "lots", "spec", "resources", "memory")
			}},
		"too many node selector labels": {pool: base(), wantErr: "spec.nodeSelector: Too many",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				sel := map[string]any{}
				for i := range 17 {
					sel[fmt.Sprintf("k%d", i)] = "v"
				}
				setField(t, u, sel, "spec", "nodeSelector")
			}},
	}
	i := 0
	for name, tc := range cases {
		i++
		t.Run(name, func(t *testing.T) {
			u := poolToUnstructured(t, tc.pool.Obj())
			u.SetName(fmt.Sprintf("pool-%d", i))
			if tc.raw != nil {
				tc.raw(t, u)
			}
			checkErr(t, c.Create(ctx, u), tc.wantErr)
		})
	}
}

func testPoolDefaults(ctx context.Context, t *testing.T, c client.Client) {
	u := poolToUnstructured(t, utiltesting.MakeFunctionPool("pool-defaults", "default", "busybox").Obj())
	unstructured.RemoveNestedField(u.Object, "spec", "size")
	if err := c.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	var pool fnletv1alpha1.FunctionPool
	if err := c.Get(ctx, client.ObjectKeyFromObject(u), &pool); err != nil {
		t.Fatal(err)
	}
	if pool.Spec.Size != 1 {
		t.Errorf("size = %d, want 1", pool.Spec.Size)
	}
	if pool.Spec.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("imagePullPolicy = %q, want IfNotPresent", pool.Spec.ImagePullPolicy)
	}
	if pool.Spec.Network != fnletv1alpha1.NetworkNone {
		t.Errorf("network = %q, want none", pool.Spec.Network)
	}
}

// The samples in config/samples are what a new user applies first.
func testSamples(ctx context.Context, t *testing.T, c client.Client) {
	paths, err := filepath.Glob(filepath.Join("..", "..", "config", "samples", "fnlet_v1alpha1_*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no samples found: %v", err)
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(raw, &u.Object); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		u.SetNamespace("default")
		u.SetName("sample-" + u.GetName())
		if err := c.Create(ctx, u); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
	// The namespace samples hold calls among other objects: their calls
	// must pass admission too.
	paths, err = filepath.Glob(filepath.Join("..", "..", "config", "samples", "namespace_*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no namespace samples found: %v", err)
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc+"\n"), &u.Object); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if u.GetKind() != "FunctionCall" {
				continue
			}
			u.SetNamespace("default")
			u.SetName("sample-" + u.GetName())
			if err := c.Create(ctx, u); err != nil {
				t.Errorf("%s: %v", filepath.Base(p), err)
			}
		}
	}
}

func testCreate(ctx context.Context, t *testing.T, c client.Client) {
	base := func() *utiltesting.FunctionCallWrapper { return utiltesting.MakeFunctionCall("", "default") }
	cases := map[string]struct {
		call *utiltesting.FunctionCallWrapper
		// raw edits the JSON sent, after the typed call was converted.
		raw     func(t *testing.T, u *unstructured.Unstructured)
		wantErr string
	}{
		"valid minimal call": {call: base()},
		"valid call using every field": {call: base().
			ImagePullPolicy(corev1.PullNever).PullSecrets("regcred").
			Command("/testfn").Args("-stdout-text", "hi").
			Env("A", "1").Env("EMPTY", "").EnvFromSecret("S", "sec", "k").EnvFromConfigMap("C", "cm", "k").
			WorkingDir("/tmp").Input("some stdin").Timeout(90*time.Second).
			Memory("32Mi").CPU("500m").Pids(64).
			NodeName("node-a").NodeSelector("disk", "ssd").Network(fnletv1alpha1.NetworkHost).
			RunAs(1000, 1000).ReadOnlyRootFilesystem().Privileged().
			TTLSecondsAfterFinished(60).Retries(2),
		},
		"binary input":        {call: base().BinaryInput([]byte{0, 1, 2, 255})},
		"input from a Secret": {call: base().InputFromSecret("sec", "stdin")},
		"binaryData not base64": {call: base(), wantErr: "spec.input.binaryData in body should match",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, "not base64!", "spec", "input", "binaryData")
			}},
		"memory as a plain byte count": {call: base(), raw: func(t *testing.T, u *unstructured.Unstructured) {
			setField(t, u, int64(32<<20), "spec", "resources", "memory")
		}},
		"boundaries are inclusive":       {call: base().Memory("4Mi").CPU("1m").Pids(1).Timeout(24 * time.Hour).Retries(10)},
		"upper boundaries are inclusive": {call: base().Memory("64Gi").CPU("64").Pids(32768)},

		"missing image": {call: base(), wantErr: "spec.image: Required value",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				unstructured.RemoveNestedField(u.Object, "spec", "image")
			}},
		"empty image":      {call: base().Image(""), wantErr: "spec.image in body should be at least 1 chars long"},
		"negative memory":  {call: base().Memory("-1Mi"), wantErr: "memory must be at least 4Mi"},
		"memory 1Mi":       {call: base().Memory("1Mi"), wantErr: "memory must be at least 4Mi"},
		"memory too large": {call: base().Memory("65Gi"), wantErr: "memory must be at most 64Gi"},
		"memory not a quantity": {call: base(), wantErr: "spec.resources.memory",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, "lots", "spec", "resources", "memory")
			}},
		"cpu 0":               {call: base().CPU("0"), wantErr: "cpu must be at least 1m"},
		"cpu too large":       {call: base().CPU("65"), wantErr: "cpu must be at most 64"},
		"pids 0":              {call: base().Pids(0), wantErr: "spec.resources.pids in body should be greater than or equal to 1"},
		"unknown network":     {call: base().Network("bridge"), wantErr: `spec.network: Unsupported value: "bridge": supported values: "none", "pod", "host"`},
		"unknown pull policy": {call: base().ImagePullPolicy("Sometimes"), wantErr: `spec.imagePullPolicy: Unsupported value: "Sometimes"`},
		"env with both value and valueFrom": {call: base().EnvFromSecret("A", "sec", "k"), wantErr: "env: set either value or valueFrom, not both",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				env, _, _ := unstructured.NestedSlice(u.Object, "spec", "env")
				env[0].(map[string]any)["value"] = "x"
				setField(t, u, env, "spec", "env")
			}},
		"env valueFrom without a ref": {call: base(), wantErr: "valueFrom must set exactly one of secretKeyRef or configMapKeyRef",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, []any{map[string]any{"name": "A", "valueFrom": map[string]any{}}}, "spec", "env")
			}},
		"env name not an identifier": {call: base().Env("1-A", "x"), wantErr: "spec.env[0].name in body should match"},
		"duplicate env name":         {call: base().Env("A", "1").Env("A", "2"), wantErr: `spec.env[1]: Duplicate value: {"name":"A"}`},
		"relative workingDir":        {call: base().WorkingDir("tmp"), wantErr: "workingDir must be an absolute path"},
		"input with two sources": {call: base().Input("x"), wantErr: "input must set exactly one of data, binaryData, secretKeyRef or configMapKeyRef",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, map[string]any{"name": "s", "key": "k"}, "spec", "input", "secretKeyRef")
			}},
		"input with no source": {call: base(), wantErr: "input must set exactly one of",
			raw: func(t *testing.T, u *unstructured.Unstructured) { setField(t, u, map[string]any{}, "spec", "input") }},
		"inline input over 1MiB": {call: base().Input(strings.Repeat("x", fnletv1alpha1.MaxInputBytes+1)), wantErr: "spec.input.data: Too long"},
		"timeout 0s":             {call: base().Timeout(0), wantErr: "timeout must be greater than 0s"},
		"timeout over 24h":       {call: base().Timeout(25 * time.Hour), wantErr: "timeout must be at most 24h"},
		"negative timeout":       {call: base().Timeout(-5 * time.Second), wantErr: "timeout must be a duration such as 30s, 5m or 1h30m"},
		"timeout in days": {call: base(), wantErr: "timeout must be a duration such as 30s, 5m or 1h30m",
			raw: func(t *testing.T, u *unstructured.Unstructured) { setField(t, u, "1d", "spec", "timeout") }},
		"retries over 10":       {call: base().Retries(11), wantErr: "spec.retries in body should be less than or equal to 10"},
		"negative runAsUser":    {call: base().RunAs(-1, 0), wantErr: "spec.securityContext.runAsUser in body should be greater than or equal to 0"},
		"negative ttl":          {call: base().TTLSecondsAfterFinished(-1), wantErr: "spec.ttlSecondsAfterFinished in body should be greater than or equal to 0"},
		"too many pull secrets": {call: base().PullSecrets("1", "2", "3", "4", "5", "6", "7", "8", "9"), wantErr: "spec.imagePullSecrets: Too many"},

		// Volumes and scratch.
		"every kind of volume and scratch": {call: base().Memory("64Mi").ReadOnlyRootFilesystem().Scratch("16Mi").
			ConfigMapVolume("cfg", "/etc/app", "app-config", utiltesting.Item("app.yaml", "conf/app.yaml", 0o444)).DefaultMode(0o640).
			SecretVolume("creds", "/var/run/secrets/app", "app-creds").DefaultMode(0o400).OptionalVolume().
			EmptyDir("work", "/work", "32Mi")},
		"volume under /tmp with scratch": {call: base().Scratch("1Mi").EmptyDir("sub", "/tmp/sub", "1Mi")},
		"emptyDir as large as memory":    {call: base().Memory("32Mi").EmptyDir("w", "/w", "32Mi")},
		"relative mountPath": {call: base().EmptyDir("w", "work", "1Mi"),
			wantErr: "mountPath must be an absolute path"},
		"mountPath with ..": {call: base().EmptyDir("w", "/work/../etc", "1Mi"),
			wantErr: "mountPath must not contain . or .. elements"},
		"mountPath with .": {call: base().EmptyDir("w", "/./proc", "1Mi"),
			wantErr: "mountPath must not contain . or .. elements"},
		"mountPath /": {call: base().EmptyDir("w", "/", "1Mi"),
			wantErr: "mountPath must not be /, end with / or contain //"},
		"mountPath with //": {call: base().EmptyDir("w", "//proc", "1Mi"),
			wantErr: "mountPath must not be /, end with / or contain //"},
		"mountPath with a trailing /": {call: base().EmptyDir("w", "/work/", "1Mi"),
			wantErr: "mountPath must not be /, end with / or contain //"},
		"mountPath /proc": {call: base().EmptyDir("w", "/proc", "1Mi"),
			wantErr: "mountPath must not be /proc, /sys or /dev, or under them"},
		"mountPath under /sys": {call: base().EmptyDir("w", "/sys/fs/cgroup", "1Mi"),
			wantErr: "mountPath must not be /proc, /sys or /dev, or under them"},
		"mountPath under /dev": {call: base().SecretVolume("s", "/dev/shm", "sec"),
			wantErr: "mountPath must not be /proc, /sys or /dev, or under them"},
		"mountPath /devices is fine": {call: base().EmptyDir("w", "/devices", "1Mi")},
		"duplicate mountPath": {call: base().EmptyDir("a", "/data", "1Mi").EmptyDir("b", "/data", "1Mi"),
			wantErr: "volumes: each mountPath may be used once"},
		"nested mountPath": {call: base().ConfigMapVolume("a", "/etc/app", "cm").EmptyDir("b", "/etc/app/cache", "1Mi"),
			wantErr: "volumes: a mountPath may not lie under another volume's mountPath"},
		"prefix that is not a parent": {call: base().EmptyDir("a", "/data", "1Mi").EmptyDir("b", "/database", "1Mi")},
		"duplicate volume name": {call: base().EmptyDir("a", "/a", "1Mi").EmptyDir("a", "/b", "1Mi"),
			wantErr: `spec.volumes[1]: Duplicate value: {"name":"a"}`},
		"volume name not a DNS label": {call: base().EmptyDir("My_Vol", "/a", "1Mi"),
			wantErr: "spec.volumes[0].name in body should match"},
		"volume with two sources": {call: base().EmptyDir("a", "/a", "1Mi"), wantErr: "a volume must set exactly one of configMap, secret or emptyDir",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				vols, _, _ := unstructured.NestedSlice(u.Object, "spec", "volumes")
				vols[0].(map[string]any)["secret"] = map[string]any{"secretName": "s"}
				setField(t, u, vols, "spec", "volumes")
			}},
		"volume with no source": {call: base(), wantErr: "a volume must set exactly one of configMap, secret or emptyDir",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, []any{map[string]any{"name": "a", "mountPath": "/a"}}, "spec", "volumes")
			}},
		// There is no hostPath: the field is pruned, and a volume without a
		// source is refused.
		"hostPath does not exist": {call: base(), wantErr: "a volume must set exactly one of configMap, secret or emptyDir",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, []any{map[string]any{"name": "a", "mountPath": "/a", "hostPath": map[string]any{"path": "/"}}}, "spec", "volumes")
			}},
		"absolute item path": {call: base().SecretVolume("s", "/s", "sec", utiltesting.Item("k", "/etc/passwd")),
			wantErr: "items: path must be relative"},
		"item path with ..": {call: base().SecretVolume("s", "/s", "sec", utiltesting.Item("k", "a/../../x")),
			wantErr: "items: path must not contain .. elements"},
		"duplicate item path": {call: base().ConfigMapVolume("c", "/c", "cm", utiltesting.Item("a", "f"), utiltesting.Item("b", "f")),
			wantErr: "items: each path may be used once"},
		"item mode over 0777": {call: base().ConfigMapVolume("c", "/c", "cm", utiltesting.Item("a", "f", 0o1777)),
			wantErr: "spec.volumes[0].configMap.items[0].mode in body should be less than or equal to 511"},
		"defaultMode negative": {call: base().SecretVolume("s", "/s", "sec").DefaultMode(-1),
			wantErr: "spec.volumes[0].secret.defaultMode in body should be greater than or equal to 0"},
		"emptyDir without sizeLimit": {call: base(), wantErr: "spec.volumes[0].emptyDir.sizeLimit: Required value",
			raw: func(t *testing.T, u *unstructured.Unstructured) {
				setField(t, u, []any{map[string]any{"name": "a", "mountPath": "/a", "emptyDir": map[string]any{}}}, "spec", "volumes")
			}},
		"emptyDir of 0": {call: base().EmptyDir("a", "/a", "0"), wantErr: "sizeLimit must be at least 4Ki"},
		"emptyDir over memory": {call: base().Memory("32Mi").EmptyDir("a", "/a", "33Mi"),
			wantErr: "an emptyDir's sizeLimit must be at most resources.memory"},
		"scratch over memory": {call: base().Memory("32Mi").Scratch("64Mi"),
			wantErr: "scratch.sizeLimit must be at most resources.memory"},
		"scratch too large": {call: base().Scratch("65Gi"), wantErr: "sizeLimit must be at most 64Gi"},
		"volume at /tmp with scratch": {call: base().Scratch("1Mi").EmptyDir("t", "/tmp", "1Mi"),
			wantErr: "a volume cannot be mounted at /tmp when scratch is set"},
	}
	i := 0
	for name, tc := range cases {
		i++
		t.Run(name, func(t *testing.T) {
			u := toUnstructured(t, tc.call.Clone().Obj())
			u.SetName(fmt.Sprintf("create-%d", i))
			if tc.raw != nil {
				tc.raw(t, u)
			}
			checkErr(t, c.Create(ctx, u), tc.wantErr)
		})
	}
}

func testDefaults(ctx context.Context, t *testing.T, c client.Client) {
	call := utiltesting.MakeFunctionCall("defaults", "default").Obj()
	if err := c.Create(ctx, call); err != nil {
		t.Fatal(err)
	}
	if call.Spec.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("imagePullPolicy = %q, want IfNotPresent", call.Spec.ImagePullPolicy)
	}
	if call.Spec.Network != fnletv1alpha1.NetworkNone {
		t.Errorf("network = %q, want none", call.Spec.Network)
	}
	if call.Spec.Retries == nil || *call.Spec.Retries != 0 {
		t.Errorf("retries = %v, want 0", call.Spec.Retries)
	}
}

// claim sets status.nodeName through the status subresource, as a manager
// claiming the call does.
func claim(ctx context.Context, t *testing.T, c client.Client, call *fnletv1alpha1.FunctionCall, node string) {
	t.Helper()
	call.Status.NodeName = node
	call.Status.Phase = fnletv1alpha1.PhasePending
	if err := c.Status().Update(ctx, call); err != nil {
		t.Fatalf("claiming: %v", err)
	}
}

func testUpdate(ctx context.Context, t *testing.T, c client.Client) {
	cases := map[string]struct {
		call    *utiltesting.FunctionCallWrapper
		claimed bool
		change  func(*fnletv1alpha1.FunctionCall)
		wantErr string
	}{
		"args change before the claim": {
			call:   utiltesting.MakeFunctionCall("", "default").Args("-exit", "0"),
			change: func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Args = []string{"-exit", "1"} },
		},
		"args change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Args("-exit", "0"), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Args = []string{"-exit", "1"} },
			wantErr: "spec.args: Invalid value: " + immutableMsg,
		},
		"memory change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Memory("32Mi"), claimed: true,
			change: func(fc *fnletv1alpha1.FunctionCall) {
				fc.Spec.Resources.Memory.Add(fc.Spec.Resources.Memory.DeepCopy())
			},
			wantErr: "spec.resources.memory: Invalid value",
		},
		"removing the timeout after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Timeout(time.Minute), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Timeout = nil },
			wantErr: immutableMsg,
		},
		"env change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Env("A", "1"), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Env[0].Value = "2" },
			wantErr: immutableMsg,
		},
		"image change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default"), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Image = "other:v1" },
			wantErr: immutableMsg,
		},
		// binaryData is a plain string to CEL: with format byte, kube-apiserver
		// 1.37 decodes it as URL-safe base64 and fails on '/' and '+'.
		"cancel a binary-input call after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").BinaryInput([]byte{0xfb, 0xff, 0xfe}), claimed: true,
			change: func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Cancel = true },
		},
		"binary input change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").BinaryInput([]byte{0xfb, 0xff, 0xfe}), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Input.BinaryData = []byte{1} },
			wantErr: "spec.input: Invalid value: " + immutableMsg,
		},
		"cancel after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Args("-sleep", "1h"), claimed: true,
			change: func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Cancel = true },
		},
		"finalizer and label after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Memory("32Mi").Timeout(time.Minute), claimed: true,
			change: func(fc *fnletv1alpha1.FunctionCall) {
				fc.Finalizers = append(fc.Finalizers, "fnlet.dev/container")
				fc.Labels = map[string]string{"a": "b"}
			},
		},
		"volumes change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").EmptyDir("w", "/w", "1Mi"), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Volumes[0].MountPath = "/other" },
			wantErr: "spec.volumes: Invalid value: " + immutableMsg,
		},
		"secret volume items change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").SecretVolume("s", "/s", "sec", utiltesting.Item("a", "a")), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Volumes[0].Secret.Items[0].Path = "b" },
			wantErr: "spec.volumes: Invalid value: " + immutableMsg,
		},
		"emptyDir size change after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").EmptyDir("w", "/w", "1Mi"), claimed: true,
			change: func(fc *fnletv1alpha1.FunctionCall) {
				fc.Spec.Volumes[0].EmptyDir.SizeLimit.Add(fc.Spec.Volumes[0].EmptyDir.SizeLimit.DeepCopy())
			},
			wantErr: "spec.volumes: Invalid value: " + immutableMsg,
		},
		"scratch removed after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Scratch("1Mi"), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Scratch = nil },
			wantErr: "spec.scratch: Invalid value: " + immutableMsg,
		},
		"cancel a call with volumes after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Scratch("1Mi").EmptyDir("w", "/w", "1Mi").
				ConfigMapVolume("c", "/c", "cm", utiltesting.Item("a", "a", 0o400)).DefaultMode(0o600), claimed: true,
			change: func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Cancel = true },
		},
		"cancel true to false": {
			call:    utiltesting.MakeFunctionCall("", "default").Cancel(),
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Cancel = false },
			wantErr: "spec.cancel: Invalid value: cancel cannot be set back to false once it is true",
		},
		"cancel true to false after the claim": {
			call: utiltesting.MakeFunctionCall("", "default").Cancel(), claimed: true,
			change:  func(fc *fnletv1alpha1.FunctionCall) { fc.Spec.Cancel = false },
			wantErr: "spec.cancel: Invalid value: cancel cannot be set back to false once it is true",
		},
	}
	i := 0
	for name, tc := range cases {
		i++
		t.Run(name, func(t *testing.T) {
			call := tc.call.Clone().Obj()
			call.Name = fmt.Sprintf("update-%d", i)
			if err := c.Create(ctx, call); err != nil {
				t.Fatal(err)
			}
			if tc.claimed {
				claim(ctx, t, c, call, "node-a")
			}
			tc.change(call)
			checkErr(t, c.Update(ctx, call), tc.wantErr)
		})
	}

	// A call written by hand in YAML keeps its spelling in etcd; a Go client
	// reading it and writing it back sends the canonical spelling. That must
	// count as no change, or a cancel or a finalizer removal would be refused.
	t.Run("read-modify-write of a hand-written spec", func(t *testing.T) {
		u := toUnstructured(t, utiltesting.MakeFunctionCall("handwritten", "default").Env("EMPTY", "").Obj())
		setField(t, u, "90s", "spec", "timeout")
		setField(t, u, map[string]any{"memory": "0.5Gi", "cpu": "0.5"}, "spec", "resources")
		setField(t, u, map[string]any{}, "spec", "nodeSelector")
		setField(t, u, []any{}, "spec", "command")
		setField(t, u, "", "spec", "nodeName")
		setField(t, u, []any{map[string]any{"name": "EMPTY", "value": ""}}, "spec", "env")
		setField(t, u, map[string]any{"sizeLimit": "0.5Mi"}, "spec", "scratch")
		// An emptyDir's sizeLimit is compared as written (a rule normalising
		// quantities across the list costs more than the apiserver allows):
		// written canonically here, as the type's comment asks.
		setField(t, u, []any{map[string]any{"name": "w", "mountPath": "/w", "emptyDir": map[string]any{"sizeLimit": "1Mi"}}}, "spec", "volumes")
		if err := c.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
		var call fnletv1alpha1.FunctionCall
		if err := c.Get(ctx, client.ObjectKeyFromObject(u), &call); err != nil {
			t.Fatal(err)
		}
		claim(ctx, t, c, &call, "node-a")

		call.Finalizers = []string{"fnlet.dev/container"}
		checkErr(t, c.Update(ctx, &call), "")
		call.Spec.Cancel = true
		checkErr(t, c.Update(ctx, &call), "")
		call.Spec.Timeout.Duration += time.Second
		checkErr(t, c.Update(ctx, &call), "spec.timeout: Invalid value")
	})
}

func testStatus(ctx context.Context, t *testing.T, c client.Client) {
	call := utiltesting.MakeFunctionCall("finished", "default").Obj()
	if err := c.Create(ctx, call); err != nil {
		t.Fatal(err)
	}
	claim(ctx, t, c, call, "node-a")
	call.Status = utiltesting.MakeFunctionCall("x", "y").ClaimedBy("node-a").Running().Succeeded().
		Stdout("hello\n", false).Usage(1<<20, 1e6).Obj().Status
	checkErr(t, c.Status().Update(ctx, call), "")
	call.Status.Phase = fnletv1alpha1.PhaseRunning
	checkErr(t, c.Status().Update(ctx, call), "phase cannot change once the call has finished")
}

// The managers watch only the calls of their node and the unclaimed ones,
// with field selectors on status.nodeName.
func testSelectableFields(ctx context.Context, t *testing.T, c client.Client) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "selectors"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, node, pinned string }{
		{"unclaimed", "", ""}, {"pinned", "", "node-b"}, {"on-a", "node-a", ""}, {"on-b", "node-b", "node-b"},
	} {
		call := utiltesting.MakeFunctionCall(tc.name, ns.Name).NodeName(tc.pinned).Obj()
		if err := c.Create(ctx, call); err != nil {
			t.Fatal(err)
		}
		if tc.node != "" {
			claim(ctx, t, c, call, tc.node)
		}
	}
	for _, tc := range []struct {
		field, value string
		want         []string
	}{
		{"status.nodeName", "node-a", []string{"on-a"}},
		{"status.nodeName", "node-b", []string{"on-b"}},
		{"status.nodeName", "", []string{"pinned", "unclaimed"}},
		{"spec.nodeName", "node-b", []string{"on-b", "pinned"}},
		{"status.phase", "Pending", []string{"on-a", "on-b"}},
	} {
		var list fnletv1alpha1.FunctionCallList
		if err := c.List(ctx, &list, client.InNamespace(ns.Name), client.MatchingFields{tc.field: tc.value}); err != nil {
			t.Errorf("list with fieldSelector %s=%s: %v", tc.field, tc.value, err)
			continue
		}
		var got []string
		for _, fc := range list.Items {
			got = append(got, fc.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("fieldSelector %s=%s: got %v, want %v", tc.field, tc.value, got, tc.want)
		}
	}
}
