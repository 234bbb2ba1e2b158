package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/go-logr/logr"
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
	ctx = withoutBodyLogs(ctx)
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
	for _, v := range spec.Volumes {
		cv, err := ir.volume(ctx, fc.Namespace, v)
		if err != nil {
			return ctrd.Call{}, nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		call.Volumes = append(call.Volumes, cv)
	}
	if spec.Scratch != nil {
		call.ScratchBytes = spec.Scratch.SizeLimit.Value()
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

// maxReadVerbosity caps the verbosity of the logger that client-go finds
// in the context of inputResolver's reads: from V(8) on it logs request
// and response bodies, and a Secret's body is its data. A manager run with
// --zap-log-level=8 or more would otherwise log every Secret a call uses
// (TestSecretNeverLeaks).
const maxReadVerbosity = 7

func withoutBodyLogs(ctx context.Context) context.Context {
	sink := logr.FromContextOrDiscard(ctx).GetSink()
	if sink == nil {
		return ctx
	}
	return logr.NewContext(ctx, logr.New(cappedSink{LogSink: sink, max: maxReadVerbosity}))
}

// cappedSink is a LogSink that drops messages above verbosity max.
type cappedSink struct {
	logr.LogSink
	max int
}

func (c cappedSink) Enabled(level int) bool { return level <= c.max && c.LogSink.Enabled(level) }

func (c cappedSink) WithValues(kv ...any) logr.LogSink {
	return cappedSink{LogSink: c.LogSink.WithValues(kv...), max: c.max}
}

func (c cappedSink) WithName(name string) logr.LogSink {
	return cappedSink{LogSink: c.LogSink.WithName(name), max: c.max}
}

// defaultFileMode is the mode of a volume's files when the call sets none,
// as for a Pod's configMap and secret volumes.
const defaultFileMode = 0o644

// volume resolves one volume: an emptyDir's size, or the files of a
// ConfigMap or Secret of the call's namespace, read like env and input
// (direct GETs, only where the namespace opted in). A missing object or
// key fails the call InvalidSpec naming it, unless the volume is optional;
// no error ever carries the data.
func (ir inputResolver) volume(ctx context.Context, ns string, v fnletv1.Volume) (ctrd.Volume, error) {
	out := ctrd.Volume{Name: v.Name, MountPath: v.MountPath}
	switch {
	case v.EmptyDir != nil:
		out.TmpfsBytes = v.EmptyDir.SizeLimit.Value()
		return out, nil
	case v.ConfigMap != nil:
		src := v.ConfigMap
		var c corev1.ConfigMap
		if err := ir.reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: src.Name}, &c); err != nil {
			if err := ir.missingRef(err, "ConfigMap", ns, src.Name, src.Optional); err != nil {
				return ctrd.Volume{}, err
			}
			return out, nil // optional and absent: an empty volume
		}
		data := make(map[string][]byte, len(c.Data)+len(c.BinaryData))
		for k, d := range c.Data {
			data[k] = []byte(d)
		}
		for k, d := range c.BinaryData {
			data[k] = d
		}
		files, err := projectFiles(data, src.Items, src.DefaultMode, src.Optional, "ConfigMap", ns, src.Name)
		out.Files = files
		return out, err
	case v.Secret != nil:
		src := v.Secret
		var s corev1.Secret
		if err := ir.reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: src.SecretName}, &s); err != nil {
			if err := ir.missingRef(err, "Secret", ns, src.SecretName, src.Optional); err != nil {
				return ctrd.Volume{}, err
			}
			return out, nil
		}
		files, err := projectFiles(s.Data, src.Items, src.DefaultMode, src.Optional, "Secret", ns, src.SecretName)
		out.Files = files
		return out, err
	}
	return ctrd.Volume{}, invalidSpec("no volume source")
}

// projectFiles turns an object's keys into files, like the kubelet's
// projection: every key named after itself, or only items at their paths.
func projectFiles(data map[string][]byte, items []fnletv1.KeyToPath, defaultMode *int32, optional *bool, kind, ns, name string) ([]ctrd.File, error) {
	mode := os.FileMode(defaultFileMode)
	if defaultMode != nil {
		mode = os.FileMode(*defaultMode) & os.ModePerm
	}
	if len(items) == 0 {
		keys := slices.Sorted(maps.Keys(data))
		files := make([]ctrd.File, 0, len(keys))
		for _, k := range keys {
			files = append(files, ctrd.File{Path: k, Data: data[k], Mode: mode})
		}
		return files, nil
	}
	files := make([]ctrd.File, 0, len(items))
	for _, it := range items {
		d, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return nil, invalidSpec("%s %s/%s has no key %q", kind, ns, name, it.Key)
		}
		m := mode
		if it.Mode != nil {
			m = os.FileMode(*it.Mode) & os.ModePerm
		}
		files = append(files, ctrd.File{Path: it.Path, Data: d, Mode: m})
	}
	return files, nil
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
