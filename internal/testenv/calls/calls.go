// Package calls holds the FunctionCall helpers the integration, chaos and
// e2e suites share, in the manner of Kueue's test/util: build a call, create
// it, wait for a phase (on a watch: the test wakes on the status change, it
// does not sleep) and check its outcome.
//
//	c := calls.Env{Client: k8s}
//	key := c.Create(t, calls.Local("ok", ns, node).Args("-exit", "3").Obj())
//	fc := c.WaitFinished(t, key, 30*time.Second)
//	calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonError, Exit: ptr.To[int32](3)}.Expect(t, fc)
package calls

import (
	"context"
	"errors"
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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

// Local is a call of the test image (already on the node: pull policy
// Never) bound to node ("" leaves it to whichever manager claims it).
func Local(name, ns, node string) *utiltesting.FunctionCallWrapper {
	return utiltesting.MakeFunctionCall(name, ns).ImagePullPolicy(corev1.PullNever).NodeName(node)
}

// Env is a suite's API access.
type Env struct {
	Client client.WithWatch
	// Diagnose, when set, is appended to the message of a wait that timed
	// out (e2e: the manager pods' log tail).
	Diagnose func() string
}

func (e Env) diagnose() string {
	if e.Diagnose == nil {
		return ""
	}
	return "\n" + e.Diagnose()
}

// Create creates fc and returns its key; the test fails if it cannot.
func (e Env) Create(t testing.TB, fc *fnletv1.FunctionCall) types.NamespacedName {
	t.Helper()
	if err := e.Client.Create(context.Background(), fc); err != nil {
		t.Fatalf("create %s: %v", fc.Name, err)
	}
	return client.ObjectKeyFromObject(fc)
}

// CreateRetrying creates fc, retrying for up to timeout while the
// apiserver is away (the chaos suite stops it); AlreadyExists fails.
func (e Env) CreateRetrying(t testing.TB, fc *fnletv1.FunctionCall, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := e.Client.Create(ctx, fc)
		if err == nil {
			return fc
		}
		if apierrors.IsAlreadyExists(err) || !retryAfter(ctx, 200*time.Millisecond) {
			t.Fatalf("create %s: %v", fc.Name, err)
		}
	}
}

// retryAfter waits d before another attempt at an apiserver that did not
// answer (there is no signal to wait for); false once ctx is done.
func retryAfter(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// Namespace creates a namespace named prefix-<random> and returns its name.
func (e Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// WaitFor returns the call once cond holds; the test fails after timeout
// with the last status seen.
func (e Env) WaitFor(t testing.TB, key types.NamespacedName, timeout time.Duration, what string, cond func(*fnletv1.FunctionCall) bool) *fnletv1.FunctionCall {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	fc, err := e.until(ctx, key, func(fc *fnletv1.FunctionCall) bool { return fc != nil && cond(fc) })
	if err != nil {
		t.Fatalf("%s: not %s after %s; last status %+v (%v)%s", key, what, timeout, fc.Status, err, e.diagnose())
	}
	return fc
}

// WaitFinished waits for Succeeded or Failed.
func (e Env) WaitFinished(t testing.TB, key types.NamespacedName, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	return e.WaitFor(t, key, timeout, "finished", (*fnletv1.FunctionCall).IsFinished)
}

// WaitRunning waits for Running, or a final phase: a test that needs
// Running checks the phase it gets.
func (e Env) WaitRunning(t testing.TB, key types.NamespacedName, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	return e.WaitFor(t, key, timeout, "running", func(fc *fnletv1.FunctionCall) bool {
		return fc.Status.Phase == fnletv1.PhaseRunning || fc.IsFinished()
	})
}

// WaitReleased waits until the manager dropped its finalizer (the
// container is gone).
func (e Env) WaitReleased(t testing.TB, key types.NamespacedName, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	return e.WaitFor(t, key, timeout, "without finalizer", func(fc *fnletv1.FunctionCall) bool { return len(fc.Finalizers) == 0 })
}

// WaitGone waits until the call no longer exists.
func (e Env) WaitGone(t testing.TB, key types.NamespacedName, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if fc, err := e.until(ctx, key, func(fc *fnletv1.FunctionCall) bool { return fc == nil }); err != nil {
		t.Fatalf("%s: still there %s after delete; last status %+v (%v)%s", key, timeout, fc.Status, err, e.diagnose())
	}
}

// until reads the call and then watches it from the version read, until
// cond (given nil while the call does not exist) holds. A watch that breaks
// (apiserver restarted, event history compacted) is resumed by reading
// again. It returns the last version seen and ctx's error if cond never held.
func (e Env) until(ctx context.Context, key types.NamespacedName, cond func(*fnletv1.FunctionCall) bool) (*fnletv1.FunctionCall, error) {
	last := &fnletv1.FunctionCall{}
	byName := client.MatchingFields{"metadata.name": key.Name}
	for {
		var list fnletv1.FunctionCallList
		err := e.Client.List(ctx, &list, client.InNamespace(key.Namespace), byName)
		if err == nil {
			var cur *fnletv1.FunctionCall
			if len(list.Items) == 1 {
				cur, last = &list.Items[0], &list.Items[0]
			}
			if cond(cur) {
				return last, nil
			}
			err = e.watch(ctx, key, list.ResourceVersion, &last, cond)
			if err == nil {
				return last, nil
			}
		}
		if ctx.Err() != nil || !retryAfter(ctx, 100*time.Millisecond) {
			return last, errors.Join(ctx.Err(), err)
		}
	}
}

var errWatchEnded = errors.New("watch ended")

// watch follows the call from resourceVersion rv; nil once cond held.
func (e Env) watch(ctx context.Context, key types.NamespacedName, rv string, last **fnletv1.FunctionCall, cond func(*fnletv1.FunctionCall) bool) error {
	w, err := e.Client.Watch(ctx, &fnletv1.FunctionCallList{}, client.InNamespace(key.Namespace),
		client.MatchingFields{"metadata.name": key.Name}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}})
	if err != nil {
		return err
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		fc, ok := ev.Object.(*fnletv1.FunctionCall)
		switch {
		case ev.Type == watch.Error:
			return fmt.Errorf("watch: %v", apierrors.FromObject(ev.Object))
		case !ok:
			continue
		case ev.Type == watch.Deleted:
			*last = fc
			if cond(nil) {
				return nil
			}
		default:
			*last = fc
			if cond(fc) {
				return nil
			}
		}
	}
	return errWatchEnded
}

// Outcome is what a call's final status must say. Unset fields are not
// checked.
type Outcome struct {
	Phase  fnletv1.CallPhase
	Reason fnletv1.CallReason
	Exit   *int32
	// ExitIn, when set, lists the acceptable exit codes.
	ExitIn []int32
	Stdout *string
	Stderr *string
	// Log is the exact content of the full stdout file on the node
	// (checked when Check is given the manager's --log-dir).
	Log *string
	// Message must contain this, when set.
	Message string
}

// Expect fails the test unless fc's status matches o.
func (o Outcome) Expect(t testing.TB, fc *fnletv1.FunctionCall) {
	t.Helper()
	if bad := o.Check(fc, ""); len(bad) > 0 {
		t.Fatal(strings.Join(bad, "\n"))
	}
}

// Check compares a final status with o and returns what differs, as one
// line naming the call (none when it matches); logDir is the manager's
// --log-dir ("" skips the full-log check).
func (o Outcome) Check(fc *fnletv1.FunctionCall, logDir string) []string {
	var bad []string
	st := fc.Status
	if st.Phase != o.Phase || st.Reason != o.Reason {
		bad = append(bad, fmt.Sprintf("phase/reason %s/%s (%q), want %s/%s", st.Phase, st.Reason, st.Message, o.Phase, o.Reason))
	}
	if o.Exit != nil && (st.ExitCode == nil || *st.ExitCode != *o.Exit) {
		bad = append(bad, fmt.Sprintf("exit code %s, want %d", ExitOf(fc), *o.Exit))
	}
	if len(o.ExitIn) > 0 && (st.ExitCode == nil || !slices.Contains(o.ExitIn, *st.ExitCode)) {
		bad = append(bad, fmt.Sprintf("exit code %s, want one of %v", ExitOf(fc), o.ExitIn))
	}
	if o.Stdout != nil && st.Stdout != *o.Stdout {
		bad = append(bad, fmt.Sprintf("status stdout %q, want %q", Clip(st.Stdout), Clip(*o.Stdout)))
	}
	if o.Stderr != nil && st.Stderr != *o.Stderr {
		bad = append(bad, fmt.Sprintf("status stderr %q, want %q", Clip(st.Stderr), Clip(*o.Stderr)))
	}
	if o.Message != "" && !strings.Contains(st.Message, o.Message) {
		bad = append(bad, fmt.Sprintf("message %q does not say %q", st.Message, o.Message))
	}
	if o.Log != nil && logDir != "" {
		b, err := os.ReadFile(filepath.Join(logDir, ctrd.ContainerID(string(fc.UID)), "stdout"))
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("full log: %v", err))
		case string(b) != *o.Log:
			bad = append(bad, fmt.Sprintf("full log %q, want %q (exactly once)", Clip(string(b)), Clip(*o.Log)))
		}
	}
	if len(bad) > 0 {
		return []string{fmt.Sprintf("%s/%s: %s", fc.Namespace, fc.Name, strings.Join(bad, "; "))}
	}
	return nil
}

// ExitOf is the call's exit code as text, "none" without one.
func ExitOf(fc *fnletv1.FunctionCall) string {
	if fc.Status.ExitCode == nil {
		return "none"
	}
	return fmt.Sprint(*fc.Status.ExitCode)
}

// Clip shortens long output for a message.
func Clip(s string) string {
	if len(s) > 200 {
		return s[:100] + "..." + s[len(s)-100:]
	}
	return s
}
