package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
	utiltesting "github.com/fnlet/fnlet/internal/testing"
)

const busyboxImage = "localhost/fnlet/busybox:v1"

// shell is a call of busybox running script with sh -c.
func shell(name, ns, node string, script ...string) *utiltesting.FunctionCallWrapper {
	return call(name, ns, node).Image(busyboxImage).Command("/bin/sh", "-c", strings.Join(script, "; "))
}

// mountsOf lists the node's mounts (mountinfo lines) that name dir.
func mountsOf(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if dir != "" && strings.Contains(line, dir) {
			out = append(out, line)
		}
	}
	return out
}

// expectNothingLeft checks that a released call left no volume files and
// no mount on the node.
func expectNothingLeft(t *testing.T, fc *fnletv1.FunctionCall) {
	t.Helper()
	if fc.Status.LogDir == "" {
		t.Fatalf("no status.logDir")
	}
	if _, err := os.Stat(filepath.Join(fc.Status.LogDir, "volumes")); !os.IsNotExist(err) {
		t.Errorf("volume files left in %s: stat says %v", fc.Status.LogDir, err)
	}
	if m := mountsOf(t, fc.Status.LogDir); len(m) > 0 {
		t.Errorf("mounts left on the node for the call:\n%s", strings.Join(m, "\n"))
	}
}

// TestVolumes: ConfigMap and Secret files with items and modes, emptyDir
// sizes, a scratch /tmp on a read-only root, and the failures a user must
// be told about, through the manager on a real containerd.
func TestVolumes(t *testing.T) {
	requireEnv(t)
	const node = "it-volumes"
	startManager(t, node, t.TempDir())
	ns := newNamespace(t)
	ctx := context.Background()
	if err := kubeapi.GrantNamespace(ctx, env.k8s, ns); err != nil {
		t.Fatal(err)
	}
	const token = "vol-s3cret-token"
	for _, obj := range []ctrlclient.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns},
			Data:       map[string]string{"app.conf": "level=debug\n", "other": "x"},
			BinaryData: map[string][]byte{"blob": {0, 1, 2}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: ns}, StringData: map[string]string{"token": token}},
	} {
		if err := env.k8s.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256([]byte(token))

	t.Run("configMap and secret files, items and modes, as a non-root user on a read-only root", func(t *testing.T) {
		fc := waitFinished(t, create(t, shell("files", ns, node,
			"stat -c '%a %u:%g %n' /etc/app/app.conf /etc/app/blob /etc/app/other /run/creds/auth/token",
			"cat /etc/app/app.conf",
			"sha256sum /run/creds/auth/token | cut -d' ' -f1",
			"ls /run/creds",
			"touch /etc/app/new 2>/dev/null && echo volume-writable || echo volume-read-only",
			"touch /new 2>/dev/null && echo root-writable || echo root-read-only",
			"echo scratch > /tmp/s && cat /tmp/s",
		).RunAs(1000, 1000).ReadOnlyRootFilesystem().Scratch("1Mi").
			ConfigMapVolume("app", "/etc/app", "app").DefaultMode(0o640).
			SecretVolume("creds", "/run/creds", "creds", utiltesting.Item("token", "auth/token", 0o400)).Obj()), 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		want := strings.Join([]string{
			"640 1000:1000 /etc/app/app.conf",
			"640 1000:1000 /etc/app/blob",
			"640 1000:1000 /etc/app/other",
			"400 1000:1000 /run/creds/auth/token",
			"level=debug",
			hex.EncodeToString(sum[:]),
			"auth",
			"volume-read-only",
			"root-read-only",
			"scratch",
		}, "\n") + "\n"
		if fc.Status.Stdout != want {
			t.Errorf("stdout:\n%s\nwant:\n%s\nstderr: %s", fc.Status.Stdout, want, fc.Status.Stderr)
		}
		expectNothingLeft(t, env.calls.WaitReleased(t, keyOf(fc), 10*time.Second))
	})

	t.Run("writing past an emptyDir's sizeLimit is ENOSPC", func(t *testing.T) {
		fc := waitFinished(t, create(t, shell("fill", ns, node,
			"dd if=/dev/zero of=/work/fill bs=1024 count=4096 2>/dev/null; echo dd-exit=$?",
			"echo bytes=$(stat -c %s /work/fill)",
			"dd if=/dev/zero of=/work/fill2 bs=1024 count=1 2>&1 | grep -o 'No space left on device'",
		).Memory("64Mi").EmptyDir("work", "/work", "1Mi").Obj()), 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if want := "dd-exit=1\nbytes=1048576\nNo space left on device\n"; fc.Status.Stdout != want {
			t.Errorf("stdout %q, want %q (stderr %q)", fc.Status.Stdout, want, fc.Status.Stderr)
		}
		expectNothingLeft(t, env.calls.WaitReleased(t, keyOf(fc), 10*time.Second))
	})

	t.Run("a missing Secret key ends the call InvalidSpec naming it", func(t *testing.T) {
		fc := waitFinished(t, create(t, shell("no-key", ns, node, "true").
			SecretVolume("creds", "/run/creds", "creds", utiltesting.Item("password", "password")).Obj()), 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonInvalidSpec, nil)
		if want := `volume creds: invalid spec: Secret ` + ns + `/creds has no key "password"`; !strings.Contains(fc.Status.Message, want) {
			t.Errorf("message %q, want it to contain %q", fc.Status.Message, want)
		}
	})

	t.Run("a missing ConfigMap ends the call InvalidSpec naming it", func(t *testing.T) {
		fc := waitFinished(t, create(t, shell("no-cm", ns, node, "true").ConfigMapVolume("cfg", "/cfg", "absent").Obj()), 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonInvalidSpec, nil)
		if want := "volume cfg: invalid spec: ConfigMap " + ns + "/absent not found"; !strings.Contains(fc.Status.Message, want) {
			t.Errorf("message %q, want it to contain %q", fc.Status.Message, want)
		}
	})

	t.Run("tmpfs sizes over the memory limit are refused by the node", func(t *testing.T) {
		// Each size fits in the limit (admission), together they do not.
		fc := waitFinished(t, create(t, shell("too-much-tmpfs", ns, node, "true").Memory("16Mi").
			Scratch("10Mi").EmptyDir("work", "/work", "10Mi").Obj()), 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseFailed, fnletv1.ReasonInvalidSpec, nil)
		if want := "emptyDir and scratch sizes total 20971520 bytes, over the call's memory limit of 16777216 bytes"; !strings.Contains(fc.Status.Message, want) {
			t.Errorf("message %q, want it to contain %q", fc.Status.Message, want)
		}
	})
}

func keyOf(fc *fnletv1.FunctionCall) ctrlclient.ObjectKey { return ctrlclient.ObjectKeyFromObject(fc) }

// TestSecretNeverLeaks: a Secret's value, mounted as a file by calls that
// succeed, fail, and are refused, appears in no status, no Event and no
// line the manager logs (at its most verbose).
func TestSecretNeverLeaks(t *testing.T) {
	requireEnv(t)
	const node = "it-secret-leak"
	mgr := startManager(t, node, t.TempDir(), "--zap-log-level=10")
	ns := newNamespace(t)
	ctx := context.Background()
	if err := kubeapi.GrantNamespace(ctx, env.k8s, ns); err != nil {
		t.Fatal(err)
	}
	// Random letters: any 6 of them in a row appearing by chance is
	// unlikely, and the scan looks for every such window, because client-go
	// logs a binary body (protobuf) as a hex dump, 16 characters a line.
	const value = "Zq9xK7pW3mVt8RbN2cYhLw4"
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "leaky", Namespace: ns}, StringData: map[string]string{"token": value}}
	if err := env.k8s.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
	mount := func(w *utiltesting.FunctionCallWrapper) *utiltesting.FunctionCallWrapper {
		return w.SecretVolume("s", "/s", "leaky")
	}
	outcomes := []*fnletv1.FunctionCall{
		waitFinished(t, create(t, mount(shell("reads", ns, node, "sha256sum /s/token | cut -c1-8")).Obj()), 30*time.Second),
		waitFinished(t, create(t, mount(shell("fails", ns, node, "test -s /s/token && exit 3")).Obj()), 30*time.Second),
		waitFinished(t, create(t, mount(shell("refused", ns, node, "true")).Memory("16Mi").Scratch("10Mi").EmptyDir("w", "/w", "10Mi").Obj()), 30*time.Second),
		waitFinished(t, create(t, shell("missing-key", ns, node, "true").SecretVolume("s", "/s", "leaky", utiltesting.Item("nokey", "x")).Obj()), 30*time.Second),
	}
	wantReasons := []fnletv1.CallReason{fnletv1.ReasonCompleted, fnletv1.ReasonError, fnletv1.ReasonInvalidSpec, fnletv1.ReasonInvalidSpec}
	for i, fc := range outcomes {
		if fc.Status.Reason != wantReasons[i] {
			t.Errorf("%s: reason %s (%s), want %s", fc.Name, fc.Status.Reason, fc.Status.Message, wantReasons[i])
		}
		// Released: the manager wrote everything it will write for it.
		env.calls.WaitReleased(t, keyOf(fc), 10*time.Second)
	}

	managerLog := mgr.LogText()
	// The control: a program that prints the value puts it in its own
	// stdout tail (the user's choice), and the scan sees it there.
	printed := waitFinished(t, create(t, mount(shell("prints", ns, "", "cat /s/token")).NodeName(node).Obj()), 30*time.Second)
	if b, _ := json.Marshal(printed.Status); !strings.Contains(string(b), value) {
		t.Fatalf("control: the value printed by a call is not found in its status %s: the scan proves nothing", b)
	}
	env.calls.WaitReleased(t, keyOf(printed), 10*time.Second)

	var calls fnletv1.FunctionCallList
	if err := env.k8s.List(ctx, &calls, ctrlclient.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var events eventsv1.EventList
	if err := env.k8s.List(ctx, &events, ctrlclient.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(events.Items) == 0 {
		t.Errorf("no Events in %s: the failures should have made some, so the scan below proves nothing", ns)
	}
	scan := map[string][]byte{"manager log": []byte(managerLog)}
	for _, fc := range calls.Items {
		if fc.Name == printed.Name {
			continue
		}
		b, _ := json.Marshal(fc.Status)
		scan["status of "+fc.Name] = b
	}
	for _, e := range events.Items {
		b, _ := json.Marshal(e)
		scan["event "+e.Name] = b
	}
	if len(scan["manager log"]) == 0 {
		t.Errorf("the manager logged nothing: the scan proves nothing")
	}
	for what, b := range scan {
		for i := 0; i+6 <= len(value); i++ {
			if w := value[i : i+6]; strings.Contains(string(b), w) {
				t.Errorf("part of the Secret's value (%q) appears in the %s", w, what)
				for _, line := range strings.Split(string(b), "\n") {
					if strings.Contains(line, w) {
						t.Logf("%s: %.300s", what, line)
					}
				}
				break
			}
		}
	}
	t.Logf("scanned %d statuses, %d events and %d bytes of manager log", len(calls.Items), len(events.Items), len(scan["manager log"]))
}

// TestVolumeSamples runs the volume samples of config/samples as written
// (their objects moved to a test namespace, the opt-in granted to the
// suite's manager user) and checks what their comments promise.
func TestVolumeSamples(t *testing.T) {
	requireEnv(t)
	const node = "it-volume-samples"
	startManager(t, node, t.TempDir())
	ns := newNamespace(t)
	ctx := context.Background()
	if err := kubeapi.GrantNamespace(ctx, env.k8s, ns); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"scratch":     "tmp: written\nroot: read-only\nwork: No space left on device\n",
		"read-config": "level: debug\nretries: 3\n400 1000:1000 12 bytes /var/run/secrets/api/token\n",
	}
	var names []string
	for _, file := range []string{"fnlet_v1alpha1_functioncall_scratch.yaml", "namespace_volumes.yaml"} {
		raw, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", file))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc+"\n"), &u.Object); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			switch u.GetKind() {
			case "Namespace", "RoleBinding": // the test's namespace, granted above
				continue
			case "FunctionCall":
				if err := unstructured.SetNestedField(u.Object, node, "spec", "nodeName"); err != nil {
					t.Fatal(err)
				}
				names = append(names, u.GetName())
			}
			u.SetNamespace(ns)
			if err := env.k8s.Create(ctx, u); err != nil {
				t.Fatalf("%s: create %s %s: %v", file, u.GetKind(), u.GetName(), err)
			}
		}
	}
	if len(names) != len(want) {
		t.Fatalf("sample calls %v, want %d", names, len(want))
	}
	for _, name := range names {
		fc := waitFinished(t, ctrlclient.ObjectKey{Namespace: ns, Name: name}, 30*time.Second)
		expectOutcome(t, fc, fnletv1.PhaseSucceeded, fnletv1.ReasonCompleted, i32(0))
		if fc.Status.Stdout != want[name] {
			t.Errorf("%s: stdout %q, want %q (stderr %q)", name, fc.Status.Stdout, want[name], fc.Status.Stderr)
		}
	}
}
