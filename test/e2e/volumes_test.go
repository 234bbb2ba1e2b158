package e2e

import (
	"path/filepath"
	"runtime"
	"testing"
	"time"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// TestVolumeSampleOnCluster: config/samples/namespace_volumes.yaml, applied
// as it is, mounts a ConfigMap and a Secret (one file 0400, given to
// runAsUser 1000) through the DaemonSet's manager, which holds no
// capability but CAP_CHOWN.
func TestVolumeSampleOnCluster(t *testing.T) {
	requireCluster(t)
	_, file, _, _ := runtime.Caller(0)
	sample := filepath.Join(filepath.Dir(file), "..", "..", "config", "samples", "namespace_volumes.yaml")
	const ns = "fnlet-sample-volumes"
	t.Cleanup(func() { _, _ = kubectlRaw("", "delete", "namespace", ns, "--wait=false") })
	if out, err := kubectlRaw("", "apply", "-f", sample); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", sample, err, out)
	}
	fc := waitCallIn(t, ns, "read-config", 60*time.Second)
	want := "level: debug\nretries: 3\n400 1000:1000 12 bytes /var/run/secrets/api/token\n"
	if fc.Status.Phase != fnletv1.PhaseSucceeded || fc.Status.Stdout != want {
		t.Fatalf("%s %s %q, stdout %q, want %q", fc.Status.Phase, fc.Status.Reason, fc.Status.Message, fc.Status.Stdout, want)
	}
}
