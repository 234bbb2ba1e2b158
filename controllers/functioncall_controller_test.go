package controllers

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/diff"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

const (
	testNode  = "node-a"
	otherNode = "node-b"
	testNS    = "default"
	image     = utiltesting.TestImage

	defaultTimeout = 10 * time.Minute
	maxTimeout     = time.Hour
	killGrace      = 5 * time.Second
)

// t0 is when the tests' calls are claimed; whole seconds, as the apiserver
// stores times.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := fnletv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// harness is one reconciler of node-a over a fake API server, a fake
// runtime and a fake clock, with what it did recorded.
type harness struct {
	t        *testing.T
	client   client.Client
	rt       *fakeRuntime
	clock    *clocktesting.FakePassiveClock
	recorder *events.FakeRecorder
	log      *opLog
	r        *FunctionCallReconciler

	// statusUpdateErr, when set, fails status writes (a lost claim race).
	statusUpdateErr error
}

func newHarness(t *testing.T, objs ...client.Object) *harness {
	t.Helper()
	h := &harness{
		t:        t,
		clock:    clocktesting.NewFakePassiveClock(t0),
		recorder: events.NewFakeRecorder(100),
		log:      &opLog{},
	}
	h.rt = newFakeRuntime(h.clock, h.log)
	h.client = fake.NewClientBuilder().
		WithScheme(testScheme(t)).
		WithStatusSubresource(&fnletv1.FunctionCall{}).
		WithIndex(&fnletv1.FunctionCall{}, ActiveNodeIndex, ActiveNode).
		WithIndex(&fnletv1.FunctionCall{}, NodeNameField, func(o client.Object) []string {
			return []string{o.(*fnletv1.FunctionCall).Status.NodeName}
		}).
		WithObjects(objs...).
		WithInterceptorFuncs(interceptor.Funcs{
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				if h.statusUpdateErr != nil {
					return h.statusUpdateErr
				}
				if err := c.SubResource(sub).Update(ctx, obj, opts...); err != nil {
					return err
				}
				if fc, ok := obj.(*fnletv1.FunctionCall); ok {
					h.log.add("status %s %s", fc.Name, fc.Status.Phase)
				}
				return nil
			},
		}).
		Build()
	h.r = &FunctionCallReconciler{
		Client:     h.client,
		Unassigned: h.client,
		APIReader:  h.client,
		Recorder:   h.recorder,
		Runtime:    h.rt,
		Clock:      h.clock,
		NodeName:   testNode,
		NodeLabels: labels.Set{"zone": "a"},
		Capacity:   Capacity{MaxCalls: 4},
		Limits: Limits{
			DefaultMemoryBytes: 64 << 20, MaxMemoryBytes: 1 << 30,
			DefaultMilliCPU: 1000, MaxMilliCPU: 4000, DefaultPids: 256,
		},
		DefaultTimeout: defaultTimeout,
		MaxTimeout:     maxTimeout,
		KillGrace:      killGrace,
		// The state machine at each step; TestUnitReconcileDefersRunningWrite
		// covers the default, deferred Running write.
		RunningWriteDelay: -1,
	}
	return h
}

func (h *harness) reconcile(name string) (ctrl.Result, error) {
	return h.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: testNS, Name: name}})
}

func (h *harness) mustReconcile(name string) ctrl.Result {
	h.t.Helper()
	res, err := h.reconcile(name)
	if err != nil {
		h.t.Fatalf("Reconcile(%s): %v", name, err)
	}
	return res
}

// call reads a call back from the API; nil when it is gone.
func (h *harness) call(name string) *fnletv1.FunctionCall {
	h.t.Helper()
	var fc fnletv1.FunctionCall
	err := h.client.Get(context.Background(), types.NamespacedName{Namespace: testNS, Name: name}, &fc)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return &fc
}

func (h *harness) mustCall(name string) *fnletv1.FunctionCall {
	h.t.Helper()
	fc := h.call(name)
	if fc == nil {
		h.t.Fatalf("call %s is gone", name)
	}
	return fc
}

// events drains the recorded Events ("Type Reason message").
func (h *harness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// callView is the user-visible part of a call that tests compare whole;
// times and messages are checked separately.
type callView struct {
	Phase      fnletv1.CallPhase
	Reason     fnletv1.CallReason
	ExitCode   *int32
	Signal     string
	PullError  fnletv1.PullError
	NodeName   string
	Attempts   int32
	Conditions []string // Type=Status/Reason, sorted
	Finalizers []string
}

func viewOf(fc *fnletv1.FunctionCall) callView {
	v := callView{
		Phase: fc.Status.Phase, Reason: fc.Status.Reason, ExitCode: fc.Status.ExitCode, Signal: fc.Status.Signal,
		PullError: fc.Status.PullError, NodeName: fc.Status.NodeName, Attempts: fc.Status.Attempts,
		Finalizers: fc.Finalizers,
	}
	for _, c := range fc.Status.Conditions {
		v.Conditions = append(v.Conditions, fmt.Sprintf("%s=%s/%s", c.Type, c.Status, c.Reason))
	}
	slices.Sort(v.Conditions)
	return v
}

func checkView(t *testing.T, fc *fnletv1.FunctionCall, want callView) {
	t.Helper()
	if got := viewOf(fc); !reflect.DeepEqual(got, want) {
		t.Errorf("call status (-want +got):\n%s", diff.Diff(want, got))
	}
}

func checkMessage(t *testing.T, fc *fnletv1.FunctionCall, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(fc.Status.Message, w) {
			t.Errorf("status.message = %q, want it to contain %q", fc.Status.Message, w)
		}
	}
	if c := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionFinished); c != nil && c.Message != fc.Status.Message {
		t.Errorf("Finished condition message %q differs from status.message %q", c.Message, fc.Status.Message)
	}
}

// checkEvents wants one Event per entry, in order, each containing it.
func checkEvents(t *testing.T, got, want []string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = strings.Contains(got[i], want[i])
	}
	if !ok {
		t.Errorf("events:\n got  %q\n want %q (substrings)", got, want)
	}
}

func checkRuntime(t *testing.T, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("runtime calls:\n got  %q\n want %q", got, want)
	}
}

func checkResult(t *testing.T, got, want ctrl.Result) {
	t.Helper()
	if got != want {
		t.Errorf("result = %+v, want %+v", got, want)
	}
}

func conds(c ...string) []string {
	slices.Sort(c)
	return c
}

// Conditions a call carries at each point of its life.
var (
	claimedConds = []string{"Claimed=True/Claimed"}
	runningConds = []string{"Claimed=True/Claimed", "ImageReady=True/ImagePresent", "Started=True/Started"}
	finalizers   = []string{Finalizer}
)

func finishedConds(base []string, reason fnletv1.CallReason) []string {
	return conds(append(slices.Clone(base), "Finished=True/"+string(reason))...)
}

func uidOf(name string) string { return "uid-" + name }

// newCall is an unassigned call as a user creates it.
func newCall(name string) *utiltesting.FunctionCallWrapper {
	return utiltesting.MakeFunctionCall(name, testNS).UID(types.UID(uidOf(name))).Created(t0.Add(-time.Second)).Now(t0)
}

// claimedCall is a call this node claimed at t0 and has not started yet.
func claimedCall(name string) *utiltesting.FunctionCallWrapper {
	return newCall(name).Finalizers(Finalizer).ClaimedBy(testNode).ContainerID(ctrd.ContainerID(uidOf(name)))
}

// runningCall is a call this node claimed and started at t0.
func runningCall(name string) *utiltesting.FunctionCallWrapper {
	return claimedCall(name).Running()
}

func TestUnitReconcileClaim(t *testing.T) {
	busy := func(name string) *utiltesting.FunctionCallWrapper { return runningCall(name).Memory("64Mi") }
	cases := map[string]struct {
		objs        []client.Object
		setup       func(*harness)
		wantClaimed bool
		wantResult  ctrl.Result
		wantEvents  []string
		wantRuntime []string
	}{
		"unassigned call is claimed and started in the same reconcile": {
			objs:        []client.Object{newCall("a").Obj()},
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			// No Normal Events for what the status says; a pull is news.
			wantEvents:  []string{"Normal Pulled Pulled " + image},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
		"spec.nodeName of this node": {
			objs:        []client.Object{newCall("a").NodeName(testNode).Obj()},
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
		// A call that fits only another live node is left to it: no write.
		"spec.nodeName of another node": {
			objs:  []client.Object{newCall("a").NodeName(otherNode).Obj()},
			setup: func(h *harness) { h.r.Nodes = staticNodes{liveNode(otherNode)} },
		},
		"nodeSelector not matching the node's labels": {
			objs:  []client.Object{newCall("a").NodeSelector("zone", "b").Obj()},
			setup: func(h *harness) { h.r.Nodes = staticNodes{liveNode(otherNode, "zone", "b")} },
		},
		"nodeSelector with a label the node lacks": {
			objs:  []client.Object{newCall("a").NodeSelector("zone", "a").NodeSelector("gpu", "true").Obj()},
			setup: func(h *harness) { h.r.Nodes = staticNodes{liveNode(otherNode, "zone", "a", "gpu", "true")} },
		},
		"nodeSelector matching the node's labels": {
			objs:        []client.Object{newCall("a").NodeSelector("zone", "a").Obj()},
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
		"node at MaxCalls: waits for a free slot": {
			objs:       []client.Object{busy("busy").Obj(), newCall("a").Obj()},
			setup:      func(h *harness) { h.r.Capacity.MaxCalls = 1 },
			wantResult: ctrl.Result{RequeueAfter: 500 * time.Millisecond},
		},
		"finished calls and other nodes' calls leave the slot free": {
			objs: []client.Object{
				busy("done").Succeeded().Obj(),
				newCall("elsewhere").ClaimedBy(otherNode).Running().Obj(),
				newCall("a").Obj(),
			},
			setup:       func(h *harness) { h.r.Capacity.MaxCalls = 1; h.rt.withImages(image) },
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
		"memory budget exceeded": {
			objs:       []client.Object{busy("busy").Obj(), newCall("a").Memory("64Mi").Obj()},
			setup:      func(h *harness) { h.r.Capacity.MemoryBudgetBytes = 100 << 20 },
			wantResult: ctrl.Result{RequeueAfter: 500 * time.Millisecond},
		},
		"memory budget exceeded by the default memory of a call without resources": {
			objs:       []client.Object{busy("busy").Obj(), newCall("a").Obj()},
			setup:      func(h *harness) { h.r.Capacity.MemoryBudgetBytes = 100 << 20 },
			wantResult: ctrl.Result{RequeueAfter: 500 * time.Millisecond},
		},
		"memory budget with room": {
			objs:        []client.Object{busy("busy").Obj(), newCall("a").Memory("32Mi").Obj()},
			setup:       func(h *harness) { h.r.Capacity.MemoryBudgetBytes = 100 << 20; h.rt.withImages(image) },
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
		"another node won the claim race (conflict)": {
			objs: []client.Object{newCall("a").Obj()},
			setup: func(h *harness) {
				h.statusUpdateErr = apierrors.NewConflict(schema.GroupResource{Group: "fnlet.dev", Resource: "functioncalls"}, "a", errors.New("the object has been modified"))
			},
		},
		"a call applied again from a finished one's YAML: its finished label goes, then it is claimed": {
			objs:        []client.Object{newCall("a").Label(fnletv1.LabelFinished, "true").Obj()},
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
		"a command element with whitespace is claimed with a warning": {
			objs:        []client.Object{newCall("a").Command("sh -c", "echo hi").Obj()},
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantClaimed: true,
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantEvents:  []string{`Warning SuspiciousCommand command[0] "sh -c" contains whitespace`},
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.objs...)
			if tc.setup != nil {
				tc.setup(h)
			}
			before := h.mustCall("a")

			res, err := h.reconcile("a")
			if err != nil {
				t.Fatalf("Reconcile: %v", err)
			}

			checkResult(t, res, tc.wantResult)
			checkEvents(t, h.events(), tc.wantEvents)
			checkRuntime(t, h.rt.recorded(), tc.wantRuntime)
			got := h.mustCall("a")
			if !tc.wantClaimed {
				checkView(t, got, viewOf(before))
				if got.ResourceVersion != before.ResourceVersion {
					t.Errorf("an unclaimed call was written: resourceVersion %s -> %s", before.ResourceVersion, got.ResourceVersion)
				}
				return
			}
			checkView(t, got, callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1,
				Conditions: runningConds, Finalizers: finalizers})
			if got.Status.ClaimedAt == nil || !got.Status.ClaimedAt.Time.Equal(t0) {
				t.Errorf("claimedAt = %v, want %v", got.Status.ClaimedAt, t0)
			}
			if got.Status.StartedAt == nil || !got.Status.StartedAt.Time.Equal(t0) {
				t.Errorf("startedAt = %v, want %v", got.Status.StartedAt, t0)
			}
			if v, ok := got.Labels[fnletv1.LabelFinished]; ok {
				t.Errorf("a claimed call carries %s=%s: this node's cache would not show it", fnletv1.LabelFinished, v)
			}
			if want := ctrd.ContainerID("uid-a"); got.Status.ContainerID != want {
				t.Errorf("containerID = %q, want %q", got.Status.ContainerID, want)
			}
			if c := meta.FindStatusCondition(got.Status.Conditions, fnletv1.ConditionClaimed); c == nil || !strings.Contains(c.Message, testNode) {
				t.Errorf("Claimed condition = %+v, want a message naming %s", c, testNode)
			}
			if ph := h.rt.phase("uid-a"); ph != ctrd.PhaseRunning {
				t.Errorf("runtime phase = %s, want Running", ph)
			}
		})
	}
}

// A call some other node claimed is none of our business: no write, no
// runtime call, whatever its phase or deletion state.
func TestUnitReconcileIgnoresOtherNodesCalls(t *testing.T) {
	cases := map[string]*fnletv1.FunctionCall{
		"running":  newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Obj(),
		"pending":  newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Obj(),
		"finished": newCall("a").ClaimedBy(otherNode).Running().Succeeded().TTLSecondsAfterFinished(0).Obj(),
		"deleted":  newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Deleted(t0).Obj(),
		"cancelled": newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Cancel().
			Obj(),
	}
	for name, fc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, fc)
			before := h.mustCall("a")
			checkResult(t, h.mustReconcile("a"), ctrl.Result{})
			got := h.mustCall("a")
			if got.ResourceVersion != before.ResourceVersion {
				t.Errorf("another node's call was written")
			}
			checkRuntime(t, h.rt.recorded(), nil)
			checkEvents(t, h.events(), nil)
		})
	}
}

func TestUnitReconcileStart(t *testing.T) {
	pullFailure := func(class ctrd.PullErrorClass, msg string) func(*harness) {
		return func(h *harness) {
			h.rt.pullErrs[image] = &ctrd.ImageError{Ref: image, Class: class, Err: errors.New(msg)}
		}
	}
	failedCall := func(reason fnletv1.CallReason, attempts int32) callView {
		return callView{Phase: fnletv1.PhaseFailed, Reason: reason, NodeName: testNode, Attempts: attempts,
			Conditions: finishedConds(claimedConds, reason)}
	}
	pullFailed := func(pe fnletv1.PullError) callView {
		v := failedCall(fnletv1.ReasonImagePullFailed, 1)
		v.PullError = pe
		return v
	}
	var (
		ensure   = "EnsureImage " + image + " IfNotPresent"
		pullFail = []string{ensure, "Delete uid-a"}
		runFail  = []string{ensure, "Run uid-a", "Delete uid-a"}
		noStart  = []string{"Delete uid-a"} // a Pending call never needs State first
	)
	dockerConfig := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: testNS},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(
			`{"auths":{"registry.example.com":{"username":"u","password":"p"}}}`)},
	}
	cases := map[string]struct {
		call        *fnletv1.FunctionCall
		objs        []client.Object
		setup       func(*harness)
		wantView    callView
		wantMessage []string
		wantEvents  []string
		wantRuntime []string
		wantResult  ctrl.Result
		wantRun     func(*testing.T, ctrd.Call, ctrd.RegistryAuth)
	}{
		"starts a claimed call": {
			call:        claimedCall("a").Obj(),
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantView:    callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1, Conditions: runningConds, Finalizers: finalizers},
			wantRuntime: []string{ensure, "Run uid-a"},
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
		},
		"adds the finalizer before it starts anything": {
			call:        newCall("a").ClaimedBy(testNode).Obj(),
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantView:    callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1, Conditions: runningConds, Finalizers: finalizers},
			wantRuntime: []string{ensure, "Run uid-a"},
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
		},
		"imagePullPolicy Always and the pull secrets reach the runtime": {
			call:  claimedCall("a").ImagePullPolicy(corev1.PullAlways).PullSecrets("regcred").Obj(),
			objs:  []client.Object{dockerConfig},
			setup: func(h *harness) { h.rt.withImages(image) },
			wantView: callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1,
				Conditions: runningConds, Finalizers: finalizers},
			wantEvents:  []string{"Normal Pulled Pulled " + image + " (sha256:0123)"},
			wantRuntime: []string{"EnsureImage " + image + " Always", "Run uid-a"},
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRun: func(t *testing.T, _ ctrd.Call, auth ctrd.RegistryAuth) {
				want := ctrd.RegistryAuth{"registry.example.com": {Username: "u", Password: "p"}}
				if !reflect.DeepEqual(auth, want) {
					t.Errorf("auth = %v, want %v", auth, want)
				}
			},
		},
		"image not found": {
			call:        claimedCall("a").Obj(),
			setup:       pullFailure(ctrd.PullNotFound, "manifest unknown"),
			wantView:    pullFailed(fnletv1.PullErrorNotFound),
			wantMessage: []string{"pull " + image, "manifest unknown"},
			wantEvents:  []string{"Warning ImagePullFailed pull " + image + ": manifest unknown"},
			wantRuntime: pullFail,
		},
		"registry refuses the credentials": {
			call:        claimedCall("a").Obj(),
			setup:       pullFailure(ctrd.PullUnauthorized, "401 Unauthorized"),
			wantView:    pullFailed(fnletv1.PullErrorUnauthorized),
			wantMessage: []string{"401 Unauthorized"},
			wantEvents:  []string{"Warning ImagePullFailed"},
			wantRuntime: pullFail,
		},
		"registry unreachable": {
			call:        claimedCall("a").Obj(),
			setup:       pullFailure(ctrd.PullUnreachable, "dial tcp 10.0.0.1:443: connect: connection refused"),
			wantView:    pullFailed(fnletv1.PullErrorUnreachable),
			wantMessage: []string{"connection refused"},
			wantEvents:  []string{"Warning ImagePullFailed"},
			wantRuntime: pullFail,
		},
		"imagePullPolicy Never and the image is absent": {
			call:        claimedCall("a").ImagePullPolicy(corev1.PullNever).Obj(),
			wantView:    pullFailed(fnletv1.PullErrorNotFound),
			wantMessage: []string{"imagePullPolicy is Never"},
			wantEvents:  []string{"Warning ImagePullFailed"},
			wantRuntime: []string{"EnsureImage " + image + " Never", "Delete uid-a"},
		},
		"runtime rejects the spec (invalid argument)": {
			call: claimedCall("a").Obj(),
			setup: func(h *harness) {
				h.rt.withImages(image)
				h.rt.runErrs["uid-a"] = []error{fmt.Errorf("run fnlet-uid-a: %w", errdefs.ErrInvalidArgument.WithMessage("host network is not allowed on this node"))}
			},
			wantView:    failedCall(fnletv1.ReasonInvalidSpec, 1),
			wantMessage: []string{"host network is not allowed"},
			wantEvents:  []string{"Warning InvalidSpec"},
			wantRuntime: runFail,
		},
		"runtime error without retries": {
			call: claimedCall("a").Obj(),
			setup: func(h *harness) {
				h.rt.withImages(image)
				h.rt.runErrs["uid-a"] = []error{errors.New("create task fnlet-uid-a: runc: exec format error")}
			},
			wantView:    failedCall(fnletv1.ReasonRuntimeError, 1),
			wantMessage: []string{"start: ", "exec format error"},
			wantEvents:  []string{"Warning RuntimeError start: create task"},
			wantRuntime: runFail,
		},
		"env from a missing Secret": {
			call:        claimedCall("a").EnvFromSecret("TOKEN", "creds", "token").Obj(),
			wantView:    failedCall(fnletv1.ReasonInvalidSpec, 0),
			wantMessage: []string{"env TOKEN", "Secret default/creds not found"},
			wantEvents:  []string{"Warning InvalidSpec env TOKEN"},
			wantRuntime: noStart,
		},
		"env from a Secret of the same name in another namespace is not used": {
			call: claimedCall("a").EnvFromSecret("TOKEN", "creds", "token").Obj(),
			objs: []client.Object{&corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: "other"},
				Data:       map[string][]byte{"token": []byte("not yours")},
			}},
			wantView:    failedCall(fnletv1.ReasonInvalidSpec, 0),
			wantMessage: []string{"Secret default/creds not found"},
			wantEvents:  []string{"Warning InvalidSpec"},
			wantRuntime: noStart,
		},
		"env from the Secret of the call's namespace": {
			call: claimedCall("a").EnvFromSecret("TOKEN", "creds", "token").Obj(),
			objs: []client.Object{
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: "other"}, Data: map[string][]byte{"token": []byte("not yours")}},
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: testNS}, Data: map[string][]byte{"token": []byte("yours")}},
			},
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantView:    callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1, Conditions: runningConds, Finalizers: finalizers},
			wantRuntime: []string{ensure, "Run uid-a"},
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout},
			wantRun: func(t *testing.T, call ctrd.Call, _ ctrd.RegistryAuth) {
				if want := []string{"TOKEN=yours"}; !slices.Equal(call.Env, want) {
					t.Errorf("env = %q, want %q", call.Env, want)
				}
			},
		},
		"imagePullSecret of the wrong type": {
			call: claimedCall("a").PullSecrets("regcred").Obj(),
			objs: []client.Object{&corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: testNS},
				Type:       corev1.SecretTypeOpaque,
				Data:       map[string][]byte{"password": []byte("p")},
			}},
			wantView:    failedCall(fnletv1.ReasonInvalidSpec, 0),
			wantMessage: []string{`imagePullSecret "regcred" has type "Opaque"`},
			wantEvents:  []string{"Warning InvalidSpec"},
			wantRuntime: noStart,
		},
		"memory over the node's maximum": {
			call:        claimedCall("a").Memory("2Gi").Obj(),
			wantView:    failedCall(fnletv1.ReasonInvalidSpec, 0),
			wantMessage: []string{"resources.memory", "maximum"},
			wantEvents:  []string{"Warning InvalidSpec"},
			wantRuntime: noStart,
		},
		"cancelled before it started": {
			call:        claimedCall("a").Cancel().Obj(),
			setup:       func(h *harness) { h.rt.withImages(image) },
			wantView:    failedCall(fnletv1.ReasonCancelled, 0),
			wantMessage: []string{"cancelled before it started"},
			wantEvents:  []string{"Warning Cancelled"},
			wantRuntime: noStart,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, append(tc.objs, tc.call)...)
			if tc.setup != nil {
				tc.setup(h)
			}

			res, err := h.reconcile("a")
			if err != nil {
				t.Fatalf("Reconcile: %v", err)
			}

			checkResult(t, res, tc.wantResult)
			got := h.mustCall("a")
			checkView(t, got, tc.wantView)
			checkMessage(t, got, tc.wantMessage...)
			checkEvents(t, h.events(), tc.wantEvents)
			checkRuntime(t, h.rt.recorded(), tc.wantRuntime)
			if got.IsFinished() {
				if got.Status.FinishedAt == nil || !got.Status.FinishedAt.Time.Equal(t0) {
					t.Errorf("finishedAt = %v, want %v", got.Status.FinishedAt, t0)
				}
				if h.rt.has("uid-a") {
					t.Errorf("a failed call's container is left behind")
				}
			}
			if tc.wantRun != nil {
				call, ok := h.rt.lastRun()
				if !ok {
					t.Fatal("Run was not called")
				}
				tc.wantRun(t, call, h.rt.auths[len(h.rt.auths)-1])
			}
		})
	}
}

// Runtime failures are retried spec.retries times with exponential backoff;
// the container of a failed attempt is removed before the next.
func TestUnitReconcileRetriesRuntimeFailures(t *testing.T) {
	h := newHarness(t, claimedCall("a").Retries(2).Obj())
	h.rt.withImages(image)
	h.rt.runErrs["uid-a"] = []error{errors.New("create task: shim died"), errors.New("create task: shim died again")}
	retrying := callView{Phase: fnletv1.PhasePending, NodeName: testNode, Conditions: conds("Claimed=True/Claimed", "Retrying=True/RuntimeError"), Finalizers: finalizers}
	ensure := "EnsureImage " + image + " IfNotPresent"

	// Attempt 1 fails: wait 2s.
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: 2 * time.Second})
	retrying.Attempts = 1
	checkView(t, h.mustCall("a"), retrying)
	checkRuntime(t, h.rt.recorded(), []string{ensure, "Run uid-a", "Delete uid-a"})
	checkEvents(t, h.events(), []string{"Warning Retrying attempt 1 failed (start: create task: shim died); retrying in 2s"})
	if h.rt.has("uid-a") {
		t.Error("the failed attempt's container was not removed")
	}

	// Our own status write wakes us at once: the backoff still holds.
	h.clock.SetTime(t0.Add(time.Second))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: time.Second})
	checkView(t, h.mustCall("a"), retrying)
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a"})

	// Attempt 2 fails: wait 4s.
	h.clock.SetTime(t0.Add(2 * time.Second))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: 4 * time.Second})
	retrying.Attempts = 2
	checkView(t, h.mustCall("a"), retrying)
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a", ensure, "Run uid-a", "Delete uid-a"})
	checkEvents(t, h.events(), []string{"Warning Retrying attempt 2 failed"})

	// Attempt 3 starts.
	h.clock.SetTime(t0.Add(6 * time.Second))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: defaultTimeout - 6*time.Second})
	checkView(t, h.mustCall("a"), callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 3, Conditions: runningConds, Finalizers: finalizers})
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a", ensure, "Run uid-a"})
	checkEvents(t, h.events(), nil)
}

func TestUnitReconcileRetriesExhausted(t *testing.T) {
	h := newHarness(t, claimedCall("a").Retries(1).Obj())
	h.rt.withImages(image)
	h.rt.runErrs["uid-a"] = []error{errors.New("shim died"), errors.New("shim died again")}

	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: 2 * time.Second})
	h.clock.SetTime(t0.Add(2 * time.Second))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})

	got := h.mustCall("a")
	checkView(t, got, callView{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonRuntimeError, NodeName: testNode, Attempts: 2,
		Conditions: finishedConds(claimedConds, fnletv1.ReasonRuntimeError)})
	checkMessage(t, got, "shim died again")
	checkEvents(t, h.events(), []string{"Warning Retrying attempt 1", "Warning RuntimeError"})
	if h.rt.has("uid-a") {
		t.Error("container left behind")
	}
}

func TestUnitOutcome(t *testing.T) {
	deadline := t0.Add(defaultTimeout)
	before, after := deadline.Add(-time.Second), deadline.Add(time.Second)
	cases := map[string]struct {
		cancel      bool
		res         ctrd.Result
		wantPhase   fnletv1.CallPhase
		wantReason  fnletv1.CallReason
		wantMessage string
	}{
		"exit 0": {
			res:       ctrd.Result{ExitCode: 0, FinishedAt: before},
			wantPhase: fnletv1.PhaseSucceeded, wantReason: fnletv1.ReasonCompleted, wantMessage: "exited with code 0",
		},
		"exit 3": {
			res:       ctrd.Result{ExitCode: 3, FinishedAt: before},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonError, wantMessage: "exited with code 3",
		},
		"OOM killed": {
			res:       ctrd.Result{ExitCode: 137, Signal: "SIGKILL", OOMKilled: true, FinishedAt: before},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonOOMKilled, wantMessage: "memory limit",
		},
		"exit 137 without the kernel's OOM flag is a kill, not an OOM": {
			res:       ctrd.Result{ExitCode: 137, Signal: "SIGKILL", FinishedAt: before},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonError, wantMessage: "killed by SIGKILL (exit code 137)",
		},
		"cancelled and killed": {
			cancel:    true,
			res:       ctrd.Result{ExitCode: 143, Signal: "SIGTERM", FinishedAt: before},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonCancelled, wantMessage: "spec.cancel",
		},
		"cancelled but it exited 0 first": {
			cancel:    true,
			res:       ctrd.Result{ExitCode: 0, FinishedAt: before},
			wantPhase: fnletv1.PhaseSucceeded, wantReason: fnletv1.ReasonCompleted, wantMessage: "exited with code 0",
		},
		"killed after the deadline": {
			res:       ctrd.Result{ExitCode: 143, Signal: "SIGTERM", FinishedAt: after},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonTimedOut, wantMessage: "timeout",
		},
		"killed exactly at the deadline": {
			res:       ctrd.Result{ExitCode: 137, Signal: "SIGKILL", FinishedAt: deadline},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonTimedOut, wantMessage: "timeout",
		},
		"exit 0 after the deadline still succeeded": {
			res:       ctrd.Result{ExitCode: 0, FinishedAt: after},
			wantPhase: fnletv1.PhaseSucceeded, wantReason: fnletv1.ReasonCompleted, wantMessage: "exited with code 0",
		},
		"unknown finish time is not a timeout": {
			res:       ctrd.Result{ExitCode: 1},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonError, wantMessage: "exited with code 1",
		},
		"output limit": {
			res:       ctrd.Result{ExitCode: 137, Signal: "SIGKILL", OutputLimitExceeded: true, FinishedAt: before},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonOutputLimitExceeded, wantMessage: "output limit",
		},
		"output limit explains the kill better than a cancel or a timeout": {
			cancel:    true,
			res:       ctrd.Result{ExitCode: 137, Signal: "SIGKILL", OutputLimitExceeded: true, FinishedAt: after},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonOutputLimitExceeded, wantMessage: "output limit",
		},
		"input incomplete": {
			res:       ctrd.Result{ExitCode: 137, Signal: "SIGKILL", InputIncomplete: true, FinishedAt: before},
			wantPhase: fnletv1.PhaseFailed, wantReason: fnletv1.ReasonRuntimeError, wantMessage: "input",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w := runningCall("a")
			if tc.cancel {
				w.Cancel()
			}
			phase, reason, msg := outcome(w.Obj(), &tc.res, deadline)
			if phase != tc.wantPhase || reason != tc.wantReason {
				t.Errorf("outcome = %s/%s, want %s/%s", phase, reason, tc.wantPhase, tc.wantReason)
			}
			if !strings.Contains(msg, tc.wantMessage) {
				t.Errorf("message = %q, want it to contain %q", msg, tc.wantMessage)
			}
		})
	}
}

// An exit reported by the runtime becomes the call's final status, then the
// container is removed — in that order.
func TestUnitReconcileFinish(t *testing.T) {
	now := t0.Add(30 * time.Second)
	cases := map[string]struct {
		call         *fnletv1.FunctionCall
		clock        time.Time
		res          ctrd.Result
		wantView     callView
		wantMessage  string
		wantEvent    string
		wantStdout   string
		wantStderr   string
		wantFinished time.Time
		// Pending calls go straight to Run (which attaches), others read State.
		wantRuntime []string
		wantEvents  []string
	}{
		"exit 0 with output": {
			call:         runningCall("a").Obj(),
			res:          ctrd.Result{ExitCode: 0, Stdout: ctrd.Tail{Data: []byte("hello\n"), Size: 6}, Stderr: ctrd.Tail{Data: []byte("tail"), Size: 1 << 20, Truncated: true}, Usage: ctrd.Usage{PeakMemoryBytes: 1 << 20, CPU: 20 * time.Millisecond}},
			wantView:     finishedView(fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, 0, ""),
			wantMessage:  "exited with code 0",
			wantStdout:   "hello\n",
			wantStderr:   "tail",
			wantFinished: now,
		},
		"exit 3": {
			call:         runningCall("a").Obj(),
			res:          ctrd.Result{ExitCode: 3, Stderr: ctrd.Tail{Data: []byte("boom")}},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonError, 3, ""),
			wantMessage:  "exited with code 3",
			wantEvent:    "Warning Error exited with code 3",
			wantStderr:   "boom",
			wantFinished: now,
		},
		"OOM killed": {
			call:         runningCall("a").Memory("32Mi").Obj(),
			res:          ctrd.Result{ExitCode: 137, Signal: "SIGKILL", OOMKilled: true},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonOOMKilled, 137, "SIGKILL"),
			wantMessage:  "memory limit",
			wantEvent:    "Warning OOMKilled",
			wantFinished: now,
		},
		"exit 137 without the OOM flag": {
			call:         runningCall("a").Obj(),
			res:          ctrd.Result{ExitCode: 137, Signal: "SIGKILL"},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonError, 137, "SIGKILL"),
			wantMessage:  "killed by SIGKILL",
			wantEvent:    "Warning Error killed by SIGKILL (exit code 137)",
			wantFinished: now,
		},
		"cancelled": {
			call:         runningCall("a").Cancel().Obj(),
			res:          ctrd.Result{ExitCode: 143, Signal: "SIGTERM"},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonCancelled, 143, "SIGTERM"),
			wantMessage:  "spec.cancel",
			wantEvent:    "Warning Cancelled",
			wantFinished: now,
		},
		"killed after its timeout": {
			call:         runningCall("a").Timeout(time.Minute).Obj(),
			clock:        t0.Add(70 * time.Second),
			res:          ctrd.Result{ExitCode: 143, Signal: "SIGTERM", FinishedAt: t0.Add(65 * time.Second)},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonTimedOut, 143, "SIGTERM"),
			wantMessage:  "timeout",
			wantEvent:    "Warning TimedOut",
			wantFinished: t0.Add(65 * time.Second),
		},
		"output limit": {
			call:         runningCall("a").Obj(),
			res:          ctrd.Result{ExitCode: 137, Signal: "SIGKILL", OutputLimitExceeded: true, Stdout: ctrd.Tail{Data: []byte("xxxx"), Size: 1 << 30, Truncated: true}},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonOutputLimitExceeded, 137, "SIGKILL"),
			wantMessage:  "output limit",
			wantEvent:    "Warning OutputLimitExceeded",
			wantStdout:   "xxxx",
			wantFinished: now,
		},
		"input incomplete after a manager restart": {
			call:         runningCall("a").Input("data").Obj(),
			res:          ctrd.Result{ExitCode: 137, Signal: "SIGKILL", InputIncomplete: true},
			wantView:     finishedView(fnletv1.PhaseFailed, fnletv1.ReasonRuntimeError, 137, "SIGKILL"),
			wantMessage:  "input",
			wantEvent:    "Warning RuntimeError",
			wantFinished: now,
		},
		"invalid UTF-8 in the output becomes valid UTF-8": {
			call:         runningCall("a").Obj(),
			res:          ctrd.Result{ExitCode: 0, Stdout: ctrd.Tail{Data: []byte("ok \xff\xfe end")}, Stderr: ctrd.Tail{Data: []byte("\xe2\x82")}},
			wantView:     finishedView(fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, 0, ""),
			wantMessage:  "exited with code 0",
			wantStdout:   "ok \uFFFD end",
			wantStderr:   "\uFFFD",
			wantFinished: now,
		},
		"an exit found while the status still says Pending": {
			call: claimedCall("a").Obj(),
			res:  ctrd.Result{ExitCode: 0, StartedAt: t0.Add(time.Second)},
			// The final status carries the start: Started, ImageReady.
			wantView:     callView{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, ExitCode: ptr.To[int32](0), NodeName: testNode, Attempts: 1, Conditions: finishedConds(runningConds, fnletv1.ReasonCompleted)},
			wantMessage:  "exited with code 0",
			wantFinished: now,
			// The attempt that made the container counts, though its write was lost.
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a", "Delete uid-a"},
			wantEvents:  []string{"Normal Pulled"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.rt.running("uid-a", testNS, "a", t0)
			h.clock.SetTime(now)
			if !tc.clock.IsZero() {
				h.clock.SetTime(tc.clock)
			}
			h.rt.exit("uid-a", tc.res)

			checkResult(t, h.mustReconcile("a"), ctrl.Result{})

			got := h.mustCall("a")
			checkView(t, got, tc.wantView)
			checkMessage(t, got, tc.wantMessage)
			// A success is no Event (the status says it), a failure a Warning.
			wantEvents, wantRuntime := []string(nil), []string{"State uid-a", "Delete uid-a"}
			if tc.wantEvent != "" {
				wantEvents = []string{tc.wantEvent}
			}
			if tc.wantEvents != nil {
				wantEvents = tc.wantEvents
			}
			if tc.wantRuntime != nil {
				wantRuntime = tc.wantRuntime
			}
			checkEvents(t, h.events(), wantEvents)
			checkRuntime(t, h.rt.recorded(), wantRuntime)
			if got.Status.ContainerID != ctrd.ContainerID("uid-a") {
				t.Errorf("final status names container %q, want %s", got.Status.ContainerID, ctrd.ContainerID("uid-a"))
			}
			if got.Status.Stdout != tc.wantStdout || got.Status.Stderr != tc.wantStderr {
				t.Errorf("stdout, stderr = %q, %q; want %q, %q", got.Status.Stdout, got.Status.Stderr, tc.wantStdout, tc.wantStderr)
			}
			if got.Status.StdoutTruncated != tc.res.Stdout.Truncated || got.Status.StderrTruncated != tc.res.Stderr.Truncated {
				t.Errorf("truncated = %v, %v; want %v, %v", got.Status.StdoutTruncated, got.Status.StderrTruncated, tc.res.Stdout.Truncated, tc.res.Stderr.Truncated)
			}
			if got.Status.FinishedAt == nil || !got.Status.FinishedAt.Time.Equal(tc.wantFinished) {
				t.Errorf("finishedAt = %v, want %v", got.Status.FinishedAt, tc.wantFinished)
			}
			if got.Status.StartedAt == nil {
				t.Error("startedAt is not set")
			}
			wantUsage := &fnletv1.Usage{PeakMemoryBytes: tc.res.Usage.PeakMemoryBytes, CPUNanoseconds: tc.res.Usage.CPU.Nanoseconds()}
			if !reflect.DeepEqual(got.Status.Usage, wantUsage) {
				t.Errorf("usage = %+v, want %+v", got.Status.Usage, wantUsage)
			}
			// The result is written before the container (and with it the
			// result) goes away.
			ops := h.log.list()
			write, del := slices.Index(ops, "status a "+string(tc.wantView.Phase)), slices.Index(ops, "runtime Delete uid-a")
			if write < 0 || del < 0 || write > del {
				t.Errorf("want the final status written before the container is deleted; ops: %q", ops)
			}
			if h.rt.has("uid-a") {
				t.Error("the container is left behind")
			}
		})
	}
}

// finishedView is a call that ran and finished: its container is removed
// and its finalizer released in the same reconcile.
func finishedView(phase fnletv1.CallPhase, reason fnletv1.CallReason, code int32, signal string) callView {
	return callView{Phase: phase, Reason: reason, ExitCode: &code, Signal: signal, NodeName: testNode, Attempts: 1,
		Conditions: finishedConds(runningConds, reason)}
}

// A crash between the status write and the container removal: the next
// reconcile finds a finished call and only cleans up.
func TestUnitReconcileFinishDeleteFailsThenCleansUp(t *testing.T) {
	h := newHarness(t, runningCall("a").Obj())
	h.rt.running("uid-a", testNS, "a", t0)
	h.rt.exit("uid-a", ctrd.Result{ExitCode: 0})
	h.r.Runtime = &failingDelete{fakeRuntime: h.rt}

	if _, err := h.reconcile("a"); err == nil {
		t.Fatal("Reconcile: want the Delete error")
	}
	if got := h.mustCall("a"); got.Status.Phase != fnletv1.PhaseSucceeded {
		t.Fatalf("phase = %s, want Succeeded written before the failed Delete", got.Status.Phase)
	}
	h.rt.recorded()

	h.r.Runtime = h.rt
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	checkRuntime(t, h.rt.recorded(), []string{"Delete uid-a"})
	got := h.mustCall("a")
	checkView(t, got, callView{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, ExitCode: ptr.To[int32](0), NodeName: testNode, Attempts: 1,
		Conditions: finishedConds(runningConds, fnletv1.ReasonCompleted)})
	if h.rt.has("uid-a") {
		t.Error("the container is left behind")
	}
}

type failingDelete struct{ *fakeRuntime }

func (f *failingDelete) Delete(context.Context, string) error {
	return fmt.Errorf("delete task: %w", errdefs.ErrUnavailable)
}

func TestUnitReconcileRunning(t *testing.T) {
	running := callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1, Conditions: runningConds, Finalizers: finalizers}
	cases := map[string]struct {
		call        *fnletv1.FunctionCall
		setup       func(*harness)
		clock       time.Time
		wantResult  ctrl.Result
		wantView    callView
		wantMessage string
		wantEvents  []string
		wantRuntime []string
		wantPhase   ctrd.Phase // in the runtime after the reconcile
	}{
		"before its deadline: wakes at the deadline": {
			call:        runningCall("a").Obj(),
			clock:       t0.Add(4 * time.Minute),
			wantResult:  ctrl.Result{RequeueAfter: 6 * time.Minute},
			wantView:    running,
			wantRuntime: []string{"State uid-a"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"spec.timeout counts from the claim": {
			call:        runningCall("a").Timeout(90 * time.Second).Obj(),
			clock:       t0.Add(time.Minute),
			wantResult:  ctrl.Result{RequeueAfter: 30 * time.Second},
			wantView:    running,
			wantRuntime: []string{"State uid-a"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"timeout reached: SIGTERM, SIGKILL after the grace": {
			call:        runningCall("a").Obj(),
			clock:       t0.Add(defaultTimeout),
			setup:       func(h *harness) { h.rt.ignoreSIGTERM["uid-a"] = true },
			wantResult:  ctrl.Result{RequeueAfter: killGrace + time.Second},
			wantView:    running,
			wantEvents:  []string{"Warning Stopping Timeout of 10m0s reached: SIGTERM, SIGKILL after 5s"},
			wantRuntime: []string{"State uid-a", "Stop uid-a 5s"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"spec.timeout over the node's maximum is capped": {
			call:        runningCall("a").Timeout(2 * time.Hour).Obj(),
			clock:       t0.Add(maxTimeout),
			wantResult:  ctrl.Result{RequeueAfter: killGrace + time.Second},
			wantView:    running,
			wantEvents:  []string{"Warning Stopping Timeout of 1h0m0s reached"},
			wantRuntime: []string{"State uid-a", "Stop uid-a 5s"},
			wantPhase:   ctrd.PhaseExited,
		},
		"cancel: SIGTERM, SIGKILL after the grace": {
			call:        runningCall("a").Cancel().Obj(),
			clock:       t0.Add(time.Second),
			wantResult:  ctrl.Result{RequeueAfter: killGrace + time.Second},
			wantView:    running,
			wantEvents:  []string{"Normal Stopping Cancel requested"},
			wantRuntime: []string{"State uid-a", "Stop uid-a 5s"},
			wantPhase:   ctrd.PhaseExited,
		},
		"running, but the status write of the start was lost": {
			call:       claimedCall("a").Obj(),
			clock:      t0.Add(time.Minute),
			wantResult: ctrl.Result{RequeueAfter: defaultTimeout - time.Minute},
			wantView:   running,
			wantEvents: []string{"Normal Pulled"},
			// A Pending call goes straight to Run, which attaches to the running
			// container: no State round trip, no second container.
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"container created but its task never started: Run resumes it": {
			call: claimedCall("a").Obj(),
			setup: func(h *harness) {
				h.rt.vanish("uid-a")
				h.rt.created("uid-a", testNS, "a")
				h.rt.withImages(image)
			},
			clock:       t0.Add(time.Second),
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout - time.Second},
			wantView:    running,
			wantRuntime: []string{"EnsureImage " + image + " IfNotPresent", "Run uid-a"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"Running, but the program never ran (a start cut short): Run resumes it": {
			call: runningCall("a").Obj(),
			setup: func(h *harness) {
				h.rt.vanish("uid-a")
				h.rt.created("uid-a", testNS, "a")
				h.rt.withImages(image)
			},
			clock:       t0.Add(time.Minute),
			wantResult:  ctrl.Result{RequeueAfter: defaultTimeout - time.Minute},
			wantView:    running,
			wantRuntime: []string{"State uid-a", "EnsureImage " + image + " IfNotPresent", "Run uid-a"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"container vanished while Running": {
			call:        runningCall("a").Obj(),
			setup:       func(h *harness) { h.rt.vanish("uid-a") },
			clock:       t0.Add(time.Minute),
			wantView:    callView{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonRuntimeError, NodeName: testNode, Attempts: 1, Conditions: finishedConds(runningConds, fnletv1.ReasonRuntimeError)},
			wantMessage: "disappeared",
			wantEvents:  []string{"Warning RuntimeError the container disappeared"},
			wantRuntime: []string{"State uid-a", "Delete uid-a"},
			wantPhase:   ctrd.PhaseUnknown,
		},
		"container vanished while Running, with retries left": {
			call:        runningCall("a").Retries(1).Obj(),
			setup:       func(h *harness) { h.rt.vanish("uid-a") },
			clock:       t0.Add(time.Minute),
			wantResult:  ctrl.Result{RequeueAfter: 2 * time.Second},
			wantView:    callView{Phase: fnletv1.PhaseRunning, NodeName: testNode, Attempts: 1, Conditions: conds(append(slices.Clone(runningConds), "Retrying=True/RuntimeError")...), Finalizers: finalizers},
			wantEvents:  []string{"Warning Retrying attempt 1 failed"},
			wantRuntime: []string{"State uid-a", "Delete uid-a"},
			wantPhase:   ctrd.PhaseUnknown,
		},
		"containerd unavailable before the deadline: wait": {
			call:        runningCall("a").Obj(),
			setup:       func(h *harness) { h.rt.stateErrs["uid-a"] = fmt.Errorf("status: %w", errdefs.ErrUnavailable) },
			clock:       t0.Add(time.Minute),
			wantResult:  ctrl.Result{RequeueAfter: time.Second},
			wantView:    running,
			wantEvents:  []string{"Warning RuntimeUnavailable containerd unavailable"},
			wantRuntime: []string{"State uid-a"},
			wantPhase:   ctrd.PhaseRunning,
		},
		"containerd unavailable past the deadline: runtime error": {
			call:        runningCall("a").Obj(),
			setup:       func(h *harness) { h.rt.stateErrs["uid-a"] = fmt.Errorf("status: %w", errdefs.ErrUnavailable) },
			clock:       t0.Add(defaultTimeout),
			wantView:    callView{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonRuntimeError, NodeName: testNode, Attempts: 1, Conditions: finishedConds(runningConds, fnletv1.ReasonRuntimeError)},
			wantMessage: "read state",
			wantEvents:  []string{"Warning RuntimeError"},
			wantRuntime: []string{"State uid-a", "Delete uid-a"},
			wantPhase:   ctrd.PhaseUnknown,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.rt.running("uid-a", testNS, "a", t0)
			if tc.setup != nil {
				tc.setup(h)
			}
			h.clock.SetTime(tc.clock)

			res, err := h.reconcile("a")
			if err != nil {
				t.Fatalf("Reconcile: %v", err)
			}

			checkResult(t, res, tc.wantResult)
			got := h.mustCall("a")
			checkView(t, got, tc.wantView)
			checkMessage(t, got, tc.wantMessage)
			checkEvents(t, h.events(), tc.wantEvents)
			checkRuntime(t, h.rt.recorded(), tc.wantRuntime)
			if ph := h.rt.phase("uid-a"); ph != tc.wantPhase {
				t.Errorf("runtime phase = %s, want %s", ph, tc.wantPhase)
			}
		})
	}
}

// A timeout end to end: the stop at the deadline, then the exit it causes
// becomes TimedOut.
func TestUnitReconcileTimeoutThenTimedOut(t *testing.T) {
	h := newHarness(t, runningCall("a").Timeout(time.Minute).Obj())
	h.rt.running("uid-a", testNS, "a", t0)

	h.clock.SetTime(t0.Add(time.Minute))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: killGrace + time.Second})
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Stop uid-a 5s"})

	h.clock.SetTime(t0.Add(time.Minute + time.Second))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	got := h.mustCall("a")
	checkView(t, got, finishedView(fnletv1.PhaseFailed, fnletv1.ReasonTimedOut, 143, "SIGTERM"))
	checkEvents(t, h.events(), []string{"Warning Stopping", "Warning TimedOut stopped at its timeout"})
	checkRuntime(t, h.rt.recorded(), []string{"State uid-a", "Delete uid-a"})
}

func TestUnitReconcileDeletion(t *testing.T) {
	cases := map[string]struct {
		call          *fnletv1.FunctionCall
		container     bool
		wantEvents    []string
		wantRuntime   []string
		wantContainer bool
		wantGone      bool
	}{
		"running call deleted: container killed and removed, finalizer released": {
			call:        runningCall("a").Deleted(t0).Obj(),
			container:   true,
			wantEvents:  []string{"Normal Deleted Call deleted while Running"},
			wantRuntime: []string{"Delete uid-a"},
			wantGone:    true,
		},
		"pending call deleted": {
			call:        claimedCall("a").Deleted(t0).Obj(),
			wantEvents:  []string{"Normal Deleted Call deleted while Pending"},
			wantRuntime: []string{"Delete uid-a"},
			wantGone:    true,
		},
		"finished call deleted": {
			call:        runningCall("a").Succeeded().Deleted(t0).Obj(),
			wantRuntime: []string{"Delete uid-a"},
			wantGone:    true,
		},
		"unassigned call deleted": {
			call:        newCall("a").Finalizers(Finalizer).Deleted(t0).Obj(),
			wantRuntime: []string{"Delete uid-a"},
			wantEvents:  []string{"Normal Deleted"},
			wantGone:    true,
		},
		"another finalizer than ours: nothing to do": {
			call: newCall("a").Finalizers("example.com/keep").Deleted(t0).Obj(),
		},
		"another node's deleted call is left to that node": {
			call:          newCall("a").Finalizers(Finalizer).ClaimedBy(otherNode).Running().Deleted(t0).Obj(),
			container:     true,
			wantContainer: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			if tc.container {
				h.rt.running("uid-a", testNS, "a", t0)
			}

			checkResult(t, h.mustReconcile("a"), ctrl.Result{})

			checkEvents(t, h.events(), tc.wantEvents)
			checkRuntime(t, h.rt.recorded(), tc.wantRuntime)
			if got := h.call("a"); (got == nil) != tc.wantGone {
				t.Errorf("call gone = %v, want %v (finalizers %v)", got == nil, tc.wantGone, got.GetFinalizers())
			}
			if h.rt.has("uid-a") != tc.wantContainer {
				t.Errorf("container present = %v, want %v", h.rt.has("uid-a"), tc.wantContainer)
			}
		})
	}
}

func TestUnitReconcileTTL(t *testing.T) {
	done := func() *utiltesting.FunctionCallWrapper { return runningCall("a").Succeeded() }
	cases := map[string]struct {
		call       *fnletv1.FunctionCall
		clock      time.Time
		wantResult ctrl.Result
		wantGone   bool
		// The manager is done with the call: it leaves the node's cache.
		wantFinishedLabel bool
	}{
		"no TTL: kept, labelled finished": {
			call:              done().Obj(),
			clock:             t0.Add(time.Hour),
			wantFinishedLabel: true,
		},
		"no TTL, no finalizer (failed before it ran): labelled finished": {
			call:              done().Finalizers().Obj(),
			clock:             t0.Add(time.Hour),
			wantFinishedLabel: true,
		},
		"TTL 0: deleted at once": {
			call:     done().TTLSecondsAfterFinished(0).Obj(),
			clock:    t0,
			wantGone: true,
		},
		"TTL 60, just finished: wakes in 60s, stays cached": {
			call:       done().TTLSecondsAfterFinished(60).Obj(),
			clock:      t0,
			wantResult: ctrl.Result{RequeueAfter: 60 * time.Second},
		},
		"TTL 60, finished 45s ago: wakes in 15s": {
			call:       done().TTLSecondsAfterFinished(60).Obj(),
			clock:      t0.Add(45 * time.Second),
			wantResult: ctrl.Result{RequeueAfter: 15 * time.Second},
		},
		"TTL 60, expired": {
			call:     done().TTLSecondsAfterFinished(60).Obj(),
			clock:    t0.Add(time.Minute),
			wantGone: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.clock.SetTime(tc.clock)

			checkResult(t, h.mustReconcile("a"), tc.wantResult)

			checkRuntime(t, h.rt.recorded(), []string{"Delete uid-a"})
			got := h.call("a")
			if (got == nil) != tc.wantGone {
				t.Fatalf("call gone = %v, want %v", got == nil, tc.wantGone)
			}
			if got == nil {
				return
			}
			if len(got.Finalizers) != 0 {
				t.Errorf("finalizers = %v, want none on a finished call", got.Finalizers)
			}
			if labelled := got.Labels[fnletv1.LabelFinished] == "true"; labelled != tc.wantFinishedLabel {
				t.Errorf("label %s=true: %v, want %v (labels %v)", fnletv1.LabelFinished, labelled, tc.wantFinishedLabel, got.Labels)
			}
			if UnfinishedCalls().Matches(labels.Set(got.Labels)) == tc.wantFinishedLabel {
				t.Errorf("UnfinishedCalls() matches the call's labels %v: %v", got.Labels, !tc.wantFinishedLabel)
			}
		})
	}
}

// TTL 0 from the exit on: the finishing reconcile writes the result,
// removes the container, releases the finalizer and deletes the call.
func TestUnitReconcileFinishWithTTLZero(t *testing.T) {
	h := newHarness(t, runningCall("a").TTLSecondsAfterFinished(0).Obj())
	h.rt.running("uid-a", testNS, "a", t0)
	h.clock.SetTime(t0.Add(time.Second))
	h.rt.exit("uid-a", ctrd.Result{ExitCode: 0})

	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	if h.call("a") != nil {
		t.Error("call still there after its TTL of 0")
	}
	ops := h.log.list()
	write, del := slices.Index(ops, "status a Succeeded"), slices.Index(ops, "runtime Delete uid-a")
	if write < 0 || del < 0 || write > del {
		t.Errorf("want the final status written before the container is deleted; ops: %q", ops)
	}
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
}

// A call that fails before it ran ends through the same path as one that
// exited: final status, container removed, released, then its TTL.
func TestUnitReconcileFailureAppliesTTL(t *testing.T) {
	cases := map[string]struct {
		call *fnletv1.FunctionCall
		want ctrl.Result
	}{
		"cancelled before it started, TTL 60": {call: newCall("a").Cancel().TTLSecondsAfterFinished(60).Obj(), want: ctrl.Result{RequeueAfter: time.Minute}},
		"pull failed, TTL 30":                 {call: newCall("a").Image("localhost/nope:v1").ImagePullPolicy(corev1.PullNever).TTLSecondsAfterFinished(30).Obj(), want: ctrl.Result{RequeueAfter: 30 * time.Second}},
		"cancelled before it started, TTL 0":  {call: newCall("a").Cancel().TTLSecondsAfterFinished(0).Obj()},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.rt.withImages(image)
			checkResult(t, h.mustReconcile("a"), tc.want)
			got := h.call("a")
			if tc.want.RequeueAfter == 0 {
				if got != nil {
					t.Errorf("call kept (phase %s), want it deleted at its TTL of 0", got.Status.Phase)
				}
				return
			}
			if got == nil || got.Status.Phase != fnletv1.PhaseFailed {
				t.Fatalf("call %v, want it Failed and kept until its TTL", got)
			}
		})
	}
}

// Phases only move forward: a finished call is never run again, whatever
// the runtime says.
func TestUnitReconcileFinishedCallStaysFinished(t *testing.T) {
	cases := map[string]struct {
		call      *fnletv1.FunctionCall
		container bool
	}{
		"Succeeded":                        {call: runningCall("a").Succeeded().Obj()},
		"Failed":                           {call: runningCall("a").ExitCode(1).Failed(fnletv1.ReasonError, "exited with code 1").Obj()},
		"Succeeded, then cancelled":        {call: runningCall("a").Succeeded().Cancel().Obj()},
		"Succeeded, a crash left its task": {call: runningCall("a").Succeeded().Obj(), container: true},
		"Failed before it started":         {call: claimedCall("a").Failed(fnletv1.ReasonImagePullFailed, "pull").Obj()},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.rt.withImages(image)
			if tc.container {
				h.rt.running("uid-a", testNS, "a", t0)
			}
			before := viewOf(h.mustCall("a"))
			h.clock.SetTime(t0.Add(time.Hour))

			for range 2 {
				checkResult(t, h.mustReconcile("a"), ctrl.Result{})
			}

			before.Finalizers = nil
			got := h.mustCall("a")
			checkView(t, got, before)
			checkRuntime(t, h.rt.recorded(), []string{"Delete uid-a", "Delete uid-a"})
			checkEvents(t, h.events(), nil)
			if h.rt.has("uid-a") {
				t.Error("container left behind")
			}
		})
	}
}

func TestUnitReconcileCallGone(t *testing.T) {
	h := newHarness(t)
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	checkRuntime(t, h.rt.recorded(), nil)
}

// staticNodes is a NodeLister with a fixed set of nodes.
type staticNodes []Node

func (s staticNodes) Nodes(context.Context) ([]Node, error) { return s, nil }

// liveNode is a node whose Lease runs until an hour after t0, with labels
// given as key, value pairs.
func liveNode(name string, kv ...string) Node {
	n := Node{Name: name, Labels: labels.Set{}, ExpiresAt: t0.Add(time.Hour)}
	for i := 0; i+1 < len(kv); i += 2 {
		n.Labels[kv[i]] = kv[i+1]
	}
	return n
}

// Of several live nodes that fit a call, the first in rendezvous order
// claims it at once; the k-th waits k staggers, then claims if it is still
// unassigned. Nodes that do not fit, and expired ones, do not count.
func TestUnitReconcileClaimTurn(t *testing.T) {
	stagger := 100 * time.Millisecond
	peers := []string{"node-c", "node-d", "node-e", "node-f", "node-g", "node-h"}
	for n := 1; n <= len(peers); n++ {
		t.Run(fmt.Sprint(n, " peers"), func(t *testing.T) {
			h := newHarness(t, newCall("a").Obj())
			h.rt.withImages(image)
			nodes := staticNodes{{Name: "node-expired", ExpiresAt: t0.Add(-time.Second)}, liveNode("node-small")}
			nodes[1].MaxMemoryBytes = 1 << 20 // fits no call
			for _, p := range peers[:n] {
				nodes = append(nodes, liveNode(p))
			}
			h.r.Nodes, h.r.ClaimStagger = nodes, stagger
			rank := slices.Index(rendezvous(uidOf("a"), append(slices.Clone(peers[:n]), testNode)), testNode)

			res := h.mustReconcile("a")
			if rank == 0 {
				if got := h.mustCall("a").Status.NodeName; got != testNode {
					t.Fatalf("ranked first but not claimed (nodeName %q)", got)
				}
				return
			}
			wait := claimDelay(rank, stagger)
			checkResult(t, res, ctrl.Result{RequeueAfter: wait})
			if got := h.mustCall("a"); got.Status.NodeName != "" || len(h.statusWrites()) != 0 {
				t.Fatalf("ranked %d: claimed before its turn", rank)
			}
			h.clock.SetTime(t0.Add(wait / 2))
			checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: wait - wait/2})
			h.clock.SetTime(t0.Add(wait))
			h.mustReconcile("a")
			if got := h.mustCall("a").Status.NodeName; got != testNode {
				t.Errorf("ranked %d: not claimed after its wait (nodeName %q)", rank, got)
			}
		})
	}
}

// A call no live node fits gets Claimed=False/Unschedulable with a message
// per reason and one Warning Event, from one node only; it stays Pending.
func TestUnitReconcileUnschedulable(t *testing.T) {
	cases := map[string]struct {
		call        *fnletv1.FunctionCall
		nodes       staticNodes
		networks    []fnletv1.NetworkMode // this node's
		wantMessage string
	}{
		"spec.nodeName of a node with no live manager": {
			call:        newCall("a").NodeName("node-gone").Obj(),
			nodes:       staticNodes{{Name: "node-gone", ExpiresAt: t0.Add(-time.Minute)}},
			wantMessage: "0/1 fnlet nodes are available: 1 not spec.nodeName",
		},
		"nodeSelector matching no live node": {
			call:        newCall("a").NodeSelector("zone", "z").Obj(),
			nodes:       staticNodes{liveNode(otherNode, "zone", "b")},
			wantMessage: "0/2 fnlet nodes are available: 2 nodeSelector does not match",
		},
		"memory over every node's maximum": {
			call:        newCall("a").Memory("16Gi").Obj(),
			nodes:       staticNodes{{Name: otherNode, MaxMemoryBytes: 2 << 30, ExpiresAt: t0.Add(time.Hour)}},
			wantMessage: "0/2 fnlet nodes are available: 2 memory over the node's maximum",
		},
		"network: pod where no node has it": {
			call: newCall("a").Network(fnletv1.NetworkPod).Obj(),
			nodes: staticNodes{{Name: otherNode, Networks: []fnletv1.NetworkMode{fnletv1.NetworkNone, fnletv1.NetworkHost},
				ExpiresAt: t0.Add(time.Hour)}},
			networks:    []fnletv1.NetworkMode{fnletv1.NetworkNone},
			wantMessage: "0/2 fnlet nodes are available: 2 no network: pod",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.call)
			h.r.Nodes = tc.nodes
			h.r.Limits.Networks = tc.networks
			reporter := rendezvous(uidOf("a"), []string{testNode, otherNode})[0] == testNode || len(tc.nodes) == 1 && tc.nodes[0].Name == "node-gone"
			if !reporter {
				// This node is not the reporter: it writes nothing.
				checkResult(t, h.mustReconcile("a"), ctrl.Result{})
				if w := h.statusWrites(); len(w) != 0 {
					t.Errorf("a non-reporting node wrote %q", w)
				}
				// Make it the only live node: now it reports.
				h.r.Nodes = staticNodes{}
				tc.wantMessage = strings.Replace(tc.wantMessage, "0/2", "0/1", 1)
				tc.wantMessage = strings.Replace(tc.wantMessage, ": 2 ", ": 1 ", 1)
			}
			for range 2 { // the second reconcile writes nothing new
				checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: unschedulableRecheck})
			}
			got := h.mustCall("a")
			checkView(t, got, callView{Phase: fnletv1.PhasePending, Conditions: []string{"Claimed=False/Unschedulable"}})
			if c := meta.FindStatusCondition(got.Status.Conditions, fnletv1.ConditionClaimed); c == nil || c.Message != tc.wantMessage {
				t.Errorf("Claimed condition %+v, want message %q", c, tc.wantMessage)
			}
			checkEvents(t, h.events(), []string{"Warning Unschedulable " + tc.wantMessage})
			if w := h.statusWrites(); len(w) != 1 {
				t.Errorf("status writes %q, want one", w)
			}

			// A fitting node appears (here: this node's limits allow it).
			h.r.Nodes, h.r.NodeLabels, h.r.Limits.MaxMemoryBytes, h.r.Limits.Networks = nil, labels.Set{"zone": "z"}, 0, nil
			got.Spec.NodeName = ""
			if err := h.client.Update(context.Background(), got); err != nil {
				t.Fatal(err)
			}
			h.rt.withImages(image)
			h.mustReconcile("a")
			if c := meta.FindStatusCondition(h.mustCall("a").Status.Conditions, fnletv1.ConditionClaimed); c == nil || c.Status != metav1.ConditionTrue {
				t.Errorf("not claimed once a node fits: %+v", c)
			}
		})
	}
}

// Past maxStaggerRanks the wait doubles (to a cap), so a slow apiserver
// does not let the whole tail claim at once.
func TestUnitClaimDelay(t *testing.T) {
	s := 100 * time.Millisecond
	for rank, want := range []time.Duration{0, s, 2 * s, 3 * s, 4 * s, 8 * s, 16 * s, 32 * s} {
		if got := claimDelay(rank, s); got != want {
			t.Errorf("claimDelay(%d) = %s, want %s", rank, got, want)
		}
	}
	if got := claimDelay(1000, s); got != maxClaimDelay {
		t.Errorf("claimDelay(1000) = %s, want the cap %s", got, maxClaimDelay)
	}
}

// A node whose turn came after a wait reads the call afresh before it
// writes: if the node ranked before it claimed the call (which its cache
// does not show yet), it drops the call without a write.
func TestUnitReconcileClaimReadsAfreshAfterWaiting(t *testing.T) {
	h := newHarness(t, newCall("a").Obj())
	h.rt.withImages(image)
	// A live peer ranked above this node for the call.
	var peer string
	for i := range 100 {
		p := fmt.Sprint("node-", i)
		if rendezvous(uidOf("a"), []string{testNode, p})[0] == p {
			peer = p
			break
		}
	}
	h.r.Nodes, h.r.ClaimStagger = staticNodes{liveNode(peer)}, 100*time.Millisecond
	sc := &staleClient{Client: h.client}
	h.r.Client, h.r.Unassigned = sc, sc
	sc.freeze(h.mustCall("a")) // the cache keeps showing it unassigned
	reads := &countingReader{Reader: h.client}
	h.r.APIReader = reads

	checkResult(t, h.mustReconcile("a"), ctrl.Result{RequeueAfter: 100 * time.Millisecond})
	// The peer claims it.
	fc := h.mustCall("a")
	fc.Status.NodeName = peer
	if err := h.client.Status().Update(context.Background(), fc); err != nil {
		t.Fatal(err)
	}
	writes := len(h.statusWrites())
	h.clock.SetTime(t0.Add(100 * time.Millisecond))
	checkResult(t, h.mustReconcile("a"), ctrl.Result{})
	if got := h.mustCall("a").Status.NodeName; got != peer || len(h.statusWrites()) != writes {
		t.Errorf("node %q, %d status writes after the turn (want %s and none)", got, len(h.statusWrites())-writes, peer)
	}
	if reads.gets != 1 {
		t.Errorf("%d fresh reads of the call, want 1 (without it the claim write could only conflict)", reads.gets)
	}
	checkRuntime(t, h.rt.recorded(), nil)
}

// countingReader counts the Gets of a reader.
type countingReader struct {
	client.Reader
	gets int
}

func (c *countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.gets++
	return c.Reader.Get(ctx, key, obj, opts...)
}
