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

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

/*
A FunctionCall is one run of a container image to completion: the image, the
process to start, its environment and stdin, and the limits it runs under.
An fnlet manager claims the call for its node (status.nodeName), runs it as a
containerd container and reports the outcome in status.

Validation lives here, as markers, so that `kubectl apply` rejects a bad call
with a sentence the user understands before any node sees it. Every list and
string carries a maximum size: the apiserver estimates the cost of each CEL
rule from those bounds and refuses rules whose worst case is unbounded.
*/

// Size limits of a FunctionCall. They bound what a single object may carry
// (etcd stores objects of at most ~1.5 MiB) and make CEL cost estimation pass.
const (
	// MaxInputBytes is the largest inline input (spec.input.data or binaryData).
	MaxInputBytes = 1 << 20
)

// FunctionCallSpec is what to run and under which limits. It is immutable once
// a node has claimed the call, except Cancel.
// +kubebuilder:validation:XValidation:rule="!has(self.scratch) || !has(self.volumes) || self.volumes.all(v, v.mountPath != '/tmp')",fieldPath=`.volumes`,message="a volume cannot be mounted at /tmp when scratch is set: scratch is /tmp"
// +kubebuilder:validation:XValidation:rule="!has(self.scratch) || !self.?resources.?memory.hasValue() || !isQuantity(string(self.scratch.sizeLimit)) || !isQuantity(string(self.resources.memory)) || quantity(string(self.scratch.sizeLimit)).compareTo(quantity(string(self.resources.memory))) <= 0",fieldPath=`.scratch.sizeLimit`,message="scratch.sizeLimit must be at most resources.memory: /tmp is memory of the call"
// +kubebuilder:validation:XValidation:rule="!has(self.volumes) || !self.?resources.?memory.hasValue() || !isQuantity(string(self.resources.memory)) || self.volumes.all(v, !has(v.emptyDir) || !isQuantity(string(v.emptyDir.sizeLimit)) || quantity(string(v.emptyDir.sizeLimit)).compareTo(quantity(string(self.resources.memory))) <= 0)",fieldPath=`.volumes`,message="an emptyDir's sizeLimit must be at most resources.memory: its contents are memory of the call"
// +kubebuilder:validation:XValidation:rule="!oldSelf.?cancel.orValue(false) || self.?cancel.orValue(false)",fieldPath=`.cancel`,message="cancel cannot be set back to false once it is true"
type FunctionCallSpec struct {
	// Image is the container image reference to run, e.g.
	// "registry.example.com/fn/resize:v3" or "localhost/fnlet/testfn:v1".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`

	// ImagePullPolicy says when the node pulls the image: IfNotPresent pulls only
	// when the node lacks it, Always pulls every time, Never only uses an image
	// already on the node (the call fails with ImagePullFailed otherwise).
	// +optional
	// +kubebuilder:default=IfNotPresent
	// +kubebuilder:validation:Enum=IfNotPresent;Always;Never
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// ImagePullSecrets names kubernetes.io/dockerconfigjson Secrets in the
	// call's namespace holding registry credentials for the image.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// Command replaces the image's ENTRYPOINT. Not run in a shell: each element
	// is one argv word. When empty the image's ENTRYPOINT is used.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=4096
	Command []string `json:"command,omitempty"`

	// Args replaces the image's CMD (the arguments given to the entrypoint).
	// When empty the image's CMD is used.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=4096
	Args []string `json:"args,omitempty"`

	// Env is the environment of the process, added to the image's environment.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Env []EnvVar `json:"env,omitempty"`

	// WorkingDir is the absolute path the process starts in. When empty the
	// image's WORKDIR is used.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="workingDir must be an absolute path"
	WorkingDir string `json:"workingDir,omitempty"`

	// Input is written to the process's stdin, which is then closed. Without
	// Input the process reads end-of-file from stdin at once.
	// Inputs over about 190 KiB need `kubectl create` or
	// `kubectl apply --server-side` (or `kubectl fnlet run --stdin`):
	// client-side `kubectl apply` copies the whole object into its
	// last-applied-configuration annotation, which is capped at 256 KiB.
	// +optional
	Input *Input `json:"input,omitempty"`

	// Timeout bounds the run, counted from the moment a node claims the call
	// (image pull included). When it expires the process gets SIGTERM, then
	// SIGKILL after a grace period, and the call fails with reason TimedOut.
	// A Go duration such as "30s", "5m" or "1h30m"; at most 24h. When unset the
	// manager's default applies.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$')",message="timeout must be a duration such as 30s, 5m or 1h30m"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self) > duration('0s')",message="timeout must be greater than 0s"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self) <= duration('24h')",message="timeout must be at most 24h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Resources limits what the process may use. Unset limits take the
	// manager's defaults.
	// +optional
	Resources *CallResources `json:"resources,omitempty"`

	// NodeName pins the call to one node. When empty any fnlet node whose
	// labels match NodeSelector may claim it.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName,omitempty"`

	// NodeSelector restricts the call to nodes carrying all these labels.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Network is the network the process sees: none (only loopback), pod
	// (a network namespace of its own on the node's pod network, through
	// CNI, with an address from the node's pod range: egress like a Pod's;
	// the node's manager must have it enabled, --cni-conf-dir) or host (the
	// node's network; the manager must allow it).
	// +optional
	// +kubebuilder:default=none
	Network NetworkMode `json:"network,omitempty"`

	// SecurityContext sets the user and privileges of the process.
	// +optional
	SecurityContext *CallSecurityContext `json:"securityContext,omitempty"`

	// Cancel, set to true, stops the call: a running process gets SIGTERM, then
	// SIGKILL after a grace period, and the call fails with reason Cancelled.
	// The only field that may change after a node claimed the call; it cannot
	// be set back to false.
	// +optional
	Cancel bool `json:"cancel,omitempty"`

	// TTLSecondsAfterFinished deletes the FunctionCall this many seconds after
	// it finished. When unset finished calls are kept.
	// +optional
	// +kubebuilder:validation:Minimum=0
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`

	// Pool names a FunctionPool of the call's namespace whose pre-started
	// containers the call should use. Without it the call uses any pool of its
	// namespace it fits. A call that does not fit the pool, or finds it empty,
	// runs cold all the same.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Pool string `json:"pool,omitempty"`

	// Retries is how many times the call is run again after a failure that is
	// not the function's fault (the node was lost, the runtime failed). A
	// non-zero exit, an OOM kill or a timeout are never retried.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Retries *int32 `json:"retries,omitempty"`

	// Volumes are files and scratch directories mounted into the container,
	// in the style of a Pod's: the keys of a ConfigMap or Secret of the
	// call's namespace as read-only files, or an emptyDir (a tmpfs of a
	// given size, counted against the memory limit). There is no hostPath.
	// Mount paths are absolute and clean (no "." or ".." elements, no "//",
	// no trailing "/"), unique, not nested in one another, and not over or
	// under /proc, /sys or /dev.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(v, self.exists_one(w, w.mountPath == v.mountPath))",message="volumes: each mountPath may be used once"
	// +kubebuilder:validation:XValidation:rule="self.all(a, self.all(b, !b.mountPath.startsWith(a.mountPath + '/')))",message="volumes: a mountPath may not lie under another volume's mountPath"
	Volumes []Volume `json:"volumes,omitempty"`

	// Scratch gives the process a writable /tmp of a bounded size: a tmpfs,
	// counted against the memory limit. With
	// securityContext.readOnlyRootFilesystem it is the easy secure choice:
	// nothing but /tmp (and emptyDir volumes) is writable, and what is
	// written there never touches the node's disk.
	// +optional
	Scratch *Scratch `json:"scratch,omitempty"`
}

// Volume is one volume of a call and where it is mounted. Exactly one
// source (configMap, secret or emptyDir) must be set.
// +kubebuilder:validation:XValidation:rule="[has(self.configMap), has(self.secret), has(self.emptyDir)].filter(x, x).size() == 1",message="a volume must set exactly one of configMap, secret or emptyDir"
type Volume struct {
	// Name of the volume: a DNS label, unique in the call.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// MountPath is where the volume appears in the container: an absolute,
	// clean path, not over or under /proc, /sys or /dev.
	// +required
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="mountPath must be an absolute path"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.]?(/|$)')",message="mountPath must not contain . or .. elements"
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') || self.matches('^(/[^/]+)+$')",message="mountPath must not be /, end with / or contain //"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^/(proc|sys|dev)(/|$)')",message="mountPath must not be /proc, /sys or /dev, or under them"
	MountPath string `json:"mountPath"`

	// ConfigMap projects the keys of a ConfigMap of the call's namespace as
	// read-only files.
	// +optional
	ConfigMap *ConfigMapVolumeSource `json:"configMap,omitempty"`

	// Secret projects the keys of a Secret of the call's namespace as
	// read-only files.
	// +optional
	Secret *SecretVolumeSource `json:"secret,omitempty"`

	// EmptyDir is an empty, writable tmpfs (a Pod's emptyDir with medium
	// Memory), removed with the container.
	// +optional
	EmptyDir *EmptyDirVolumeSource `json:"emptyDir,omitempty"`
}

// ConfigMapVolumeSource projects a ConfigMap's keys (data and binaryData)
// as files, like a Pod's configMap volume.
type ConfigMapVolumeSource struct {
	// Name of the ConfigMap, in the call's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Items selects keys and the relative paths they are written to. When
	// empty every key becomes a file named after it.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(i, self.exists_one(j, j.path == i.path))",message="items: each path may be used once"
	Items []KeyToPath `json:"items,omitempty"`

	// DefaultMode is the permission bits of the files, 0644 when unset
	// (in YAML, write octal as 0644; JSON needs the decimal 420).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=511
	DefaultMode *int32 `json:"defaultMode,omitempty"`

	// Optional lets the call run when the ConfigMap or a key of Items is
	// missing (the volume lacks those files). Otherwise the call ends
	// InvalidSpec, naming what is missing.
	// +optional
	Optional *bool `json:"optional,omitempty"`
}

// SecretVolumeSource projects a Secret's keys as files, like a Pod's secret
// volume.
type SecretVolumeSource struct {
	// SecretName is the name of the Secret, in the call's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`

	// Items selects keys and the relative paths they are written to. When
	// empty every key becomes a file named after it.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(i, self.exists_one(j, j.path == i.path))",message="items: each path may be used once"
	Items []KeyToPath `json:"items,omitempty"`

	// DefaultMode is the permission bits of the files, 0644 when unset.
	// The files belong to the process's user and group, so 0400 or 0440
	// work for a call that is not root.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=511
	DefaultMode *int32 `json:"defaultMode,omitempty"`

	// Optional lets the call run when the Secret or a key of Items is
	// missing. Otherwise the call ends InvalidSpec, naming what is missing.
	// +optional
	Optional *bool `json:"optional,omitempty"`
}

// KeyToPath maps one key to a file of the volume.
// +kubebuilder:validation:XValidation:rule="!self.path.startsWith('/')",message="items: path must be relative"
// +kubebuilder:validation:XValidation:rule="!self.path.matches('(^|/)[.][.](/|$)')",message="items: path must not contain .. elements"
type KeyToPath struct {
	// Key of the ConfigMap or Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`

	// Path of the file, relative to the mount path; may contain
	// directories ("conf/app.yaml").
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Path string `json:"path"`

	// Mode is the permission bits of this file; the volume's defaultMode
	// when unset.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=511
	Mode *int32 `json:"mode,omitempty"`
}

// EmptyDirVolumeSource is a tmpfs. What the process writes there is memory
// charged to the call's memory limit, as for a Pod's emptyDir with medium
// Memory: writing past SizeLimit fails with ENOSPC, and never reaches the
// node's disk.
type EmptyDirVolumeSource struct {
	// SizeLimit is the size of the tmpfs. It must be at most
	// resources.memory; all emptyDir and scratch sizes together must fit in
	// the call's memory limit (checked by the node, against its default
	// when resources.memory is unset). Write it in canonical form ("64Mi",
	// not "67108864"): once the call is claimed, the spec's immutability
	// compares it as written, and a client that writes the call back in
	// canonical form would be refused.
	// +required
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('4Ki')) >= 0",message="sizeLimit must be at least 4Ki"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('64Gi')) <= 0",message="sizeLimit must be at most 64Gi"
	SizeLimit resource.Quantity `json:"sizeLimit"`
}

// Scratch is a writable tmpfs at /tmp (Fn's TmpFsSize).
type Scratch struct {
	// SizeLimit is the size of /tmp, counted against the memory limit like
	// an emptyDir's.
	// +required
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('4Ki')) >= 0",message="sizeLimit must be at least 4Ki"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('64Gi')) <= 0",message="sizeLimit must be at most 64Gi"
	SizeLimit resource.Quantity `json:"sizeLimit"`
}

// EnvVar is one environment variable of the process.
// +kubebuilder:validation:XValidation:rule="!(has(self.value) && has(self.valueFrom))",message="env: set either value or valueFrom, not both"
type EnvVar struct {
	// Name of the variable, e.g. LOG_LEVEL.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Name string `json:"name"`

	// Value of the variable. Leave both Value and ValueFrom unset for an empty
	// value.
	// +optional
	// +kubebuilder:validation:MaxLength=32768
	Value string `json:"value,omitempty"`

	// ValueFrom reads the value from a Secret or ConfigMap key in the call's
	// namespace when the call starts.
	// +optional
	ValueFrom *EnvVarSource `json:"valueFrom,omitempty"`
}

// EnvVarSource names the Secret or ConfigMap key an environment variable's
// value comes from.
// +kubebuilder:validation:XValidation:rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",message="valueFrom must set exactly one of secretKeyRef or configMapKeyRef"
type EnvVarSource struct {
	// SecretKeyRef selects a key of a Secret in the call's namespace.
	// +optional
	SecretKeyRef *corev1.SecretKeySelector `json:"secretKeyRef,omitempty"`

	// ConfigMapKeyRef selects a key of a ConfigMap in the call's namespace.
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`
}

// Input is the stdin of the process. Exactly one source must be set.
// Inline inputs over about 190 KiB need `kubectl create` or
// `kubectl apply --server-side`: client-side `kubectl apply` keeps a copy of
// the object in an annotation capped at 256 KiB.
// +kubebuilder:validation:XValidation:rule="[has(self.data), has(self.binaryData), has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1",message="input must set exactly one of data, binaryData, secretKeyRef or configMapKeyRef"
type Input struct {
	// Data is UTF-8 text fed to stdin as is, at most 1 MiB. Omit Input
	// altogether for an empty stdin.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1048576
	Data string `json:"data,omitempty"`

	// BinaryData is raw bytes fed to stdin, base64-encoded (standard
	// alphabet, padded) in YAML and JSON, at most 1 MiB once decoded.
	// +optional
	// +kubebuilder:validation:Format=""
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1398104
	// +kubebuilder:validation:Pattern=`^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$`
	BinaryData []byte `json:"binaryData,omitempty"`

	// SecretKeyRef feeds the value of a Secret key in the call's namespace.
	// +optional
	SecretKeyRef *corev1.SecretKeySelector `json:"secretKeyRef,omitempty"`

	// ConfigMapKeyRef feeds the value of a ConfigMap key in the call's
	// namespace (data or binaryData).
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`
}

// CallResources are the hard limits of the process. Quantities use the
// Kubernetes notation: memory "64Mi", "1Gi"; cpu "500m", "2".
type CallResources struct {
	// Memory is the memory limit; swap is not allowed (memory+swap = memory).
	// Exceeding it ends the call with reason OOMKilled. Between 4Mi and 64Gi.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('4Mi')) >= 0",message="memory must be at least 4Mi"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('64Gi')) <= 0",message="memory must be at most 64Gi"
	Memory *resource.Quantity `json:"memory,omitempty"`

	// CPU is the CPU limit in cores, enforced as a CFS quota: "500m" is half a
	// core. Between 1m and 64.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('1m')) >= 0",message="cpu must be at least 1m"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).compareTo(quantity('64')) <= 0",message="cpu must be at most 64"
	CPU *resource.Quantity `json:"cpu,omitempty"`

	// Pids is the most processes and threads the call may have at once.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=32768
	Pids *int64 `json:"pids,omitempty"`
}

// NetworkMode is the network namespace a call runs in.
// +kubebuilder:validation:Enum=none;pod;host
type NetworkMode string

const (
	// NetworkNone gives the process its own network namespace with only a
	// loopback interface.
	NetworkNone NetworkMode = "none"

	// NetworkPod gives the process a network namespace of its own attached
	// to the node's pod network through CNI, as a Pod's.
	NetworkPod NetworkMode = "pod"

	// NetworkHost shares the node's network namespace. A manager runs such
	// calls only when started with permission to.
	NetworkHost NetworkMode = "host"
)

// CallSecurityContext is the subset of a container security context a call
// may set. Privileged runs only on managers started with permission to.
type CallSecurityContext struct {
	// RunAsUser is the UID of the process; the image's USER when unset.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RunAsUser *int64 `json:"runAsUser,omitempty"`

	// RunAsGroup is the primary GID of the process; the image's when unset.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RunAsGroup *int64 `json:"runAsGroup,omitempty"`

	// ReadOnlyRootFilesystem mounts the image's filesystem read-only.
	// +optional
	ReadOnlyRootFilesystem *bool `json:"readOnlyRootFilesystem,omitempty"`

	// Privileged gives the process all capabilities and devices of the node.
	// +optional
	Privileged *bool `json:"privileged,omitempty"`
}

/*
Status is written only by the manager that claimed the call. Phase moves
forward only: Pending → Running → Succeeded | Failed. Reason and
Message say why a call ended where it did, in words meant for the user.
*/

// CallPhase is where a call is in its life.
// +kubebuilder:validation:Enum=Pending;Running;Succeeded;Failed
type CallPhase string

const (
	// PhasePending: the call waits for a node to claim it, or was claimed and
	// is being prepared (its image pulled, its container made).
	PhasePending CallPhase = "Pending"
	// PhaseRunning: the process has started.
	PhaseRunning CallPhase = "Running"
	// PhaseSucceeded: the process exited with code 0. Final.
	PhaseSucceeded CallPhase = "Succeeded"
	// PhaseFailed: the call ended any other way; Reason says how. Final.
	PhaseFailed CallPhase = "Failed"
)

// CallReason is a machine-readable, CamelCase cause of the current phase.
type CallReason string

const (
	// ReasonCompleted: the process exited with code 0.
	ReasonCompleted CallReason = "Completed"
	// ReasonError: the process exited with a non-zero code (status.exitCode)
	// or was killed by a signal it did not get from fnlet (status.signal).
	ReasonError CallReason = "Error"
	// ReasonOOMKilled: the kernel killed the process for exceeding
	// spec.resources.memory.
	ReasonOOMKilled CallReason = "OOMKilled"
	// ReasonTimedOut: spec.timeout (or the manager's default) expired.
	ReasonTimedOut CallReason = "TimedOut"
	// ReasonCancelled: spec.cancel was set to true.
	ReasonCancelled CallReason = "Cancelled"
	// ReasonImagePullFailed: the image could not be pulled; status.pullError
	// says why.
	ReasonImagePullFailed CallReason = "ImagePullFailed"
	// ReasonInvalidSpec: the spec passed admission but cannot run here, e.g. a
	// missing Secret key, an image without entrypoint and no command, or
	// network host on a manager that does not allow it.
	ReasonInvalidSpec CallReason = "InvalidSpec"
	// ReasonRuntimeError: containerd or the OCI runtime failed; not the
	// function's fault, so retried per spec.retries.
	ReasonRuntimeError CallReason = "RuntimeError"
	// ReasonNodeLost: the claiming node went away before the call finished.
	ReasonNodeLost CallReason = "NodeLost"
	// ReasonOutputLimitExceeded: the process wrote more stdout/stderr than the
	// manager keeps, and was killed.
	ReasonOutputLimitExceeded CallReason = "OutputLimitExceeded"
)

// PullError classifies why an image pull failed.
// +kubebuilder:validation:Enum=Unauthorized;NotFound;Unreachable;Other
type PullError string

const (
	// PullErrorUnauthorized: the registry refused the credentials (or their
	// absence); check spec.imagePullSecrets.
	PullErrorUnauthorized PullError = "Unauthorized"
	// PullErrorNotFound: the repository or tag does not exist, or the image is
	// absent with imagePullPolicy Never.
	PullErrorNotFound PullError = "NotFound"
	// PullErrorUnreachable: the registry could not be reached.
	PullErrorUnreachable PullError = "Unreachable"
	// PullErrorOther: any other pull failure; see status.message.
	PullErrorOther PullError = "Other"
)

// Condition types of a FunctionCall.
const (
	// ConditionClaimed is True once a node owns the call (status.nodeName).
	ConditionClaimed = "Claimed"
	// ConditionImageReady is True once the image is on the node.
	ConditionImageReady = "ImageReady"
	// ConditionStarted is True once the process has started.
	ConditionStarted = "Started"
	// ConditionFinished is True once the call reached Succeeded or Failed.
	ConditionFinished = "Finished"
)

// Reasons of a Claimed=False condition on a call waiting for a node.
const (
	// ReasonUnschedulable: no live fnlet node can take the call (the message
	// says why, per node); it stays Pending until one can.
	ReasonUnschedulable = "Unschedulable"
	// ReasonRequeuedNodeLost: the node that held the call was lost; the
	// attempt counts, and the call waits for another node.
	ReasonRequeuedNodeLost = "NodeLost"
)

// LabelFinished ("true") marks a finished call its node's manager is done
// with: the container is removed and no TTL is pending. Managers do not
// cache such calls, so their memory does not grow with the finished calls
// kept; users can select them (kubectl get fc -l fnlet.dev/finished=true).
// The manager sets it; on a new call (a finished call's YAML applied again)
// it is removed when the call is claimed.
const LabelFinished = "fnlet.dev/finished"

// FunctionCallStatus is what happened to the call, as seen by the node that
// claimed it.
type FunctionCallStatus struct {
	// Phase is where the call is in its life. Empty until a manager saw it.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!(oldSelf in ['Succeeded', 'Failed']) || self == oldSelf",message="phase cannot change once the call has finished"
	Phase CallPhase `json:"phase,omitempty"`

	// Reason is a CamelCase cause of the current phase, e.g. Completed, Error,
	// OOMKilled, TimedOut, Cancelled, ImagePullFailed.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason CallReason `json:"reason,omitempty"`

	// Message explains Reason in a sentence meant for the user.
	// +optional
	// +kubebuilder:validation:MaxLength=32768
	Message string `json:"message,omitempty"`

	// PullError classifies an image pull failure (reason ImagePullFailed).
	// +optional
	PullError PullError `json:"pullError,omitempty"`

	// ExitCode is the exit code of the process, once it exited.
	// +optional
	ExitCode *int32 `json:"exitCode,omitempty"`

	// Signal is the signal that ended the process, e.g. SIGKILL, if any.
	// +optional
	// +kubebuilder:validation:MaxLength=16
	Signal string `json:"signal,omitempty"`

	// NodeName is the node whose manager claimed the call. Set once.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName,omitempty"`

	// ContainerID is the containerd container ID of the current attempt.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	ContainerID string `json:"containerID,omitempty"`

	// Pool is the FunctionPool whose pre-started container ran the current
	// attempt; empty when it ran cold.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Pool string `json:"pool,omitempty"`

	// Attempts counts the runs started, retries included.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Attempts int32 `json:"attempts,omitempty"`

	// ClaimedAt is when a node claimed the call.
	// +optional
	ClaimedAt *metav1.Time `json:"claimedAt,omitempty"`

	// StartedAt is when the process started.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`

	// FinishedAt is when the call reached Succeeded or Failed.
	// +optional
	FinishedAt *metav1.Time `json:"finishedAt,omitempty"`

	// Stdout is the tail of what the process wrote to stdout.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	Stdout string `json:"stdout,omitempty"`

	// StdoutTruncated is true when Stdout holds only the tail of the output.
	// +optional
	StdoutTruncated bool `json:"stdoutTruncated,omitempty"`

	// Stderr is the tail of what the process wrote to stderr.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	Stderr string `json:"stderr,omitempty"`

	// StderrTruncated is true when Stderr holds only the tail of the output.
	// +optional
	StderrTruncated bool `json:"stderrTruncated,omitempty"`

	// LogDir is the directory on the node holding the full stdout and stderr
	// files, kept per the manager's retention policy.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	LogDir string `json:"logDir,omitempty"`

	// PodIP is the call's address on the pod network (network: pod).
	// +optional
	PodIP string `json:"podIP,omitempty"`

	// Usage is what the process consumed.
	// +optional
	Usage *Usage `json:"usage,omitempty"`

	// Conditions are the observations behind Phase: Claimed, ImageReady,
	// Started, Finished.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the metadata.generation the status was written for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// Usage is the resource consumption of a call, read from the container's
// cgroup.
type Usage struct {
	// PeakMemoryBytes is the highest memory use seen.
	// +optional
	PeakMemoryBytes int64 `json:"peakMemoryBytes,omitempty"`

	// CPUNanoseconds is the CPU time used, user and system.
	// +optional
	CPUNanoseconds int64 `json:"cpuNanoseconds,omitempty"`
}

/*
The immutability rules live on the root because they need both spec and
status: the spec is frozen from the moment status.nodeName is set. There is
one rule per spec field, so the error names the field that changed. Fields
are compared after normalising how they may be written (absent vs empty,
"90s" vs "1m30s", "0.5Gi" vs "512Mi"), because a Go client that reads a call
and writes it back re-serialises the spec in canonical form, and a finalizer
update or a cancel must not be refused for that. Equality of two optionals
(`self.spec.?x == oldSelf.spec.?x`) is not used: the apiserver estimates its
cost as unbounded and refuses the CRD. TestUnitImmutabilityRulesCoverSpec
fails when a spec field has no rule here.
*/

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=fc,categories=fnlet
// +kubebuilder:selectablefield:JSONPath=`.status.nodeName`
// +kubebuilder:selectablefield:JSONPath=`.spec.nodeName`
// +kubebuilder:selectablefield:JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`
// +kubebuilder:printcolumn:name="Exit",type=integer,JSONPath=`.status.exitCode`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="IP",type=string,JSONPath=`.status.podIP`,priority=1
// +kubebuilder:printcolumn:name="Started",type=date,JSONPath=`.status.startedAt`,priority=1
// +kubebuilder:printcolumn:name="Finished",type=date,JSONPath=`.status.finishedAt`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || self.spec.image == oldSelf.spec.image",fieldPath=`.spec.image`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.imagePullPolicy) == has(oldSelf.spec.imagePullPolicy) && (!has(self.spec.imagePullPolicy) || self.spec.imagePullPolicy == oldSelf.spec.imagePullPolicy)",fieldPath=`.spec.imagePullPolicy`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.imagePullSecrets) ? self.spec.imagePullSecrets : []) == (has(oldSelf.spec.imagePullSecrets) ? oldSelf.spec.imagePullSecrets : [])",fieldPath=`.spec.imagePullSecrets`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.command) ? self.spec.command : []) == (has(oldSelf.spec.command) ? oldSelf.spec.command : [])",fieldPath=`.spec.command`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.args) ? self.spec.args : []) == (has(oldSelf.spec.args) ? oldSelf.spec.args : [])",fieldPath=`.spec.args`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.env) ? self.spec.env : []).map(e, [e.name, has(e.value) ? e.value : '']) == (has(oldSelf.spec.env) ? oldSelf.spec.env : []).map(e, [e.name, has(e.value) ? e.value : '']) && (has(self.spec.env) ? self.spec.env : []).map(e, has(e.valueFrom) ? [e.valueFrom] : []) == (has(oldSelf.spec.env) ? oldSelf.spec.env : []).map(e, has(e.valueFrom) ? [e.valueFrom] : [])",fieldPath=`.spec.env`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.workingDir) ? self.spec.workingDir : '') == (has(oldSelf.spec.workingDir) ? oldSelf.spec.workingDir : '')",fieldPath=`.spec.workingDir`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.input) == has(oldSelf.spec.input) && (!has(self.spec.input) || self.spec.input == oldSelf.spec.input)",fieldPath=`.spec.input`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.timeout) == has(oldSelf.spec.timeout) && (!has(self.spec.timeout) || duration(self.spec.timeout) == duration(oldSelf.spec.timeout))",fieldPath=`.spec.timeout`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || self.spec.?resources.?memory.hasValue() == oldSelf.spec.?resources.?memory.hasValue() && (!self.spec.?resources.?memory.hasValue() || quantity(string(self.spec.resources.memory)) == quantity(string(oldSelf.spec.resources.memory)))",fieldPath=`.spec.resources.memory`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || self.spec.?resources.?cpu.hasValue() == oldSelf.spec.?resources.?cpu.hasValue() && (!self.spec.?resources.?cpu.hasValue() || quantity(string(self.spec.resources.cpu)) == quantity(string(oldSelf.spec.resources.cpu)))",fieldPath=`.spec.resources.cpu`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || self.spec.?resources.?pids.hasValue() == oldSelf.spec.?resources.?pids.hasValue() && (!self.spec.?resources.?pids.hasValue() || self.spec.resources.pids == oldSelf.spec.resources.pids)",fieldPath=`.spec.resources.pids`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.nodeName) ? self.spec.nodeName : '') == (has(oldSelf.spec.nodeName) ? oldSelf.spec.nodeName : '')",fieldPath=`.spec.nodeName`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.nodeSelector) ? self.spec.nodeSelector : {}) == (has(oldSelf.spec.nodeSelector) ? oldSelf.spec.nodeSelector : {})",fieldPath=`.spec.nodeSelector`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.network) == has(oldSelf.spec.network) && (!has(self.spec.network) || self.spec.network == oldSelf.spec.network)",fieldPath=`.spec.network`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.securityContext) == has(oldSelf.spec.securityContext) && (!has(self.spec.securityContext) || self.spec.securityContext == oldSelf.spec.securityContext)",fieldPath=`.spec.securityContext`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.ttlSecondsAfterFinished) == has(oldSelf.spec.ttlSecondsAfterFinished) && (!has(self.spec.ttlSecondsAfterFinished) || self.spec.ttlSecondsAfterFinished == oldSelf.spec.ttlSecondsAfterFinished)",fieldPath=`.spec.ttlSecondsAfterFinished`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.pool) ? self.spec.pool : '') == (has(oldSelf.spec.pool) ? oldSelf.spec.pool : '')",fieldPath=`.spec.pool`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.retries) == has(oldSelf.spec.retries) && (!has(self.spec.retries) || self.spec.retries == oldSelf.spec.retries)",fieldPath=`.spec.retries`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.volumes) ? self.spec.volumes : []).map(v, [v.name, v.mountPath]) == (has(oldSelf.spec.volumes) ? oldSelf.spec.volumes : []).map(v, [v.name, v.mountPath])",fieldPath=`.spec.volumes`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.volumes) ? self.spec.volumes : []).map(v, has(v.configMap) ? [v.configMap] : []) == (has(oldSelf.spec.volumes) ? oldSelf.spec.volumes : []).map(v, has(v.configMap) ? [v.configMap] : [])",fieldPath=`.spec.volumes`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.volumes) ? self.spec.volumes : []).map(v, has(v.secret) ? [v.secret] : []) == (has(oldSelf.spec.volumes) ? oldSelf.spec.volumes : []).map(v, has(v.secret) ? [v.secret] : [])",fieldPath=`.spec.volumes`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || (has(self.spec.volumes) ? self.spec.volumes : []).map(v, has(v.emptyDir) ? [v.emptyDir] : []) == (has(oldSelf.spec.volumes) ? oldSelf.spec.volumes : []).map(v, has(v.emptyDir) ? [v.emptyDir] : [])",fieldPath=`.spec.volumes`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"
// +kubebuilder:validation:XValidation:rule="oldSelf.?status.?nodeName.orValue('') == '' || has(self.spec.scratch) == has(oldSelf.spec.scratch) && (!has(self.spec.scratch) || quantity(string(self.spec.scratch.sizeLimit)) == quantity(string(oldSelf.spec.scratch.sizeLimit)))",fieldPath=`.spec.scratch`,message="spec is immutable once the call is claimed by a node (only spec.cancel may change)"

// FunctionCall runs a container image to completion on one fnlet node and
// reports its exit, output and resource use.
type FunctionCall struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is what to run.
	// +required
	Spec FunctionCallSpec `json:"spec"`

	// Status is what happened, written by the claiming node's manager.
	// +optional
	Status FunctionCallStatus `json:"status,omitempty"`
}

// IsFinished reports whether the call reached a final phase (Succeeded or
// Failed); nothing about it changes afterwards.
func (c *FunctionCall) IsFinished() bool {
	return c.Status.Phase == PhaseSucceeded || c.Status.Phase == PhaseFailed
}

// IsClaimed reports whether a node has claimed the call; from then on its
// spec is immutable except spec.cancel.
func (c *FunctionCall) IsClaimed() bool {
	return c.Status.NodeName != ""
}

// FunctionCallList is a list of FunctionCalls.
// +kubebuilder:object:root=true
type FunctionCallList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FunctionCall `json:"items"`
}

func init() {
	SchemeBuilder.Register(&FunctionCall{}, &FunctionCallList{})
}
