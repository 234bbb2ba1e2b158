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

package testing

import (
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	fnletv1alpha1 "github.com/fnlet/fnlet/api/v1alpha1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestUnitFunctionCallSpecBuilders(t *testing.T) {
	meta := metav1.ObjectMeta{Name: "a", Namespace: "ns"}
	typeMeta := metav1.TypeMeta{APIVersion: "fnlet.dev/v1alpha1", Kind: "FunctionCall"}
	cases := map[string]struct {
		got  *fnletv1alpha1.FunctionCall
		want fnletv1alpha1.FunctionCallSpec
	}{
		"defaults to the test image": {
			got:  MakeFunctionCall("a", "ns").Obj(),
			want: fnletv1alpha1.FunctionCallSpec{Image: TestImage},
		},
		"process": {
			got: MakeFunctionCall("a", "ns").Image("img:v1").ImagePullPolicy(corev1.PullNever).PullSecrets("r1", "r2").
				Command("/bin/fn").Args("-x", "1").WorkingDir("/work").Obj(),
			want: fnletv1alpha1.FunctionCallSpec{
				Image: "img:v1", ImagePullPolicy: corev1.PullNever,
				ImagePullSecrets: []corev1.LocalObjectReference{{Name: "r1"}, {Name: "r2"}},
				Command:          []string{"/bin/fn"}, Args: []string{"-x", "1"}, WorkingDir: "/work",
			},
		},
		"env in order": {
			got: MakeFunctionCall("a", "ns").Env("A", "1").EnvFromSecret("S", "sec", "k").EnvFromConfigMap("C", "cm", "k2").Obj(),
			want: fnletv1alpha1.FunctionCallSpec{Image: TestImage, Env: []fnletv1alpha1.EnvVar{
				{Name: "A", Value: "1"},
				{Name: "S", ValueFrom: &fnletv1alpha1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "k"}}},
				{Name: "C", ValueFrom: &fnletv1alpha1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k2"}}},
			}},
		},
		"last input wins": {
			got:  MakeFunctionCall("a", "ns").Input("text").BinaryInput([]byte{1, 2}).Obj(),
			want: fnletv1alpha1.FunctionCallSpec{Image: TestImage, Input: &fnletv1alpha1.Input{BinaryData: []byte{1, 2}}},
		},
		"input from a Secret": {
			got: MakeFunctionCall("a", "ns").InputFromSecret("sec", "stdin").Obj(),
			want: fnletv1alpha1.FunctionCallSpec{Image: TestImage, Input: &fnletv1alpha1.Input{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "stdin"}}},
		},
		"limits": {
			got: MakeFunctionCall("a", "ns").Memory("32Mi").CPU("500m").Pids(64).Timeout(time.Minute).Obj(),
			want: fnletv1alpha1.FunctionCallSpec{
				Image:   TestImage,
				Timeout: &metav1.Duration{Duration: time.Minute},
				Resources: &fnletv1alpha1.CallResources{
					Memory: ptr.To(resource.MustParse("32Mi")), CPU: ptr.To(resource.MustParse("500m")), Pids: ptr.To[int64](64),
				},
			},
		},
		"placement and security": {
			got: MakeFunctionCall("a", "ns").NodeName("n1").NodeSelector("disk", "ssd").Network(fnletv1alpha1.NetworkHost).
				RunAs(1000, 2000).ReadOnlyRootFilesystem().Privileged().Obj(),
			want: fnletv1alpha1.FunctionCallSpec{
				Image: TestImage, NodeName: "n1", NodeSelector: map[string]string{"disk": "ssd"}, Network: fnletv1alpha1.NetworkHost,
				SecurityContext: &fnletv1alpha1.CallSecurityContext{
					RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](2000),
					ReadOnlyRootFilesystem: ptr.To(true), Privileged: ptr.To(true),
				},
			},
		},
		"lifecycle": {
			got: MakeFunctionCall("a", "ns").Cancel().TTLSecondsAfterFinished(30).Retries(2).Obj(),
			want: fnletv1alpha1.FunctionCallSpec{
				Image: TestImage, Cancel: true, TTLSecondsAfterFinished: ptr.To[int32](30), Retries: ptr.To[int32](2),
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if !equality.Semantic.DeepEqual(tc.got.ObjectMeta, meta) || tc.got.TypeMeta != typeMeta {
				t.Errorf("meta = %+v %+v, want %+v %+v", tc.got.TypeMeta, tc.got.ObjectMeta, typeMeta, meta)
			}
			if !equality.Semantic.DeepEqual(tc.got.Spec, tc.want) {
				t.Errorf("spec:\n got %s\nwant %s", toJSON(t, tc.got.Spec), toJSON(t, tc.want))
			}
		})
	}
}

func TestUnitFunctionCallStatusHelpers(t *testing.T) {
	t1, t2 := t0.Add(time.Second), t0.Add(3*time.Second)
	cases := map[string]struct {
		got            *fnletv1alpha1.FunctionCall
		wantPhase      fnletv1alpha1.CallPhase
		wantReason     fnletv1alpha1.CallReason
		wantExit       *int32
		wantConditions map[string]metav1.ConditionStatus
		check          func(t *testing.T, s fnletv1alpha1.FunctionCallStatus)
	}{
		"claimed": {
			got:            MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").Obj(),
			wantPhase:      fnletv1alpha1.PhasePending,
			wantConditions: map[string]metav1.ConditionStatus{fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue},
			check: func(t *testing.T, s fnletv1alpha1.FunctionCallStatus) {
				if s.NodeName != "n1" || !s.ClaimedAt.Time.Equal(t0) {
					t.Errorf("nodeName %q claimedAt %v, want n1 at %v", s.NodeName, s.ClaimedAt, t0)
				}
			},
		},
		"image missing": {
			got:       MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").ImageMissing().Obj(),
			wantPhase: fnletv1alpha1.PhasePending,
			wantConditions: map[string]metav1.ConditionStatus{
				fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue, fnletv1alpha1.ConditionImageReady: metav1.ConditionFalse,
			},
		},
		"running": {
			got:       MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").ImageMissing().Now(t1).Running().ContainerID("c1").Obj(),
			wantPhase: fnletv1alpha1.PhaseRunning,
			wantConditions: map[string]metav1.ConditionStatus{
				fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue, fnletv1alpha1.ConditionImageReady: metav1.ConditionTrue,
				fnletv1alpha1.ConditionStarted: metav1.ConditionTrue,
			},
			check: func(t *testing.T, s fnletv1alpha1.FunctionCallStatus) {
				if !s.StartedAt.Time.Equal(t1) || s.Attempts != 1 || s.ContainerID != "c1" {
					t.Errorf("startedAt %v attempts %d containerID %q", s.StartedAt, s.Attempts, s.ContainerID)
				}
			},
		},
		"succeeded with output": {
			got: MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").Running().Now(t2).Succeeded().
				Stdout("hello\n", false).Stderr("tail", true).Usage(1<<20, 5e6).Obj(),
			wantPhase: fnletv1alpha1.PhaseSucceeded, wantReason: fnletv1alpha1.ReasonCompleted, wantExit: ptr.To[int32](0),
			wantConditions: map[string]metav1.ConditionStatus{
				fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue, fnletv1alpha1.ConditionImageReady: metav1.ConditionTrue,
				fnletv1alpha1.ConditionStarted: metav1.ConditionTrue, fnletv1alpha1.ConditionFinished: metav1.ConditionTrue,
			},
			check: func(t *testing.T, s fnletv1alpha1.FunctionCallStatus) {
				if !s.FinishedAt.Time.Equal(t2) || s.Stdout != "hello\n" || s.StdoutTruncated || s.Stderr != "tail" || !s.StderrTruncated {
					t.Errorf("finishedAt %v stdout %q/%v stderr %q/%v", s.FinishedAt, s.Stdout, s.StdoutTruncated, s.Stderr, s.StderrTruncated)
				}
				if s.Usage == nil || s.Usage.PeakMemoryBytes != 1<<20 || s.Usage.CPUNanoseconds != 5e6 {
					t.Errorf("usage = %+v", s.Usage)
				}
			},
		},
		"failed with exit code": {
			got: MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").Running().ExitCode(3).
				Failed(fnletv1alpha1.ReasonError, "the process exited with code 3").Obj(),
			wantPhase: fnletv1alpha1.PhaseFailed, wantReason: fnletv1alpha1.ReasonError, wantExit: ptr.To[int32](3),
			wantConditions: map[string]metav1.ConditionStatus{
				fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue, fnletv1alpha1.ConditionImageReady: metav1.ConditionTrue,
				fnletv1alpha1.ConditionStarted: metav1.ConditionTrue, fnletv1alpha1.ConditionFinished: metav1.ConditionTrue,
			},
		},
		"killed by a signal": {
			got:        MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").Running().Signal("SIGKILL").Failed(fnletv1alpha1.ReasonOOMKilled, "out of memory").Obj(),
			wantPhase:  fnletv1alpha1.PhaseFailed,
			wantReason: fnletv1alpha1.ReasonOOMKilled,
			wantConditions: map[string]metav1.ConditionStatus{
				fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue, fnletv1alpha1.ConditionImageReady: metav1.ConditionTrue,
				fnletv1alpha1.ConditionStarted: metav1.ConditionTrue, fnletv1alpha1.ConditionFinished: metav1.ConditionTrue,
			},
			check: func(t *testing.T, s fnletv1alpha1.FunctionCallStatus) {
				if s.Signal != "SIGKILL" {
					t.Errorf("signal = %q", s.Signal)
				}
			},
		},
		"pull failure": {
			got: MakeFunctionCall("a", "ns").Now(t0).ClaimedBy("n1").ImageMissing().PullError(fnletv1alpha1.PullErrorNotFound).
				Failed(fnletv1alpha1.ReasonImagePullFailed, "image not found").Obj(),
			wantPhase: fnletv1alpha1.PhaseFailed, wantReason: fnletv1alpha1.ReasonImagePullFailed,
			wantConditions: map[string]metav1.ConditionStatus{
				fnletv1alpha1.ConditionClaimed: metav1.ConditionTrue, fnletv1alpha1.ConditionImageReady: metav1.ConditionFalse,
				fnletv1alpha1.ConditionFinished: metav1.ConditionTrue,
			},
			check: func(t *testing.T, s fnletv1alpha1.FunctionCallStatus) {
				if s.PullError != fnletv1alpha1.PullErrorNotFound {
					t.Errorf("pullError = %q", s.PullError)
				}
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s := tc.got.Status
			if s.Phase != tc.wantPhase || s.Reason != tc.wantReason {
				t.Errorf("phase/reason = %s/%s, want %s/%s", s.Phase, s.Reason, tc.wantPhase, tc.wantReason)
			}
			if !equality.Semantic.DeepEqual(s.ExitCode, tc.wantExit) {
				t.Errorf("exitCode = %v, want %v", ptr.Deref(s.ExitCode, -1), ptr.Deref(tc.wantExit, -1))
			}
			if len(s.Conditions) != len(tc.wantConditions) {
				t.Errorf("conditions = %+v, want %v", s.Conditions, tc.wantConditions)
			}
			for typ, status := range tc.wantConditions {
				c := apimeta.FindStatusCondition(s.Conditions, typ)
				if c == nil || c.Status != status || c.Reason == "" || c.LastTransitionTime.IsZero() {
					t.Errorf("condition %s = %+v, want status %s with a reason and a time", typ, c, status)
				}
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

func TestUnitCloneIsDeep(t *testing.T) {
	base := MakeFunctionCall("a", "ns").Args("-exit", "0").Memory("32Mi").Now(t0)
	variant := base.Clone().Args("-exit", "3").Memory("64Mi").Label("k", "v").Obj()
	orig := base.Obj()
	if orig.Spec.Args[1] != "0" || orig.Spec.Resources.Memory.String() != "32Mi" || orig.Labels != nil {
		t.Errorf("Clone shares state with its source: %s", toJSON(t, orig))
	}
	if variant.Spec.Args[1] != "3" || variant.Spec.Resources.Memory.String() != "64Mi" {
		t.Errorf("variant = %s", toJSON(t, variant))
	}
}

func TestUnitWallClockIsTruncatedToSeconds(t *testing.T) {
	// The apiserver stores metav1.Time with second precision: an object built
	// without Now must compare equal to what a round trip returns.
	s := MakeFunctionCall("a", "ns").ClaimedBy("n1").Obj().Status
	if s.ClaimedAt.Time.Nanosecond() != 0 {
		t.Errorf("claimedAt %v has sub-second precision", s.ClaimedAt)
	}
}

func toJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
