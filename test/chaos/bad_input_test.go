package chaos

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/ctrd"
	"github.com/fnlet/fnlet/internal/testenv/calls"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
	"github.com/fnlet/fnlet/test/testfn/pattern"
)

// badCase is one bad input and the precise status it must end in.
type badCase struct {
	name string
	node string
	fc   *fnletv1.FunctionCall
	want calls.Outcome
	// pullError, when set, is the status.pullError wanted.
	pullError fnletv1.PullError
	// extra checks the final call (and may look at the node).
	extra func(fc *fnletv1.FunctionCall) []string
	uid   string
}

// TestBadInput: inputs a user can get wrong or a program can do badly —
// an image that is not an image, 100 MiB of output without a newline (over
// and under the output cap), a program closing stdout early, one leaving
// children behind, malformed pull secrets. Each must end in a precise
// status, within a bound, and leave nothing behind.
func TestBadInput(t *testing.T) {
	requireChaos(t)
	r := newRow(t, "5 bad input")
	big := startManager(t, "chaos-bad-big", "--max-calls", "16", "--output-limit", "150Mi", "--default-timeout", "2m")
	small := startManager(t, "chaos-bad-small", "--max-calls", "4", "--output-limit", "50Mi", "--default-timeout", "2m")
	ns := newNamespace(t, "bad")
	// The malformed pull secrets below must be readable to be judged.
	if err := kubeapi.GrantNamespace(context.Background(), env.k8s, ns); err != nil {
		t.Fatal(err)
	}
	o := observe(t, ns)
	ctx := context.Background()

	// Images that are not images, imported as they would be by `ctr import`.
	c, cctx := ctrdClient(t)
	importOCI(t, c, cctx, "localhost/fnlet/chaos-garbage-layer:v1", ociImage{layer: randomBytes(t, 4096)})
	importOCI(t, c, cctx, "localhost/fnlet/chaos-missing-layer:v1", ociImage{layer: randomBytes(t, 4096), omitLayer: true})
	importOCI(t, c, cctx, "localhost/fnlet/chaos-helm-chart:v1", ociImage{
		configType: "application/vnd.cncf.helm.config.v1+json", config: []byte(`{"name":"chart","version":"1.0.0","apiVersion":"v2"}`),
		layerType: "application/vnd.cncf.helm.chart.content.v1.tar+gzip", layer: tgz(t, "chart/Chart.yaml", "name: chart\nversion: 1.0.0\n"),
	})

	var cases []*badCase
	add := func(bc *badCase) { cases = append(cases, bc) }
	failedPull := calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonImagePullFailed}

	add(&badCase{name: "garbage-layer", node: big.node, pullError: fnletv1.PullErrorOther,
		fc:   calls.Local("garbage-layer", ns, big.node).Image("localhost/fnlet/chaos-garbage-layer:v1").Obj(),
		want: withMessage(failedPull, "unpack")})
	add(&badCase{name: "missing-layer", node: big.node, pullError: fnletv1.PullErrorOther,
		fc:   calls.Local("missing-layer", ns, big.node).Image("localhost/fnlet/chaos-missing-layer:v1").Obj(),
		want: withMessage(failedPull, "content of the image missing on the node")})
	add(&badCase{name: "helm-chart", node: big.node, pullError: fnletv1.PullErrorOther,
		fc:   calls.Local("helm-chart", ns, big.node).Image("localhost/fnlet/chaos-helm-chart:v1").Obj(),
		want: withMessage(failedPull, "is not a container image")})

	// 100 MiB on one line: the tail in the status, the whole on disk.
	const hundredMiB = 100 << 20
	add(&badCase{name: "no-newline-100mib", node: big.node,
		fc:   calls.Local("no-newline-100mib", ns, big.node).Args("-no-newline-bytes", "100M").Obj(),
		want: calls.Outcome{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Exit: ptr(int32(0))},
		extra: func(fc *fnletv1.FunctionCall) []string {
			var bad []string
			tail := make([]byte, 4096)
			pattern.Fill(pattern.NoNewline, hundredMiB-int64(len(tail)), tail)
			if !fc.Status.StdoutTruncated || fc.Status.Stdout != string(tail) {
				bad = append(bad, fmt.Sprintf("stdout tail: truncated=%v, %d bytes, not the last 4096 bytes of the stream", fc.Status.StdoutTruncated, len(fc.Status.Stdout)))
			}
			if err := checkFile(filepath.Join(big.logDir, ctrd.ContainerID(string(fc.UID)), "stdout"), pattern.NoNewline, hundredMiB); err != nil {
				bad = append(bad, "full log: "+err.Error())
			}
			return bad
		}})
	add(&badCase{name: "no-newline-over-cap", node: small.node,
		fc:   calls.Local("no-newline-over-cap", ns, small.node).Args("-no-newline-bytes", "100M", "-sleep", "30s").Obj(),
		want: calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonOutputLimitExceeded, Exit: ptr(int32(137))}})

	// A program that closes its stdout and carries on.
	before, after := "before close\n", "after close\n"
	add(&badCase{name: "close-stdout", node: big.node,
		fc:   calls.Local("close-stdout", ns, big.node).Args("-stdout-text", "before close", "-stderr-text", "after close", "-close-stdout", "-sleep", "1s", "-exit", "5").Obj(),
		want: calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonError, Exit: ptr(int32(5)), Stdout: &before, Stderr: &after, Log: &before}})

	// Children that outlive their parent: all go with the call. testfn's
	// children die with it anyway (PDEATHSIG), so the real case is a shell
	// leaving background jobs behind.
	noChildren := func(fc *fnletv1.FunctionCall) []string {
		return childrenLeft(string(fc.UID))
	}
	add(&badCase{name: "shell-background-jobs", node: big.node,
		fc: calls.Local("shell-background-jobs", ns, big.node).Image(busyboxImage).
			Command("sh", "-c", "sleep 100 & sleep 100 & setsid sleep 100 & echo started; exit 0").Obj(),
		want:  calls.Outcome{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Exit: ptr(int32(0)), Stdout: ptr("started\n")},
		extra: noChildren})
	add(&badCase{name: "fork-children", node: big.node,
		fc:    calls.Local("fork-children", ns, big.node).Args("-fork-children", "3").Obj(),
		want:  calls.Outcome{Phase: fnletv1.PhaseSucceeded, Reason: fnletv1.ReasonCompleted, Exit: ptr(int32(0)), Stdout: ptr("fork-children=3\n")},
		extra: noChildren})

	// Malformed pull secrets.
	invalidJSON := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "invalid-json", Namespace: ns}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths": {`)}}
	if err := env.k8s.Create(ctx, invalidJSON); err == nil {
		add(&badCase{name: "secret-invalid-json", node: big.node,
			fc:   calls.Local("secret-invalid-json", ns, big.node).PullSecrets("invalid-json").Obj(),
			want: calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonInvalidSpec, Message: "invalid-json"}})
	} else {
		r.notef("a dockerconfigjson Secret with invalid JSON is refused by the apiserver itself: %v", err)
	}
	for name, data := range map[string]string{
		"auths-not-object": `{"auths": "localhost"}`,
		"auth-not-base64":  `{"auths": {"localhost:5000": {"auth": "%%%not base64%%%"}}}`,
		"auth-no-colon":    `{"auths": {"localhost:5000": {"auth": "` + "dXNlcnBhc3M=" + `"}}}`,
		"no-auths":         `{"credsStore": "desktop"}`,
	} {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(data)}}
		if err := env.k8s.Create(ctx, sec); err != nil {
			t.Fatalf("create secret %s: %v", name, err)
		}
		add(&badCase{name: "secret-" + name, node: big.node,
			fc:   calls.Local("secret-"+name, ns, big.node).PullSecrets(name).Obj(),
			want: calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonInvalidSpec, Message: `imagePullSecret "` + name + `"`}})
	}
	opaque := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "opaque", Namespace: ns}, StringData: map[string]string{corev1.DockerConfigJsonKey: `{"auths":{}}`}}
	if err := env.k8s.Create(ctx, opaque); err != nil {
		t.Fatal(err)
	}
	add(&badCase{name: "secret-wrong-type", node: big.node,
		fc:   calls.Local("secret-wrong-type", ns, big.node).PullSecrets("opaque").Obj(),
		want: calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonInvalidSpec, Message: "has type"}})

	var names []string
	var uids []string
	for _, bc := range cases {
		fc := create(t, bc.fc)
		bc.uid = string(fc.UID)
		names = append(names, bc.name)
		uids = append(uids, bc.uid)
	}
	// The control: while a shell and its background jobs run, the check
	// above sees them; cancelled, the whole tree goes.
	ctl := create(t, calls.Local("tree-cancelled", ns, big.node).Image(busyboxImage).
		Command("sh", "-c", "sleep 100 & sleep 100 & setsid sleep 100 & sleep 100").Obj())
	names = append(names, ctl.Name)
	uids = append(uids, string(ctl.UID))
	cases = append(cases, &badCase{name: ctl.Name, node: big.node, uid: string(ctl.UID),
		want: calls.Outcome{Phase: fnletv1.PhaseFailed, Reason: fnletv1.ReasonCancelled}, extra: noChildren})
	if !o.waitUntil(time.Minute, func() bool {
		l, _, _ := o.get(ctl.Name)
		return l != nil && l.Status.Phase == fnletv1.PhaseRunning
	}) {
		t.Fatalf("%s not running after 1m", ctl.Name)
	}
	// The four sleeps (the shell execs the last one), once there: no
	// event says so, the process table is polled.
	var procs int
	for i := 0; i < 50; i++ {
		if procs = len(childrenLeft(string(ctl.UID))); procs >= 4 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if procs < 4 {
		t.Errorf("the process check sees %d processes of a running shell with 3 background jobs and a foreground one, want 4", procs)
	}
	l, _, _ := o.get(ctl.Name)
	patch := client.MergeFrom(l.DeepCopy())
	l.Spec.Cancel = true
	if err := env.k8s.Patch(ctx, l, patch); err != nil {
		t.Fatalf("cancel %s: %v", ctl.Name, err)
	}

	r.Calls = len(cases)
	r.Faults = len(cases)
	start := time.Now()
	missing := o.waitFinal(names, 3*time.Minute, nil)
	r.Lost = len(missing)
	logList(t, "calls that never finished (hung)", o.describeMissing(missing))
	r.notef("all %d bad-input calls final within %.1fs", len(cases)-len(missing), time.Since(start).Seconds())

	var bad []string
	for _, bc := range cases {
		_, f, _ := o.get(bc.name)
		if f == nil {
			continue
		}
		logDir := big.logDir
		if bc.node == small.node {
			logDir = small.logDir
		}
		problems := bc.want.Check(f, logDir)
		if bc.pullError != "" && f.Status.PullError != bc.pullError {
			problems = append(problems, fmt.Sprintf("%s: pullError %q, want %q", bc.name, f.Status.PullError, bc.pullError))
		}
		if bc.extra != nil {
			for _, p := range bc.extra(f) {
				problems = append(problems, bc.name+": "+p)
			}
		}
		if len(problems) > 0 {
			bad = append(bad, strings.Join(problems, "; "))
		}
		r.notef("%s → %s/%s pullError=%q exit=%v: %q", bc.name, f.Status.Phase, f.Status.Reason, f.Status.PullError, calls.ExitOf(f), calls.Clip(f.Status.Message))
	}
	r.tally(t, o, names, bad)

	if held := o.waitReleased(names, time.Minute); len(held) > 0 {
		t.Errorf("%d calls still hold the finalizer: %v", len(held), held)
	}
	lk := leaks(t, uids, big.logDir, small.logDir)
	r.Leak = len(lk)
	logList(t, "leaked", lk)
	for _, ref := range []string{"localhost/fnlet/chaos-garbage-layer:v1", "localhost/fnlet/chaos-missing-layer:v1", "localhost/fnlet/chaos-helm-chart:v1"} {
		_ = c.ImageService().Delete(cctx, ref)
	}
}

func withMessage(o calls.Outcome, msg string) calls.Outcome {
	o.Message = msg
	return o
}

// childrenLeft lists processes still in the call's container cgroup, and
// `sleep 100` processes anywhere whose cgroup names the container.
func childrenLeft(uid string) []string {
	id := ctrd.ContainerID(uid)
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		if err != nil || !strings.Contains(string(cg), id) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		out = append(out, fmt.Sprintf("process %s (%s) left in the cgroup of %s", p.Name(), strings.ReplaceAll(string(cmd), "\x00", " "), id))
	}
	return out
}

// checkFile compares a file with n bytes of the pattern, streaming.
func checkFile(path string, k pattern.Kind, n int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != n {
		return fmt.Errorf("%d bytes, want %d", fi.Size(), n)
	}
	buf := make([]byte, 1<<20)
	want := make([]byte, 1<<20)
	var off int64
	for {
		m, err := io.ReadFull(f, buf)
		if m > 0 {
			pattern.Fill(k, off, want[:m])
			if !bytes.Equal(buf[:m], want[:m]) {
				return fmt.Errorf("content differs from the pattern in the MiB at offset %d", off)
			}
			off += int64(m)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func tgz(t *testing.T, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(content))
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// ociImage describes an OCI image-layout archive with one layer. Zero
// values make an ordinary container image (whose layer is the given bytes).
type ociImage struct {
	configType, layerType string
	config, layer         []byte
	omitLayer             bool // the manifest names a layer the archive lacks
}

// importOCI writes the image as an OCI archive and imports it under ref the
// way `ctr images import` does (without unpacking).
func importOCI(t *testing.T, c *containerd.Client, ctx context.Context, ref string, img ociImage) {
	t.Helper()
	if img.configType == "" {
		img.configType = "application/vnd.oci.image.config.v1+json"
	}
	if img.layerType == "" {
		img.layerType = "application/vnd.oci.image.layer.v1.tar+gzip"
	}
	layerDigest := digestOf(img.layer)
	if img.config == nil {
		// A valid config whose rootfs names the layer as if it were a tar
		// (the diff ID is what unpacking would compute; it never gets there).
		img.config, _ = json.Marshal(map[string]any{
			"architecture": "amd64", "os": "linux",
			"config": map[string]any{"Entrypoint": []string{"/testfn"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		})
	}
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Platform    map[string]string `json:"platform,omitempty"`
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{MediaType: img.configType, Digest: digestOf(img.config), Size: len(img.config)},
		"layers": []desc{{MediaType: img.layerType, Digest: layerDigest, Size: len(img.layer)}},
	})
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []desc{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digestOf(manifest), Size: len(manifest),
			Annotations: map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "v1"},
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"}}},
	})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	put := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	put("index.json", index)
	blob := func(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digestOf(b), "sha256:") }
	put(blob(img.config), img.config)
	put(blob(manifest), manifest)
	if !img.omitLayer {
		put(blob(img.layer), img.layer)
	}
	tw.Close()
	imgs, err := c.Import(ctx, &buf)
	if err != nil {
		t.Fatalf("import %s: %v", ref, err)
	}
	if len(imgs) != 1 || imgs[0].Name != ref {
		t.Fatalf("import %s gave %v", ref, imgs)
	}
}

func digestOf(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}
