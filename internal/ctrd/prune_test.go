package ctrd

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPruneLogsRetention: logs of finished calls go by age and by count;
// a live call's logs are never touched.
func TestPruneLogsRetention(t *testing.T) {
	ioRoot := t.TempDir()
	rt := newTestRuntime(t, ioRoot)
	ctx := ctxTimeout(t, 60*time.Second)

	live := testCall(t, "-sleep", "30s")
	mustRun(t, rt, live)
	t.Cleanup(func() { _ = rt.Delete(ctxTimeout(t, 30*time.Second), live.UID) })

	now := time.Now()
	dead := map[string]time.Time{ // finished calls' IO dirs, by age
		"fnlet-old1":   now.Add(-3 * time.Hour),
		"fnlet-old2":   now.Add(-2 * time.Hour),
		"fnlet-young1": now.Add(-2 * time.Minute),
		"fnlet-young2": now.Add(-1 * time.Minute),
		"fnlet-young3": now.Add(-30 * time.Second),
	}
	for name, mod := range dead {
		dir := filepath.Join(ioRoot, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, stdoutFile), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(dir, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	// Keep 2, and nothing older than an hour: young3 and young2 stay.
	n, err := rt.PruneLogs(ctx, now.Add(-time.Hour), 2)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("removed %d dirs, want 3", n)
	}
	for name, wantKept := range map[string]bool{"fnlet-old1": false, "fnlet-old2": false, "fnlet-young1": false, "fnlet-young2": true, "fnlet-young3": true} {
		_, err := os.Stat(filepath.Join(ioRoot, name))
		if kept := err == nil; kept != wantKept {
			t.Errorf("%s kept=%v, want %v", name, kept, wantKept)
		}
	}
	if _, err := os.Stat(filepath.Join(ioRoot, ContainerID(live.UID), stdoutFile)); err != nil {
		t.Errorf("a live call's log was pruned: %v", err)
	}
}
