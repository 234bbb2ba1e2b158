package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
)

// errInvalidSpec marks failures that are the spec's fault (a missing Secret
// key, a forbidden setting): the call fails with InvalidSpec, no retry.
var errInvalidSpec = errors.New("invalid spec")

func invalidSpec(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInvalidSpec, fmt.Sprintf(format, args...))
}

// Limits are the manager's defaults and maxima for call resources.
type Limits struct {
	DefaultMemoryBytes int64
	MaxMemoryBytes     int64
	DefaultMilliCPU    int64
	MaxMilliCPU        int64
	DefaultPids        int64
	// Networks are the networks this node runs calls on (none always; pod
	// with --cni-conf-dir, host with --allow-host-network); nil: not said,
	// every network is taken for possible (an older manager's Lease).
	Networks []fnletv1.NetworkMode
}

// NamespaceReaderRole is the ClusterRole shipped in
// config/rbac/namespace_reader_role.yaml: `get` on Secrets and ConfigMaps.
// The manager's own ClusterRole has no Secret or ConfigMap access; a
// namespace whose calls use them opts in with a RoleBinding of this role to
// the manager's identity (GrantCommand).
const NamespaceReaderRole = "fnlet-namespace-reader"

// GrantCommand is the kubectl command that lets the manager, authenticated
// as user, read the Secrets and ConfigMaps of namespace ns. A service
// account's user name (system:serviceaccount:NS:NAME) becomes
// --serviceaccount=NS:NAME; an unknown user a placeholder to fill in.
func GrantCommand(ns, user string) string {
	subject := "--serviceaccount=<manager-namespace>:<manager-service-account>"
	if sa, ok := strings.CutPrefix(user, "system:serviceaccount:"); ok {
		subject = "--serviceaccount=" + sa
	} else if user != "" {
		subject = "--user=" + user
	}
	return fmt.Sprintf("kubectl create rolebinding fnlet-namespace-reader -n %s --clusterrole=%s %s", ns, NamespaceReaderRole, subject)
}

// inputResolver reads what a call references — Secrets and ConfigMaps — only
// in the call's own namespace, with direct GETs (no cluster-wide cache of
// Secrets, so the manager needs only `get` on them), and only where the
// namespace granted it (NamespaceReaderRole).
type inputResolver struct {
	reader client.Reader
	// managerUser is the manager's own user name, named in the RoleBinding
	// a forbidden read asks for; empty when unknown.
	managerUser string
}

// notGranted is the InvalidSpec error of a read the manager is not allowed:
// the call's namespace has not bound NamespaceReaderRole to the manager.
func (ir inputResolver) notGranted(what, ns string) error {
	return invalidSpec("%s: the fnlet manager may not read Secrets or ConfigMaps in namespace %s, which has not opted in; "+
		"to allow it, bind the ClusterRole %s in that namespace: %s", what, ns, NamespaceReaderRole, GrantCommand(ns, ir.managerUser))
}

// buildCall turns a FunctionCall into the runtime's Call plus the registry
// logins from its imagePullSecrets.
func (ir inputResolver) buildCall(ctx context.Context, fc *fnletv1.FunctionCall, lim Limits) (ctrd.Call, ctrd.RegistryAuth, error) {
	spec := &fc.Spec
	call := ctrd.Call{
		UID:         string(fc.UID),
		Namespace:   fc.Namespace,
		Name:        fc.Name,
		Image:       spec.Image,
		Command:     spec.Command,
		Args:        spec.Args,
		WorkingDir:  spec.WorkingDir,
		HostNetwork: spec.Network == fnletv1.NetworkHost,
		PodNetwork:  spec.Network == fnletv1.NetworkPod,
	}
	for _, e := range spec.Env {
		v := e.Value
		if e.ValueFrom != nil {
			var err error
			if v, err = ir.keyValue(ctx, fc.Namespace, e.ValueFrom.SecretKeyRef, e.ValueFrom.ConfigMapKeyRef); err != nil {
				return ctrd.Call{}, nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		call.Env = append(call.Env, e.Name+"="+v)
	}
	if in := spec.Input; in != nil {
		switch {
		case in.Data != "":
			call.Input = []byte(in.Data)
		case len(in.BinaryData) > 0:
			call.Input = in.BinaryData
		default:
			v, err := ir.keyValue(ctx, fc.Namespace, in.SecretKeyRef, in.ConfigMapKeyRef)
			if err != nil {
				return ctrd.Call{}, nil, fmt.Errorf("input: %w", err)
			}
			call.Input = []byte(v)
		}
	}
	call.MemoryBytes, call.MilliCPU, call.Pids = lim.DefaultMemoryBytes, lim.DefaultMilliCPU, lim.DefaultPids
	if r := spec.Resources; r != nil {
		if r.Memory != nil {
			call.MemoryBytes = r.Memory.Value()
		}
		if r.CPU != nil {
			call.MilliCPU = r.CPU.MilliValue()
		}
		if r.Pids != nil {
			call.Pids = *r.Pids
		}
	}
	if lim.MaxMemoryBytes > 0 && call.MemoryBytes > lim.MaxMemoryBytes {
		return ctrd.Call{}, nil, invalidSpec("resources.memory %d bytes is over this node's maximum of %d", call.MemoryBytes, lim.MaxMemoryBytes)
	}
	if lim.MaxMilliCPU > 0 && call.MilliCPU > lim.MaxMilliCPU {
		return ctrd.Call{}, nil, invalidSpec("resources.cpu %dm is over this node's maximum of %dm", call.MilliCPU, lim.MaxMilliCPU)
	}
	if sc := spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			u := &ctrd.User{UID: *sc.RunAsUser, GID: *sc.RunAsUser}
			if sc.RunAsGroup != nil {
				u.GID = *sc.RunAsGroup
			}
			call.User = u
		}
		call.ReadOnlyRootfs = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		call.Privileged = sc.Privileged != nil && *sc.Privileged
	}
	auth := ctrd.RegistryAuth{}
	for _, ref := range spec.ImagePullSecrets {
		var s corev1.Secret
		if err := ir.reader.Get(ctx, types.NamespacedName{Namespace: fc.Namespace, Name: ref.Name}, &s); err != nil {
			if apierrors.IsNotFound(err) {
				return ctrd.Call{}, nil, invalidSpec("imagePullSecret %q not found in namespace %s", ref.Name, fc.Namespace)
			}
			if apierrors.IsForbidden(err) {
				return ctrd.Call{}, nil, ir.notGranted(fmt.Sprintf("imagePullSecret %q", ref.Name), fc.Namespace)
			}
			return ctrd.Call{}, nil, fmt.Errorf("get imagePullSecret %s: %w", ref.Name, err)
		}
		if s.Type != corev1.SecretTypeDockerConfigJson {
			return ctrd.Call{}, nil, invalidSpec("imagePullSecret %q has type %q, want %s", ref.Name, s.Type, corev1.SecretTypeDockerConfigJson)
		}
		a, err := ctrd.ParseDockerConfigJSON(s.Data[corev1.DockerConfigJsonKey])
		if err != nil {
			return ctrd.Call{}, nil, invalidSpec("imagePullSecret %q: %v", ref.Name, err)
		}
		for host, c := range a {
			auth[host] = c
		}
	}
	return call, auth, nil
}

func (ir inputResolver) keyValue(ctx context.Context, ns string, sec *corev1.SecretKeySelector, cm *corev1.ConfigMapKeySelector) (string, error) {
	switch {
	case sec != nil:
		var s corev1.Secret
		if err := ir.reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: sec.Name}, &s); err != nil {
			return "", ir.missingRef(err, "Secret", ns, sec.Name, sec.Optional)
		}
		v, ok := s.Data[sec.Key]
		if !ok {
			if sec.Optional != nil && *sec.Optional {
				return "", nil
			}
			return "", invalidSpec("Secret %s/%s has no key %q", ns, sec.Name, sec.Key)
		}
		return string(v), nil
	case cm != nil:
		var c corev1.ConfigMap
		if err := ir.reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: cm.Name}, &c); err != nil {
			return "", ir.missingRef(err, "ConfigMap", ns, cm.Name, cm.Optional)
		}
		if v, ok := c.Data[cm.Key]; ok {
			return v, nil
		}
		if v, ok := c.BinaryData[cm.Key]; ok {
			return string(v), nil
		}
		if cm.Optional != nil && *cm.Optional {
			return "", nil
		}
		return "", invalidSpec("ConfigMap %s/%s has no key %q", ns, cm.Name, cm.Key)
	}
	return "", invalidSpec("no value source")
}

// missingRef maps a failed GET of a referenced object: not found is the
// spec's fault unless optional; forbidden is the namespace's missing opt-in
// (even for an optional reference: the manager cannot tell whether the
// object exists), never a bare 403.
func (ir inputResolver) missingRef(err error, kind, ns, name string, optional *bool) error {
	if apierrors.IsNotFound(err) {
		if optional != nil && *optional {
			return nil
		}
		return invalidSpec("%s %s/%s not found", kind, ns, name)
	}
	if apierrors.IsForbidden(err) {
		return ir.notGranted(fmt.Sprintf("%s %s/%s is not readable", kind, ns, name), ns)
	}
	return fmt.Errorf("get %s %s/%s: %w", kind, ns, name, err)
}

// commandWarning returns a warning when the executable (command[0]) holds
// whitespace: the classic `command: ["sh -c echo"]` mistake. Later elements
// may well contain spaces (`["sh", "-c", "echo hi"]`).
func commandWarning(fc *fnletv1.FunctionCall) string {
	if len(fc.Spec.Command) > 0 && strings.ContainsAny(fc.Spec.Command[0], " \t\n") {
		return fmt.Sprintf("command[0] %q contains whitespace: each element is one argv word, the shell does not split it", fc.Spec.Command[0])
	}
	return ""
}
