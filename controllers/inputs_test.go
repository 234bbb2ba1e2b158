package controllers

import (
	"context"
	"encoding/base64"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

var inputLimits = Limits{
	DefaultMemoryBytes: 64 << 20, MaxMemoryBytes: 1 << 30,
	DefaultMilliCPU: 1000, MaxMilliCPU: 4000, DefaultPids: 256,
}

func secret(ns, name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: corev1.SecretTypeOpaque, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func dockerConfigSecret(ns, name, json string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(json)},
	}
}

// inputObjects are the Secrets and ConfigMaps the buildCall cases read.
func inputObjects() []client.Object {
	return []client.Object{
		secret(testNS, "creds", map[string]string{"token": "s3cret", "stdin": "from a secret"}),
		secret("other", "elsewhere", map[string]string{"token": "not yours"}),
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "cfg"},
			Data:       map[string]string{"level": "debug", "stdin": "from a configmap"},
			BinaryData: map[string][]byte{"blob": {0x62, 0x69, 0x6e}},
		},
		dockerConfigSecret(testNS, "regcred", `{"auths":{"registry.example.com":{"username":"u","password":"p"}}}`),
		dockerConfigSecret(testNS, "regcred-url", `{"auths":{"https://ghcr.io/v1/":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("bot:tok:en"))+`"}}}`),
		dockerConfigSecret(testNS, "regcred-broken", `{"auths":`),
		dockerConfigSecret("other", "regcred-elsewhere", `{"auths":{"registry.example.com":{"username":"x","password":"y"}}}`),
		secret(testNS, "opaque-regcred", map[string]string{"password": "p"}),
	}
}

// baseCall is what a call with only an image turns into under inputLimits.
func baseCall(mod func(*ctrd.Call)) ctrd.Call {
	c := ctrd.Call{UID: "uid-a", Namespace: testNS, Name: "a", Image: utiltesting.TestImage,
		MemoryBytes: 64 << 20, MilliCPU: 1000, Pids: 256}
	if mod != nil {
		mod(&c)
	}
	return c
}

func TestUnitBuildCall(t *testing.T) {
	call := func() *utiltesting.FunctionCallWrapper {
		return utiltesting.MakeFunctionCall("a", testNS).UID("uid-a")
	}
	optionalEnv := func(fc *fnletv1.FunctionCall) *fnletv1.FunctionCall {
		for _, e := range fc.Spec.Env {
			if s := e.ValueFrom.SecretKeyRef; s != nil {
				s.Optional = ptr.To(true)
			}
			if c := e.ValueFrom.ConfigMapKeyRef; c != nil {
				c.Optional = ptr.To(true)
			}
		}
		return fc
	}
	getErr := func(kind string, err error) interceptor.Funcs {
		return interceptor.Funcs{Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*corev1.Secret); ok && kind == "Secret" {
				return err
			}
			if _, ok := obj.(*corev1.ConfigMap); ok && kind == "ConfigMap" {
				return err
			}
			return c.Get(ctx, key, obj, opts...)
		}}
	}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "creds", errors.New("no RBAC"))
	forbiddenCM := apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, "cfg", errors.New("no RBAC"))
	// What a namespace without the opt-in is told to run.
	grant := "kubectl create rolebinding fnlet-namespace-reader -n default --clusterrole=fnlet-namespace-reader --serviceaccount=fnlet-system:fnlet-manager"
	cases := map[string]struct {
		fc     *fnletv1.FunctionCall
		limits *Limits
		funcs  *interceptor.Funcs
		want   ctrd.Call
		// wantAuth is the registry logins; nil means none.
		wantAuth ctrd.RegistryAuth
		// wantInvalid is a substring of an errInvalidSpec error.
		wantInvalid string
		// wantErr is a substring of an error that is not the spec's fault.
		wantErr string
	}{
		"image only: the node's default resources": {
			fc:   call().Obj(),
			want: baseCall(nil),
		},
		"process and literal env": {
			fc: call().Command("/bin/fn").Args("-x", "1").WorkingDir("/work").Env("A", "1").Env("EMPTY", "").Obj(),
			want: baseCall(func(c *ctrd.Call) {
				c.Command, c.Args, c.WorkingDir = []string{"/bin/fn"}, []string{"-x", "1"}, "/work"
				c.Env = []string{"A=1", "EMPTY="}
			}),
		},
		"env from a Secret and a ConfigMap, in order": {
			fc: call().Env("A", "1").EnvFromSecret("S", "creds", "token").EnvFromConfigMap("C", "cfg", "level").
				EnvFromConfigMap("B", "cfg", "blob").Obj(),
			want: baseCall(func(c *ctrd.Call) { c.Env = []string{"A=1", "S=s3cret", "C=debug", "B=bin"} }),
		},
		"optional missing Secret and ConfigMap give empty values": {
			fc:   optionalEnv(call().EnvFromSecret("S", "nope", "token").EnvFromConfigMap("C", "nope", "level").Obj()),
			want: baseCall(func(c *ctrd.Call) { c.Env = []string{"S=", "C="} }),
		},
		"optional missing keys give empty values": {
			fc:   optionalEnv(call().EnvFromSecret("S", "creds", "nokey").EnvFromConfigMap("C", "cfg", "nokey").Obj()),
			want: baseCall(func(c *ctrd.Call) { c.Env = []string{"S=", "C="} }),
		},
		"env from a missing Secret": {
			fc:          call().EnvFromSecret("S", "nope", "token").Obj(),
			wantInvalid: "env S: invalid spec: Secret default/nope not found",
		},
		"env from a missing Secret key": {
			fc:          call().EnvFromSecret("S", "creds", "nokey").Obj(),
			wantInvalid: `Secret default/creds has no key "nokey"`,
		},
		"env from a missing ConfigMap": {
			fc:          call().EnvFromConfigMap("C", "nope", "level").Obj(),
			wantInvalid: "ConfigMap default/nope not found",
		},
		"env from a missing ConfigMap key": {
			fc:          call().EnvFromConfigMap("C", "cfg", "nokey").Obj(),
			wantInvalid: `ConfigMap default/cfg has no key "nokey"`,
		},
		"env from a Secret that exists only in another namespace": {
			fc:          call().EnvFromSecret("S", "elsewhere", "token").Obj(),
			wantInvalid: "Secret default/elsewhere not found",
		},
		"env from a Secret the manager may not read: the message says what to bind": {
			fc:          call().EnvFromSecret("S", "creds", "token").Obj(),
			funcs:       ptr.To(getErr("Secret", forbidden)),
			wantInvalid: "env S: invalid spec: Secret default/creds is not readable: the fnlet manager may not read Secrets or ConfigMaps in namespace default, which has not opted in; to allow it, bind the ClusterRole fnlet-namespace-reader in that namespace: " + grant,
		},
		"an optional Secret the manager may not read is still InvalidSpec": {
			fc:          optionalEnv(call().EnvFromSecret("S", "creds", "token").Obj()),
			funcs:       ptr.To(getErr("Secret", forbidden)),
			wantInvalid: grant,
		},
		"volumes: every key of a ConfigMap, items of a Secret with modes, an emptyDir, scratch": {
			fc: call().ConfigMapVolume("cfg", "/etc/app", "cfg").
				SecretVolume("creds", "/run/creds", "creds", utiltesting.Item("token", "auth/token", 0o400), utiltesting.Item("stdin", "in")).DefaultMode(0o440).
				EmptyDir("work", "/work", "8Mi").Scratch("4Mi").Obj(),
			want: baseCall(func(c *ctrd.Call) {
				c.Volumes = []ctrd.Volume{
					{Name: "cfg", MountPath: "/etc/app", Files: []ctrd.File{
						{Path: "blob", Data: []byte("bin"), Mode: 0o644},
						{Path: "level", Data: []byte("debug"), Mode: 0o644},
						{Path: "stdin", Data: []byte("from a configmap"), Mode: 0o644},
					}},
					{Name: "creds", MountPath: "/run/creds", Files: []ctrd.File{
						{Path: "auth/token", Data: []byte("s3cret"), Mode: 0o400},
						{Path: "in", Data: []byte("from a secret"), Mode: 0o440},
					}},
					{Name: "work", MountPath: "/work", TmpfsBytes: 8 << 20},
				}
				c.ScratchBytes = 4 << 20
			}),
		},
		"volume from a missing ConfigMap": {
			fc:          call().ConfigMapVolume("cfg", "/etc/app", "nope").Obj(),
			wantInvalid: "volume cfg: invalid spec: ConfigMap default/nope not found",
		},
		"volume from a missing Secret": {
			fc:          call().SecretVolume("creds", "/creds", "nope").Obj(),
			wantInvalid: "volume creds: invalid spec: Secret default/nope not found",
		},
		"volume item of a missing Secret key": {
			fc:          call().SecretVolume("creds", "/creds", "creds", utiltesting.Item("nokey", "k")).Obj(),
			wantInvalid: `volume creds: invalid spec: Secret default/creds has no key "nokey"`,
		},
		"volume item of a missing ConfigMap key": {
			fc:          call().ConfigMapVolume("cfg", "/cfg", "cfg", utiltesting.Item("nokey", "k")).Obj(),
			wantInvalid: `volume cfg: invalid spec: ConfigMap default/cfg has no key "nokey"`,
		},
		"optional volumes: a missing object is an empty volume, a missing key no file": {
			fc: call().SecretVolume("a", "/a", "nope").OptionalVolume().
				ConfigMapVolume("b", "/b", "cfg", utiltesting.Item("nokey", "x"), utiltesting.Item("level", "level")).OptionalVolume().Obj(),
			want: baseCall(func(c *ctrd.Call) {
				c.Volumes = []ctrd.Volume{
					{Name: "a", MountPath: "/a"},
					{Name: "b", MountPath: "/b", Files: []ctrd.File{{Path: "level", Data: []byte("debug"), Mode: 0o644}}},
				}
			}),
		},
		"volume from a Secret of another namespace": {
			fc:          call().SecretVolume("s", "/s", "elsewhere").Obj(),
			wantInvalid: "Secret default/elsewhere not found",
		},
		"volume from a Secret the manager may not read: the message says what to bind": {
			fc:          call().SecretVolume("s", "/s", "creds").Obj(),
			funcs:       ptr.To(getErr("Secret", forbidden)),
			wantInvalid: "volume s: invalid spec: Secret default/creds is not readable: the fnlet manager may not read Secrets or ConfigMaps in namespace default, which has not opted in; to allow it, bind the ClusterRole fnlet-namespace-reader in that namespace: " + grant,
		},
		"input from a ConfigMap the manager may not read": {
			fc:          call().InputFromConfigMap("cfg", "stdin").Obj(),
			funcs:       ptr.To(getErr("ConfigMap", forbiddenCM)),
			wantInvalid: "input: invalid spec: ConfigMap default/cfg is not readable: the fnlet manager may not read Secrets or ConfigMaps in namespace default, which has not opted in; to allow it, bind the ClusterRole fnlet-namespace-reader in that namespace: " + grant,
		},
		"imagePullSecret the manager may not read": {
			fc:          call().PullSecrets("regcred").Obj(),
			funcs:       ptr.To(getErr("Secret", forbidden)),
			wantInvalid: `imagePullSecret "regcred": the fnlet manager may not read Secrets or ConfigMaps in namespace default, which has not opted in; to allow it, bind the ClusterRole fnlet-namespace-reader in that namespace: ` + grant,
		},
		"no Secret or ConfigMap referenced: nothing is read, any namespace works": {
			fc: call().Env("A", "1").Input("x").Obj(),
			funcs: &interceptor.Funcs{Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
				return forbidden
			}},
			want: baseCall(func(c *ctrd.Call) { c.Env, c.Input = []string{"A=1"}, []byte("x") }),
		},
		"an API error reading a Secret is not the spec's fault": {
			fc:      call().EnvFromSecret("S", "creds", "token").Obj(),
			funcs:   ptr.To(getErr("Secret", apierrors.NewInternalError(errors.New("etcd is sad")))),
			wantErr: "etcd is sad",
		},
		"input data": {
			fc:   call().Input("hello\n").Obj(),
			want: baseCall(func(c *ctrd.Call) { c.Input = []byte("hello\n") }),
		},
		"input binaryData": {
			fc:   call().BinaryInput([]byte{0, 0xff, 1}).Obj(),
			want: baseCall(func(c *ctrd.Call) { c.Input = []byte{0, 0xff, 1} }),
		},
		"input from a Secret": {
			fc:   call().InputFromSecret("creds", "stdin").Obj(),
			want: baseCall(func(c *ctrd.Call) { c.Input = []byte("from a secret") }),
		},
		"input from a ConfigMap": {
			fc:   call().InputFromConfigMap("cfg", "stdin").Obj(),
			want: baseCall(func(c *ctrd.Call) { c.Input = []byte("from a configmap") }),
		},
		"input from a missing Secret": {
			fc:          call().InputFromSecret("nope", "stdin").Obj(),
			wantInvalid: "input: invalid spec: Secret default/nope not found",
		},
		"resources": {
			fc: call().Memory("32Mi").CPU("500m").Pids(64).Obj(),
			want: baseCall(func(c *ctrd.Call) {
				c.MemoryBytes, c.MilliCPU, c.Pids = 32<<20, 500, 64
			}),
		},
		"resources at the node's maxima": {
			fc:   call().Memory("1Gi").CPU("4").Obj(),
			want: baseCall(func(c *ctrd.Call) { c.MemoryBytes, c.MilliCPU = 1<<30, 4000 }),
		},
		"memory over the node's maximum": {
			fc:          call().Memory("2Gi").Obj(),
			wantInvalid: "resources.memory 2147483648 bytes is over this node's maximum of 1073741824",
		},
		"cpu over the node's maximum": {
			fc:          call().CPU("8").Obj(),
			wantInvalid: "resources.cpu 8000m is over this node's maximum of 4000m",
		},
		"default memory over the maximum": {
			fc:          call().Obj(),
			limits:      &Limits{DefaultMemoryBytes: 2 << 30, MaxMemoryBytes: 1 << 30},
			wantInvalid: "resources.memory",
		},
		"no maxima configured": {
			fc:     call().Memory("64Gi").CPU("64").Obj(),
			limits: &Limits{},
			want: baseCall(func(c *ctrd.Call) {
				c.MemoryBytes, c.MilliCPU, c.Pids = 64<<30, 64000, 0
			}),
		},
		"runAsUser and runAsGroup": {
			fc:   call().RunAs(1000, 2000).Obj(),
			want: baseCall(func(c *ctrd.Call) { c.User = &ctrd.User{UID: 1000, GID: 2000} }),
		},
		"runAsUser alone: the group is the user's id": {
			fc: func() *fnletv1.FunctionCall {
				fc := call().Obj()
				fc.Spec.SecurityContext = &fnletv1.CallSecurityContext{RunAsUser: ptr.To[int64](1000)}
				return fc
			}(),
			want: baseCall(func(c *ctrd.Call) { c.User = &ctrd.User{UID: 1000, GID: 1000} }),
		},
		"readOnlyRootFilesystem and privileged": {
			fc:   call().ReadOnlyRootFilesystem().Privileged().Obj(),
			want: baseCall(func(c *ctrd.Call) { c.ReadOnlyRootfs, c.Privileged = true, true }),
		},
		"explicit false security settings": {
			fc: func() *fnletv1.FunctionCall {
				fc := call().Obj()
				fc.Spec.SecurityContext = &fnletv1.CallSecurityContext{ReadOnlyRootFilesystem: ptr.To(false), Privileged: ptr.To(false)}
				return fc
			}(),
			want: baseCall(nil),
		},
		"network host": {
			fc:   call().Network(fnletv1.NetworkHost).Obj(),
			want: baseCall(func(c *ctrd.Call) { c.HostNetwork = true }),
		},
		"network none": {
			fc:   call().Network(fnletv1.NetworkNone).Obj(),
			want: baseCall(nil),
		},
		"imagePullSecrets merged into one RegistryAuth": {
			fc:   call().PullSecrets("regcred", "regcred-url").Obj(),
			want: baseCall(nil),
			wantAuth: ctrd.RegistryAuth{
				"registry.example.com": {Username: "u", Password: "p"},
				"ghcr.io":              {Username: "bot", Password: "tok:en"},
			},
		},
		"imagePullSecret of the wrong type": {
			fc:          call().PullSecrets("opaque-regcred").Obj(),
			wantInvalid: `imagePullSecret "opaque-regcred" has type "Opaque", want kubernetes.io/dockerconfigjson`,
		},
		"imagePullSecret missing": {
			fc:          call().PullSecrets("nope").Obj(),
			wantInvalid: `imagePullSecret "nope" not found in namespace default`,
		},
		"imagePullSecret only in another namespace": {
			fc:          call().PullSecrets("regcred-elsewhere").Obj(),
			wantInvalid: `imagePullSecret "regcred-elsewhere" not found in namespace default`,
		},
		"imagePullSecret that is not JSON": {
			fc:          call().PullSecrets("regcred-broken").Obj(),
			wantInvalid: `imagePullSecret "regcred-broken": parse docker config json`,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(inputObjects()...)
			if tc.funcs != nil {
				b = b.WithInterceptorFuncs(*tc.funcs)
			}
			lim := inputLimits
			if tc.limits != nil {
				lim = *tc.limits
			}

			got, auth, err := inputResolver{reader: b.Build(), managerUser: "system:serviceaccount:fnlet-system:fnlet-manager"}.buildCall(context.Background(), tc.fc, lim)

			switch {
			case tc.wantInvalid != "":
				if !errors.Is(err, errInvalidSpec) || !strings.Contains(err.Error(), tc.wantInvalid) {
					t.Fatalf("err = %v, want an invalid spec error containing %q", err, tc.wantInvalid)
				}
				return
			case tc.wantErr != "":
				if err == nil || errors.Is(err, errInvalidSpec) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a transient error containing %q", err, tc.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("buildCall: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("call (-want +got):\n%s", diff.Diff(tc.want, got))
			}
			if len(auth) != len(tc.wantAuth) || (len(auth) > 0 && !reflect.DeepEqual(auth, tc.wantAuth)) {
				t.Errorf("auth = %v, want %v", auth, tc.wantAuth)
			}
		})
	}
}

func TestUnitGrantCommand(t *testing.T) {
	for user, want := range map[string]string{
		"system:serviceaccount:fnlet-system:fnlet-manager": "kubectl create rolebinding fnlet-namespace-reader -n team-a --clusterrole=fnlet-namespace-reader --serviceaccount=fnlet-system:fnlet-manager",
		"fnlet-manager": "kubectl create rolebinding fnlet-namespace-reader -n team-a --clusterrole=fnlet-namespace-reader --user=fnlet-manager",
		"":              "kubectl create rolebinding fnlet-namespace-reader -n team-a --clusterrole=fnlet-namespace-reader --serviceaccount=<manager-namespace>:<manager-service-account>",
	} {
		if got := GrantCommand("team-a", user); got != want {
			t.Errorf("GrantCommand(team-a, %q) = %q, want %q", user, got, want)
		}
	}
}

func TestUnitCommandWarning(t *testing.T) {
	cases := map[string]struct {
		command []string
		args    []string
		want    string
	}{
		"no command":                  {},
		"one word per element":        {command: []string{"/bin/fn", "-x", "1"}},
		"spaces in args are expected": {command: []string{"/bin/echo"}, args: []string{"hello world"}},
		"a shell line in one element": {command: []string{"sh -c echo hi"}, want: `command[0] "sh -c echo hi" contains whitespace`},
		"a tab in the executable":     {command: []string{"/bin/fn\t-x"}, want: `command[0] "/bin/fn\t-x" contains whitespace`},
		"a shell script argument":     {command: []string{"sh", "-c", "echo hi"}},
		"spaces in later elements":    {command: []string{"/bin/fn", "a b"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			fc := utiltesting.MakeFunctionCall("a", testNS).Command(tc.command...).Args(tc.args...).Obj()
			got := commandWarning(fc)
			if tc.want == "" {
				if got != "" {
					t.Errorf("commandWarning = %q, want none", got)
				}
				return
			}
			if !strings.Contains(got, tc.want) || !strings.Contains(got, "the shell does not split it") {
				t.Errorf("commandWarning = %q, want it to contain %q and explain why", got, tc.want)
			}
		})
	}
}

// Reads of Secrets run under a logger that drops V(8) and above, where
// client-go logs request and response bodies (a Secret's data); the rest
// of the manager's verbosity is untouched.
func TestUnitReadsDoNotLogBodies(t *testing.T) {
	var lines []string
	base := funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{Verbosity: 10})
	ctx := withoutBodyLogs(logr.NewContext(context.Background(), base.WithName("reconcile")))
	l := logr.FromContextOrDiscard(ctx).WithValues("call", "a")
	l.V(8).Info("Response Body", "body", "s3cret")
	l.V(7).Info("kept")
	if len(lines) != 1 || !strings.Contains(lines[0], "kept") || strings.Contains(strings.Join(lines, "\n"), "s3cret") {
		t.Errorf("logged %q, want only the V(7) line", lines)
	}
	if !base.V(8).Enabled() {
		t.Errorf("the manager's own logger lost its verbosity")
	}
}
