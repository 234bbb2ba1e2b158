package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// TestLatencyApplyToSucceeded measures, on one node, the time from
// `kubectl apply` to the object being seen Succeeded, for a FunctionCall and
// for a plain Pod (restartPolicy Never) running the same image and args.
// A measurement, not an assertion: it logs both p50s and their ratio.
func TestLatencyApplyToSucceeded(t *testing.T) {
	requireCluster(t)
	runs := 20
	if v, err := strconv.Atoi(envOr("FNLET_E2E_LATENCY_RUNS", "20")); err == nil && v > 0 {
		runs = v
	}
	node := strings.Fields(kubectl(t, "-n", systemNamespace, "get", "pods", "-l", managerSelector,
		"--field-selector", "status.phase=Running", "-o", "jsonpath={.items[*].spec.nodeName}"))
	if len(node) == 0 {
		t.Fatal("no running manager pod")
	}
	args := []string{"-stdout-text", "x"}
	fc := func(name string) time.Duration {
		return applyUntilSucceeded(t, &fnletv1.FunctionCallList{}, name, fcYAML(name, args, "nodeName: "+node[0]), func(o client.Object) (bool, error) {
			c := o.(*fnletv1.FunctionCall)
			if c.Status.Phase == fnletv1.PhaseFailed {
				return false, fmt.Errorf("call %s failed: %s: %s", name, c.Status.Reason, c.Status.Message)
			}
			return c.Status.Phase == fnletv1.PhaseSucceeded, nil
		})
	}
	pod := func(name string) time.Duration {
		return applyUntilSucceeded(t, &corev1.PodList{}, name, podYAML(name, node[0], args), func(o client.Object) (bool, error) {
			p := o.(*corev1.Pod)
			if p.Status.Phase == corev1.PodFailed {
				return false, fmt.Errorf("pod %s failed: %s", name, p.Status.Message)
			}
			return p.Status.Phase == corev1.PodSucceeded, nil
		})
	}
	// Warm-up, not counted: the first of each may pay one-off costs.
	t.Logf("warm-up on node %s: FunctionCall %s, Pod %s", node[0], fc("lat-fc-warm").Round(time.Millisecond), pod("lat-pod-warm").Round(time.Millisecond))
	var fcs, pods []time.Duration
	for i := range runs {
		// Alternate which goes first, so neither always follows the other.
		if i%2 == 0 {
			fcs = append(fcs, fc(fmt.Sprintf("lat-fc-%02d", i)))
			pods = append(pods, pod(fmt.Sprintf("lat-pod-%02d", i)))
		} else {
			pods = append(pods, pod(fmt.Sprintf("lat-pod-%02d", i)))
			fcs = append(fcs, fc(fmt.Sprintf("lat-fc-%02d", i)))
		}
	}
	fp, pp := quantile(fcs, 0.5), quantile(pods, 0.5)
	t.Logf("apply→Succeeded over %d runs on node %s (kubectl apply included, watch-observed):", runs, node[0])
	t.Logf("  FunctionCall p50 %s  p90 %s  min %s  max %s", fp, quantile(fcs, 0.9), quantile(fcs, 0), quantile(fcs, 1))
	t.Logf("  Pod          p50 %s  p90 %s  min %s  max %s", pp, quantile(pods, 0.9), quantile(pods, 0), quantile(pods, 1))
	t.Logf("  ratio Pod/FunctionCall at p50: %.2fx", float64(pp)/float64(fp))
}

// applyUntilSucceeded watches the object named name (list is its list
// type), runs kubectl apply of yaml, and returns the time from just before
// the apply until done reports the object finished.
func applyUntilSucceeded(t *testing.T, list client.ObjectList, name, yaml string, done func(client.Object) (bool, error)) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Watch first, so no transition can be missed.
	w, err := env.k8s.Watch(ctx, list, client.InNamespace(env.ns), client.MatchingFields{"metadata.name": name})
	if err != nil {
		t.Fatalf("watch %s: %v", name, err)
	}
	defer w.Stop()
	start := time.Now()
	apply(t, yaml)
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			t.Fatalf("watch %s: %v", name, ev.Object)
		}
		o, ok := ev.Object.(client.Object)
		if !ok || (ev.Type != watch.Added && ev.Type != watch.Modified) {
			continue
		}
		fin, err := done(o)
		if err != nil {
			t.Fatal(err)
		}
		if fin {
			return time.Since(start)
		}
	}
	t.Fatalf("%s: not Succeeded within 2m of kubectl apply (watch ended: %v)", name, ctx.Err())
	return 0
}

// quantile of ds by the nearest-rank method (q=0: min, q=1: max).
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	i = max(0, min(len(s)-1, i))
	return s[i].Round(time.Millisecond)
}
