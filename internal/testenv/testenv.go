// Package testenv decides what a test does when a real component it needs
// (containerd, kube-apiserver, a registry) is not there.
package testenv

import (
	"os"
	"testing"
)

// RequireEnv is set by hack/test.sh (`make test`, CI): there, every daemon
// is started, so a missing one is a failure, never a silent skip.
const RequireEnv = "FNLET_REQUIRE_DAEMONS"

// Missing skips the test with the reason printed — or fails it when the
// suite runs with RequireEnv set.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("required component missing ("+RequireEnv+" is set): "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}
