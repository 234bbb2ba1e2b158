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

// Package testing has fluent builders that make fnlet objects for tests in
// one readable line. Import it as utiltesting:
//
//	call := utiltesting.MakeFunctionCall("hello", "default").
//		Args("-stdout-text", "hello").Memory("32Mi").Timeout(time.Minute).Obj()
//
// Status helpers move a call through its phases the way a manager would:
//
//	done := utiltesting.MakeFunctionCall("hello", "default").
//		ClaimedBy("node-a").Running().Succeeded().Obj()
package testing

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	fnletv1alpha1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// TestImage is the image built from test/testfn; see config/samples.
const TestImage = "localhost/fnlet/testfn:v1"

// FunctionCallWrapper wraps a FunctionCall being built.
type FunctionCallWrapper struct {
	fnletv1alpha1.FunctionCall

	// now is the time status helpers stamp; see Now.
	now time.Time
}

// MakeFunctionCall starts a FunctionCall named name in namespace ns that runs
// TestImage with its default entrypoint and arguments.
func MakeFunctionCall(name, ns string) *FunctionCallWrapper {
	return &FunctionCallWrapper{
		FunctionCall: fnletv1alpha1.FunctionCall{
			TypeMeta: metav1.TypeMeta{
				APIVersion: fnletv1alpha1.GroupVersion.String(),
				Kind:       "FunctionCall",
			},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       fnletv1alpha1.FunctionCallSpec{Image: TestImage},
		},
	}
}

// Obj returns the built FunctionCall.
func (w *FunctionCallWrapper) Obj() *fnletv1alpha1.FunctionCall {
	return &w.FunctionCall
}

// Clone returns a deep copy, to build variants of one base call.
func (w *FunctionCallWrapper) Clone() *FunctionCallWrapper {
	return &FunctionCallWrapper{FunctionCall: *w.DeepCopy(), now: w.now}
}

// --- metadata ---

// UID sets metadata.uid (the container ID derives from it).
func (w *FunctionCallWrapper) UID(uid types.UID) *FunctionCallWrapper {
	w.ObjectMeta.UID = uid
	return w
}

// Label adds a label.
func (w *FunctionCallWrapper) Label(k, v string) *FunctionCallWrapper {
	if w.Labels == nil {
		w.Labels = map[string]string{}
	}
	w.Labels[k] = v
	return w
}

// Finalizers replaces metadata.finalizers.
func (w *FunctionCallWrapper) Finalizers(f ...string) *FunctionCallWrapper {
	w.ObjectMeta.Finalizers = f
	return w
}

// ResourceVersion sets metadata.resourceVersion.
func (w *FunctionCallWrapper) ResourceVersion(rv string) *FunctionCallWrapper {
	w.ObjectMeta.ResourceVersion = rv
	return w
}

// Generation sets metadata.generation.
func (w *FunctionCallWrapper) Generation(g int64) *FunctionCallWrapper {
	w.ObjectMeta.Generation = g
	return w
}

// Created sets metadata.creationTimestamp.
func (w *FunctionCallWrapper) Created(t time.Time) *FunctionCallWrapper {
	w.CreationTimestamp = metav1.NewTime(t)
	return w
}

// Deleted sets metadata.deletionTimestamp, as the apiserver does for an
// object with finalizers.
func (w *FunctionCallWrapper) Deleted(t time.Time) *FunctionCallWrapper {
	w.DeletionTimestamp = ptr.To(metav1.NewTime(t))
	return w
}

// --- spec ---

// Image sets spec.image.
func (w *FunctionCallWrapper) Image(image string) *FunctionCallWrapper {
	w.Spec.Image = image
	return w
}

// ImagePullPolicy sets spec.imagePullPolicy.
func (w *FunctionCallWrapper) ImagePullPolicy(p corev1.PullPolicy) *FunctionCallWrapper {
	w.Spec.ImagePullPolicy = p
	return w
}

// PullSecrets appends Secrets to spec.imagePullSecrets.
func (w *FunctionCallWrapper) PullSecrets(names ...string) *FunctionCallWrapper {
	for _, n := range names {
		w.Spec.ImagePullSecrets = append(w.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: n})
	}
	return w
}

// Command sets spec.command (replaces the image's entrypoint).
func (w *FunctionCallWrapper) Command(cmd ...string) *FunctionCallWrapper {
	w.Spec.Command = cmd
	return w
}

// Args sets spec.args (replaces the image's cmd).
func (w *FunctionCallWrapper) Args(args ...string) *FunctionCallWrapper {
	w.Spec.Args = args
	return w
}

// Env appends a literal environment variable.
func (w *FunctionCallWrapper) Env(name, value string) *FunctionCallWrapper {
	w.Spec.Env = append(w.Spec.Env, fnletv1alpha1.EnvVar{Name: name, Value: value})
	return w
}

// EnvFromSecret appends a variable whose value is key of Secret secret.
func (w *FunctionCallWrapper) EnvFromSecret(name, secret, key string) *FunctionCallWrapper {
	w.Spec.Env = append(w.Spec.Env, fnletv1alpha1.EnvVar{Name: name, ValueFrom: &fnletv1alpha1.EnvVarSource{
		SecretKeyRef: secretKey(secret, key),
	}})
	return w
}

// EnvFromConfigMap appends a variable whose value is key of ConfigMap cm.
func (w *FunctionCallWrapper) EnvFromConfigMap(name, cm, key string) *FunctionCallWrapper {
	w.Spec.Env = append(w.Spec.Env, fnletv1alpha1.EnvVar{Name: name, ValueFrom: &fnletv1alpha1.EnvVarSource{
		ConfigMapKeyRef: configMapKey(cm, key),
	}})
	return w
}

// WorkingDir sets spec.workingDir.
func (w *FunctionCallWrapper) WorkingDir(dir string) *FunctionCallWrapper {
	w.Spec.WorkingDir = dir
	return w
}

// Input feeds text to stdin (spec.input.data).
func (w *FunctionCallWrapper) Input(data string) *FunctionCallWrapper {
	w.Spec.Input = &fnletv1alpha1.Input{Data: data}
	return w
}

// BinaryInput feeds raw bytes to stdin (spec.input.binaryData).
func (w *FunctionCallWrapper) BinaryInput(data []byte) *FunctionCallWrapper {
	w.Spec.Input = &fnletv1alpha1.Input{BinaryData: data}
	return w
}

// InputFromSecret feeds key of Secret secret to stdin.
func (w *FunctionCallWrapper) InputFromSecret(secret, key string) *FunctionCallWrapper {
	w.Spec.Input = &fnletv1alpha1.Input{SecretKeyRef: secretKey(secret, key)}
	return w
}

// InputFromConfigMap feeds key of ConfigMap cm to stdin.
func (w *FunctionCallWrapper) InputFromConfigMap(cm, key string) *FunctionCallWrapper {
	w.Spec.Input = &fnletv1alpha1.Input{ConfigMapKeyRef: configMapKey(cm, key)}
	return w
}

// Timeout sets spec.timeout.
func (w *FunctionCallWrapper) Timeout(d time.Duration) *FunctionCallWrapper {
	w.Spec.Timeout = &metav1.Duration{Duration: d}
	return w
}

// Memory sets spec.resources.memory, e.g. "32Mi". It panics on a malformed
// quantity: a test bug.
func (w *FunctionCallWrapper) Memory(q string) *FunctionCallWrapper {
	w.resources().Memory = ptr.To(resource.MustParse(q))
	return w
}

// CPU sets spec.resources.cpu, e.g. "500m". It panics on a malformed quantity.
func (w *FunctionCallWrapper) CPU(q string) *FunctionCallWrapper {
	w.resources().CPU = ptr.To(resource.MustParse(q))
	return w
}

// Pids sets spec.resources.pids.
func (w *FunctionCallWrapper) Pids(n int64) *FunctionCallWrapper {
	w.resources().Pids = &n
	return w
}

func (w *FunctionCallWrapper) resources() *fnletv1alpha1.CallResources {
	if w.Spec.Resources == nil {
		w.Spec.Resources = &fnletv1alpha1.CallResources{}
	}
	return w.Spec.Resources
}

// NodeName pins the call to a node (spec.nodeName).
func (w *FunctionCallWrapper) NodeName(node string) *FunctionCallWrapper {
	w.Spec.NodeName = node
	return w
}

// NodeSelector adds a label the node must carry.
func (w *FunctionCallWrapper) NodeSelector(k, v string) *FunctionCallWrapper {
	if w.Spec.NodeSelector == nil {
		w.Spec.NodeSelector = map[string]string{}
	}
	w.Spec.NodeSelector[k] = v
	return w
}

// Network sets spec.network.
func (w *FunctionCallWrapper) Network(m fnletv1alpha1.NetworkMode) *FunctionCallWrapper {
	w.Spec.Network = m
	return w
}

// RunAs sets spec.securityContext.runAsUser and runAsGroup.
func (w *FunctionCallWrapper) RunAs(uid, gid int64) *FunctionCallWrapper {
	sc := w.securityContext()
	sc.RunAsUser, sc.RunAsGroup = &uid, &gid
	return w
}

// ReadOnlyRootFilesystem makes the image's filesystem read-only.
func (w *FunctionCallWrapper) ReadOnlyRootFilesystem() *FunctionCallWrapper {
	w.securityContext().ReadOnlyRootFilesystem = ptr.To(true)
	return w
}

// Privileged asks for a privileged process.
func (w *FunctionCallWrapper) Privileged() *FunctionCallWrapper {
	w.securityContext().Privileged = ptr.To(true)
	return w
}

func (w *FunctionCallWrapper) securityContext() *fnletv1alpha1.CallSecurityContext {
	if w.Spec.SecurityContext == nil {
		w.Spec.SecurityContext = &fnletv1alpha1.CallSecurityContext{}
	}
	return w.Spec.SecurityContext
}

// Cancel sets spec.cancel.
func (w *FunctionCallWrapper) Cancel() *FunctionCallWrapper {
	w.Spec.Cancel = true
	return w
}

// TTLSecondsAfterFinished sets spec.ttlSecondsAfterFinished.
func (w *FunctionCallWrapper) TTLSecondsAfterFinished(s int32) *FunctionCallWrapper {
	w.Spec.TTLSecondsAfterFinished = &s
	return w
}

// Retries sets spec.retries.
func (w *FunctionCallWrapper) Retries(n int32) *FunctionCallWrapper {
	w.Spec.Retries = &n
	return w
}

// --- status ---

// Now sets the time the following status helpers stamp (claimedAt,
// startedAt, finishedAt, conditions). Without it they use the wall clock,
// truncated to seconds as the apiserver stores it.
func (w *FunctionCallWrapper) Now(t time.Time) *FunctionCallWrapper {
	w.now = t
	return w
}

func (w *FunctionCallWrapper) stamp() metav1.Time {
	if w.now.IsZero() {
		return metav1.NewTime(time.Now().Truncate(time.Second))
	}
	return metav1.NewTime(w.now)
}

// ClaimedBy records that node's manager claimed the call: status.nodeName,
// claimedAt, phase Pending and a Claimed condition.
func (w *FunctionCallWrapper) ClaimedBy(node string) *FunctionCallWrapper {
	at := w.stamp()
	w.Status.NodeName = node
	w.Status.ClaimedAt = &at
	w.Status.Phase = fnletv1alpha1.PhasePending
	return w.condition(fnletv1alpha1.ConditionClaimed, metav1.ConditionTrue, "Claimed", "claimed by node "+node)
}

// ImageMissing records that the image is not on the node (ImageReady False).
func (w *FunctionCallWrapper) ImageMissing() *FunctionCallWrapper {
	return w.condition(fnletv1alpha1.ConditionImageReady, metav1.ConditionFalse, "ImageMissing", "image "+w.Spec.Image+" is not on the node")
}

// Running records that the process started: phase Running, startedAt, one
// more attempt, ImageReady and Started conditions.
func (w *FunctionCallWrapper) Running() *FunctionCallWrapper {
	at := w.stamp()
	w.Status.Phase = fnletv1alpha1.PhaseRunning
	w.Status.StartedAt = &at
	w.Status.Attempts++
	w.condition(fnletv1alpha1.ConditionImageReady, metav1.ConditionTrue, "ImagePresent", "image "+w.Spec.Image+" is on the node")
	return w.condition(fnletv1alpha1.ConditionStarted, metav1.ConditionTrue, "Started", "the process started")
}

// Attempts sets status.attempts, as a takeover or a failed attempt
// recorded it.
func (w *FunctionCallWrapper) Attempts(n int32) *FunctionCallWrapper {
	w.Status.Attempts = n
	return w
}

// Succeeded records an exit with code 0: phase Succeeded, reason Completed.
func (w *FunctionCallWrapper) Succeeded() *FunctionCallWrapper {
	w.Status.ExitCode = ptr.To[int32](0)
	return w.finish(fnletv1alpha1.PhaseSucceeded, fnletv1alpha1.ReasonCompleted, "the process exited with code 0")
}

// Failed records a failure with reason and a message for the user. Combine
// with ExitCode or Signal where the process exited.
func (w *FunctionCallWrapper) Failed(reason fnletv1alpha1.CallReason, message string) *FunctionCallWrapper {
	return w.finish(fnletv1alpha1.PhaseFailed, reason, message)
}

func (w *FunctionCallWrapper) finish(phase fnletv1alpha1.CallPhase, reason fnletv1alpha1.CallReason, message string) *FunctionCallWrapper {
	at := w.stamp()
	w.Status.Phase = phase
	w.Status.Reason = reason
	w.Status.Message = message
	w.Status.FinishedAt = &at
	return w.condition(fnletv1alpha1.ConditionFinished, metav1.ConditionTrue, string(reason), message)
}

// ExitCode sets status.exitCode.
func (w *FunctionCallWrapper) ExitCode(code int32) *FunctionCallWrapper {
	w.Status.ExitCode = &code
	return w
}

// Signal sets status.signal, e.g. "SIGKILL".
func (w *FunctionCallWrapper) Signal(sig string) *FunctionCallWrapper {
	w.Status.Signal = sig
	return w
}

// PullError sets status.pullError.
func (w *FunctionCallWrapper) PullError(e fnletv1alpha1.PullError) *FunctionCallWrapper {
	w.Status.PullError = e
	return w
}

// ContainerID sets status.containerID.
func (w *FunctionCallWrapper) ContainerID(id string) *FunctionCallWrapper {
	w.Status.ContainerID = id
	return w
}

// Stdout sets the stdout tail and whether it is truncated.
func (w *FunctionCallWrapper) Stdout(tail string, truncated bool) *FunctionCallWrapper {
	w.Status.Stdout, w.Status.StdoutTruncated = tail, truncated
	return w
}

// Stderr sets the stderr tail and whether it is truncated.
func (w *FunctionCallWrapper) Stderr(tail string, truncated bool) *FunctionCallWrapper {
	w.Status.Stderr, w.Status.StderrTruncated = tail, truncated
	return w
}

// Usage sets status.usage.
func (w *FunctionCallWrapper) Usage(peakMemoryBytes, cpuNanoseconds int64) *FunctionCallWrapper {
	w.Status.Usage = &fnletv1alpha1.Usage{PeakMemoryBytes: peakMemoryBytes, CPUNanoseconds: cpuNanoseconds}
	return w
}

// Condition sets (adds or replaces by type) a status condition as is.
func (w *FunctionCallWrapper) Condition(c metav1.Condition) *FunctionCallWrapper {
	apimeta.SetStatusCondition(&w.Status.Conditions, c)
	return w
}

func (w *FunctionCallWrapper) condition(typ string, status metav1.ConditionStatus, reason, message string) *FunctionCallWrapper {
	return w.Condition(metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: w.ObjectMeta.Generation,
		LastTransitionTime: w.stamp(),
	})
}

func secretKey(name, key string) *corev1.SecretKeySelector {
	return &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}
}

func configMapKey(name, key string) *corev1.ConfigMapKeySelector {
	return &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}
}

// Pool names the FunctionPool the call should use.
func (w *FunctionCallWrapper) Pool(name string) *FunctionCallWrapper {
	w.Spec.Pool = name
	return w
}

// --- volumes ---

// Item maps key to the file path of a configMap or secret volume, with the
// file's mode when given.
func Item(key, path string, mode ...int32) fnletv1alpha1.KeyToPath {
	it := fnletv1alpha1.KeyToPath{Key: key, Path: path}
	if len(mode) > 0 {
		it.Mode = ptr.To(mode[0])
	}
	return it
}

// Volume appends a volume as given.
func (w *FunctionCallWrapper) Volume(v fnletv1alpha1.Volume) *FunctionCallWrapper {
	w.Spec.Volumes = append(w.Spec.Volumes, v)
	return w
}

// ConfigMapVolume mounts ConfigMap cm at mountPath: the items given, else
// every key.
func (w *FunctionCallWrapper) ConfigMapVolume(name, mountPath, cm string, items ...fnletv1alpha1.KeyToPath) *FunctionCallWrapper {
	return w.Volume(fnletv1alpha1.Volume{Name: name, MountPath: mountPath,
		ConfigMap: &fnletv1alpha1.ConfigMapVolumeSource{Name: cm, Items: items}})
}

// SecretVolume mounts Secret secret at mountPath: the items given, else
// every key.
func (w *FunctionCallWrapper) SecretVolume(name, mountPath, secret string, items ...fnletv1alpha1.KeyToPath) *FunctionCallWrapper {
	return w.Volume(fnletv1alpha1.Volume{Name: name, MountPath: mountPath,
		Secret: &fnletv1alpha1.SecretVolumeSource{SecretName: secret, Items: items}})
}

// EmptyDir mounts a tmpfs of size (a quantity) at mountPath.
func (w *FunctionCallWrapper) EmptyDir(name, mountPath, size string) *FunctionCallWrapper {
	return w.Volume(fnletv1alpha1.Volume{Name: name, MountPath: mountPath,
		EmptyDir: &fnletv1alpha1.EmptyDirVolumeSource{SizeLimit: resource.MustParse(size)}})
}

// DefaultMode sets defaultMode of the last configMap or secret volume.
func (w *FunctionCallWrapper) DefaultMode(mode int32) *FunctionCallWrapper {
	v := &w.Spec.Volumes[len(w.Spec.Volumes)-1]
	switch {
	case v.ConfigMap != nil:
		v.ConfigMap.DefaultMode = ptr.To(mode)
	case v.Secret != nil:
		v.Secret.DefaultMode = ptr.To(mode)
	}
	return w
}

// OptionalVolume marks the last configMap or secret volume optional.
func (w *FunctionCallWrapper) OptionalVolume() *FunctionCallWrapper {
	v := &w.Spec.Volumes[len(w.Spec.Volumes)-1]
	switch {
	case v.ConfigMap != nil:
		v.ConfigMap.Optional = ptr.To(true)
	case v.Secret != nil:
		v.Secret.Optional = ptr.To(true)
	}
	return w
}

// Scratch gives the call a writable /tmp of size (a quantity).
func (w *FunctionCallWrapper) Scratch(size string) *FunctionCallWrapper {
	w.Spec.Scratch = &fnletv1alpha1.Scratch{SizeLimit: resource.MustParse(size)}
	return w
}

// FunctionPoolWrapper builds FunctionPools fluently.
type FunctionPoolWrapper struct{ fnletv1alpha1.FunctionPool }

// MakeFunctionPool is a pool of image with one container per node.
func MakeFunctionPool(name, ns, image string) *FunctionPoolWrapper {
	return &FunctionPoolWrapper{fnletv1alpha1.FunctionPool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       fnletv1alpha1.FunctionPoolSpec{Image: image, Size: 1},
	}}
}

// Obj returns the built pool.
func (w *FunctionPoolWrapper) Obj() *fnletv1alpha1.FunctionPool { return &w.FunctionPool }

// Size sets the ready containers per node.
func (w *FunctionPoolWrapper) Size(n int32) *FunctionPoolWrapper {
	w.Spec.Size = n
	return w
}

// ImagePullPolicy sets the pool's pull policy.
func (w *FunctionPoolWrapper) ImagePullPolicy(p corev1.PullPolicy) *FunctionPoolWrapper {
	w.Spec.ImagePullPolicy = p
	return w
}

// Memory sets the pool's memory class.
func (w *FunctionPoolWrapper) Memory(q string) *FunctionPoolWrapper {
	w.resources().Memory = ptr.To(resource.MustParse(q))
	return w
}

// Pids sets the pool's pids class.
func (w *FunctionPoolWrapper) Pids(n int64) *FunctionPoolWrapper {
	w.resources().Pids = &n
	return w
}

func (w *FunctionPoolWrapper) resources() *fnletv1alpha1.CallResources {
	if w.Spec.Resources == nil {
		w.Spec.Resources = &fnletv1alpha1.CallResources{}
	}
	return w.Spec.Resources
}

// NodeSelector adds a label the pool's nodes must carry.
func (w *FunctionPoolWrapper) NodeSelector(k, v string) *FunctionPoolWrapper {
	if w.Spec.NodeSelector == nil {
		w.Spec.NodeSelector = map[string]string{}
	}
	w.Spec.NodeSelector[k] = v
	return w
}

// CPU sets the pool's cpu class.
func (w *FunctionPoolWrapper) CPU(q string) *FunctionPoolWrapper {
	w.resources().CPU = ptr.To(resource.MustParse(q))
	return w
}

// Network sets the network of the pool's containers.
func (w *FunctionPoolWrapper) Network(m fnletv1alpha1.NetworkMode) *FunctionPoolWrapper {
	w.Spec.Network = m
	return w
}

// RunAs sets the user and group of the pool's containers.
func (w *FunctionPoolWrapper) RunAs(uid, gid int64) *FunctionPoolWrapper {
	sc := w.securityContext()
	sc.RunAsUser, sc.RunAsGroup = &uid, &gid
	return w
}

// ReadOnlyRootFilesystem makes the pool's containers' rootfs read-only.
func (w *FunctionPoolWrapper) ReadOnlyRootFilesystem() *FunctionPoolWrapper {
	w.securityContext().ReadOnlyRootFilesystem = ptr.To(true)
	return w
}

func (w *FunctionPoolWrapper) securityContext() *fnletv1alpha1.PoolSecurityContext {
	if w.Spec.SecurityContext == nil {
		w.Spec.SecurityContext = &fnletv1alpha1.PoolSecurityContext{}
	}
	return w.Spec.SecurityContext
}
