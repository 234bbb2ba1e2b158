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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

/*
A FunctionPool keeps containers of one image started ahead of the calls on
every fnlet node it selects, so that a call which fits one starts in a few
milliseconds instead of a full containerd create. Each pre-started container
runs exactly one call and is then removed like a cold call's container; the
pool starts its replacement in the background. A call uses a pool of its own
namespace when it fits it: the same image digest, user, read-only rootfs and
network, and limits within the pool's resources, which are the ceiling; the
call's own limits are applied when it takes the container. Any other call,
or a call that finds the pool empty, runs cold as before and is never failed
for it.
*/

// FunctionPoolSpec is the profile of a pool's containers and how many to
// keep ready on each node.
type FunctionPoolSpec struct {
	// Image is the image of the pool's containers. A call must name the same
	// image (resolved to the same digest) to use the pool. The pool follows
	// the digest: when the tag moves (imagePullPolicy Always), containers of
	// the old digest are replaced.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.matches('^(([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')",message="image must be an image reference such as registry.example.com/team/fn:v1 or fn@sha256:<digest> (lowercase repository path, no spaces)"
	Image string `json:"image"`

	// ImagePullPolicy says when a node pulls the image: IfNotPresent, Always
	// (re-resolved at every resync, so a moved tag refreshes the pool) or
	// Never.
	// +optional
	// +kubebuilder:default=IfNotPresent
	// +kubebuilder:validation:Enum=IfNotPresent;Always;Never
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Size is the number of ready containers each selected node keeps.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=64
	Size int32 `json:"size"`

	// Resources is the pool's limit class: each container is made with these
	// limits, and a call fits when each of its limits is within them (a call
	// without a limit the pool sets does not fit). Unset limits of the pool
	// match calls that set none either.
	// +optional
	Resources *CallResources `json:"resources,omitempty"`

	// Network is the network of the pool's containers: none, pod or host.
	// A pod-network pool's containers are attached before a call comes.
	// +optional
	// +kubebuilder:default=none
	Network NetworkMode `json:"network,omitempty"`

	// SecurityContext is the user and rootfs mode of the pool's containers.
	// Privileged pools do not exist: privileged calls always run cold.
	// +optional
	SecurityContext *PoolSecurityContext `json:"securityContext,omitempty"`

	// NodeSelector restricts the pool to nodes carrying all these labels.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
}

// PoolSecurityContext is the part of a call's security context a pool's
// containers are made with.
type PoolSecurityContext struct {
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
}

// FunctionPoolStatus holds one entry per node that serves the pool, each
// written by that node's manager alone (server-side apply, one field manager
// per node), at most every few seconds and never once per call.
type FunctionPoolStatus struct {
	// Nodes is the pool's state on each node that serves it.
	// +optional
	// +listType=map
	// +listMapKey=node
	// +kubebuilder:validation:MaxItems=5000
	Nodes []PoolNodeStatus `json:"nodes,omitempty"`
}

// PoolNodeStatus is a pool's state on one node.
type PoolNodeStatus struct {
	// Node is the node's name.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// Ready is the number of containers waiting for a call.
	Ready int32 `json:"ready"`
	// Target is the number the node keeps ready: the pool's size, or fewer
	// when the node's memory budget has no room for more.
	Target int32 `json:"target"`
	// Hits counts the calls this node ran in the pool's containers.
	// +optional
	Hits int64 `json:"hits,omitempty"`
	// Misses counts the calls that named the pool but ran cold, because no
	// container was ready or they did not fit.
	// +optional
	Misses int64 `json:"misses,omitempty"`
	// Digest is the image digest the node's containers run.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Digest string `json:"digest,omitempty"`
	// Message says why the node has fewer ready containers than its target,
	// e.g. an image pull error.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Message string `json:"message,omitempty"`
	// UpdatedAt is when the node last wrote this entry.
	// +optional
	UpdatedAt *metav1.Time `json:"updatedAt,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=fp,categories=fnlet
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.spec.size`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.nodes[*].ready`,description="ready containers, per node"
// +kubebuilder:printcolumn:name="Hits",type=string,JSONPath=`.status.nodes[*].hits`,description="calls run warm, per node"
// +kubebuilder:printcolumn:name="Misses",type=string,JSONPath=`.status.nodes[*].misses`,description="calls that named the pool and ran cold, per node"
// +kubebuilder:printcolumn:name="Nodes",type=string,JSONPath=`.status.nodes[*].node`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// FunctionPool keeps pre-started containers of one image ready on the nodes
// it selects, for calls of its namespace that fit them.
type FunctionPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec FunctionPoolSpec `json:"spec"`
	// +optional
	Status FunctionPoolStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// FunctionPoolList is a list of FunctionPools.
type FunctionPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FunctionPool `json:"items"`
}

func init() {
	SchemeBuilder.Register(&FunctionPool{}, &FunctionPoolList{})
}
