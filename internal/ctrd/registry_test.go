package ctrd

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/fnlet/fnlet/internal/testenv"
)

// Integration tests against a real registry: Debian's docker-registry with
// htpasswd auth and a self-signed CA, started by hack/registry-up.sh, which
// writes its coordinates to an env file. They pull into their own containerd
// namespace, so every pull is a real one (no content shared with the images
// the other tests import), and they remove what they pulled.

const (
	registryEnvFileEnv = "FNLET_REGISTRY_ENV" // overrides the env file path
	registryTestNS     = "fnlet-registry-test"
)

type registryEnv struct {
	host     string // host:port
	caFile   string
	caPool   *x509.CertPool
	user     string
	password string
	image    string // a pushed image (testfn)
	digest   string // its manifest digest, if the env file says
}

func (e registryEnv) auth() RegistryAuth {
	return RegistryAuth{e.host: {Username: e.user, Password: e.password}}
}

func (e registryEnv) tls() *tls.Config { return &tls.Config{RootCAs: e.caPool} }

// registryEnvFile is $FNLET_REGISTRY_ENV, else $FNLET_RUN/registry/env.
func registryEnvFile() string {
	if p := os.Getenv(registryEnvFileEnv); p != "" {
		return p
	}
	run := os.Getenv("FNLET_RUN")
	if run == "" {
		run = "/run/fnlet-dev"
	}
	return filepath.Join(run, "registry", "env")
}

// loadRegistryEnv skips the test, saying why (or fails it under make test),
// unless both a containerd and the registry are available.
func loadRegistryEnv(t *testing.T) registryEnv {
	t.Helper()
	daemonAddress(t)
	path := registryEnvFile()
	f, err := os.Open(path)
	if err != nil {
		testenv.Missing(t, "no registry env file (%v); start the test registry with hack/registry-up.sh (or set %s)", err, registryEnvFileEnv)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			continue
		}
		vars[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	e := registryEnv{
		host:     vars["FNLET_REGISTRY"],
		caFile:   vars["FNLET_REGISTRY_CA"],
		user:     vars["FNLET_REGISTRY_USER"],
		password: vars["FNLET_REGISTRY_PASSWORD"],
		image:    vars["FNLET_REGISTRY_IMAGE"],
		digest:   vars["FNLET_REGISTRY_IMAGE_DIGEST"],
	}
	if e.host == "" || e.caFile == "" || e.user == "" || e.password == "" || e.image == "" {
		t.Fatalf("%s lacks one of FNLET_REGISTRY, FNLET_REGISTRY_CA, FNLET_REGISTRY_USER, FNLET_REGISTRY_PASSWORD, FNLET_REGISTRY_IMAGE: %v", path, keys(vars))
	}
	if hostOfRef(e.image) != e.host {
		t.Fatalf("%s: FNLET_REGISTRY_IMAGE %s is not on FNLET_REGISTRY %s", path, e.image, e.host)
	}
	pem, err := os.ReadFile(e.caFile)
	if err != nil {
		t.Fatalf("registry CA: %v", err)
	}
	e.caPool = x509.NewCertPool()
	if !e.caPool.AppendCertsFromPEM(pem) {
		t.Fatalf("registry CA %s holds no PEM certificate", e.caFile)
	}
	// Fail early and clearly if the env file is stale (registry stopped).
	conn, err := net.DialTimeout("tcp", e.host, 2*time.Second)
	if err != nil {
		testenv.Missing(t, "registry %s from %s is not reachable (%v); restart it with hack/registry-up.sh", e.host, path, err)
	}
	conn.Close()
	return e
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// newRegistryRuntime is a test runtime in the registry tests' namespace.
func newRegistryRuntime(t *testing.T, opts ...Opt) *testRuntime {
	t.Helper()
	return newTestRuntime(t, "", append([]Opt{WithNamespace(registryTestNS)}, opts...)...)
}

// removeImage deletes ref from the registry tests' namespace (and lets
// containerd collect its content), so the next EnsureImage pulls again.
func removeImage(t *testing.T, ref string) {
	t.Helper()
	full, err := NormalizeImageRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	c, ctx := rawClient(t)
	ctx = namespaces.WithNamespace(ctx, registryTestNS)
	if err := c.ImageService().Delete(ctx, full, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
		t.Fatalf("remove image %s: %v", full, err)
	}
}

// imagePresent reports whether ref is in the registry tests' namespace.
func imagePresent(t *testing.T, ref string) bool {
	t.Helper()
	full, err := NormalizeImageRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	c, ctx := rawClient(t)
	_, err = c.ImageService().Get(namespaces.WithNamespace(ctx, registryTestNS), full)
	if err != nil && !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// freshImage removes ref now and again when the test ends.
func freshImage(t *testing.T, ref string) {
	t.Helper()
	removeImage(t, ref)
	t.Cleanup(func() { removeImage(t, ref) })
}

func wantImageError(t *testing.T, err error, class PullErrorClass) *ImageError {
	t.Helper()
	var ie *ImageError
	if !errors.As(err, &ie) {
		t.Fatalf("err = %v (%T), want *ImageError %s", err, err, class)
	}
	if ie.Class != class {
		t.Fatalf("class %s, want %s: %v", ie.Class, class, err)
	}
	return ie
}

func TestRegistryPullWithCredentialsThenRun(t *testing.T) {
	env := loadRegistryEnv(t)
	rt := newRegistryRuntime(t, WithRegistryTLS(env.tls()))
	freshImage(t, env.image)
	ctx := ctxTimeout(t, 2*time.Minute)

	info, err := rt.EnsureImage(ctx, env.image, PullIfNotPresent, env.auth())
	if err != nil {
		t.Fatalf("EnsureImage: %v", err)
	}
	if !info.Pulled || !strings.HasPrefix(info.Digest, "sha256:") || !strings.HasPrefix(info.Ref, env.host+"/") {
		t.Fatalf("info = %+v, want a pulled image from %s", info, env.host)
	}
	if env.digest != "" && info.Digest != env.digest {
		t.Errorf("pulled digest %s, the registry has %s", info.Digest, env.digest)
	}
	if !imagePresent(t, env.image) {
		t.Fatal("image not in containerd after the pull")
	}
	// Present now: IfNotPresent does not contact the registry again.
	again, err := rt.EnsureImage(ctx, env.image, PullIfNotPresent, nil)
	if err != nil || again.Pulled || again.Digest != info.Digest {
		t.Fatalf("second EnsureImage = %+v, %v; want the same image, not pulled", again, err)
	}

	call := testCall(t, "-stdout-text", "from the registry")
	call.Image = env.image
	s := runToExit(t, rt, call)
	if s.Result.ExitCode != 0 || string(s.Result.Stdout.Data) != "from the registry\n" {
		t.Fatalf("result = %+v, stdout %q", s.Result, s.Result.Stdout.Data)
	}
}

// countingProxy is a TLS reverse proxy to the real registry that counts the
// manifest-by-tag requests the registry answered 200, i.e. the pulls that
// resolved the reference, and holds each such answer back for a while so
// the pull stays in flight. It changes nothing else.
type countingProxy struct {
	*httptest.Server
	hold time.Duration

	mu       sync.Mutex
	resolved int
}

func newCountingProxy(t *testing.T, env registryEnv, hold time.Duration) *countingProxy {
	t.Helper()
	target := &url.URL{Scheme: "https", Host: env.host}
	p := &countingProxy{hold: hold}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: &http.Transport{TLSClientConfig: env.tls()},
		ModifyResponse: func(resp *http.Response) error {
			path := resp.Request.URL.Path
			if resp.StatusCode == http.StatusOK && strings.Contains(path, "/manifests/") && !strings.Contains(path, "/manifests/sha256:") {
				p.mu.Lock()
				p.resolved++
				p.mu.Unlock()
				time.Sleep(p.hold)
			}
			return nil
		},
	}
	p.Server = httptest.NewTLSServer(rp)
	t.Cleanup(p.Close)
	return p
}

func (p *countingProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resolved
}

// host is the proxy's host:port, which the image is pulled through.
func (p *countingProxy) host() string { return strings.TrimPrefix(p.URL, "https://") }

// tls trusts the proxy's certificate, and nothing else.
func (p *countingProxy) tls() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.Certificate())
	return &tls.Config{RootCAs: pool}
}

// TestRegistryConcurrentPullsDeduplicated: five concurrent EnsureImage calls
// with policy Always make one pull. Observed at the registry's side: the
// image is pulled through a counting proxy, which sees how many times the
// tag was resolved.
func TestRegistryConcurrentPullsDeduplicated(t *testing.T) {
	env := loadRegistryEnv(t)
	proxy := newCountingProxy(t, env, 500*time.Millisecond)
	ref := proxy.host() + strings.TrimPrefix(env.image, env.host)
	auth := RegistryAuth{proxy.host(): {Username: env.user, Password: env.password}}
	rt := newRegistryRuntime(t, WithRegistryTLS(proxy.tls()))
	freshImage(t, ref)
	ctx := ctxTimeout(t, 2*time.Minute)

	const n = 5
	var wg sync.WaitGroup
	start := make(chan struct{})
	infos := make([]ImageInfo, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			infos[i], errs[i] = rt.EnsureImage(ctx, ref, PullAlways, auth)
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("EnsureImage %d: %v", i, errs[i])
		}
		if !infos[i].Pulled || infos[i].Digest != infos[0].Digest {
			t.Errorf("EnsureImage %d = %+v, want pulled, digest %s", i, infos[i], infos[0].Digest)
		}
	}
	if got := proxy.count(); got != 1 {
		t.Errorf("the registry resolved the tag %d times for %d concurrent Always pulls, want 1", got, n)
	}
	// The counter does see every pull: one more Always pull resolves again.
	if _, err := rt.EnsureImage(ctx, ref, PullAlways, auth); err != nil {
		t.Fatalf("sequential EnsureImage: %v", err)
	}
	if got := proxy.count(); got != 2 {
		t.Errorf("after one more pull the tag was resolved %d times in all, want 2", got)
	}
}

func TestRegistryWrongPasswordIsUnauthorized(t *testing.T) {
	env := loadRegistryEnv(t)
	rt := newRegistryRuntime(t, WithRegistryTLS(env.tls()))
	freshImage(t, env.image)
	ctx := ctxTimeout(t, time.Minute)
	for _, tc := range []struct {
		name    string
		auth    RegistryAuth
		wantMsg string // what the registry or resolver said, kept for the user
	}{
		{"wrong password", RegistryAuth{env.host: {Username: env.user, Password: env.password + "-wrong"}}, "401 Unauthorized"},
		{"no credentials", nil, "no basic auth credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rt.EnsureImage(ctx, env.image, PullAlways, tc.auth)
			wantImageError(t, err, PullUnauthorized)
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("message lost %q: %v", tc.wantMsg, err)
			}
			if strings.Contains(err.Error(), env.password) {
				t.Errorf("message leaks the password: %v", err)
			}
			if imagePresent(t, env.image) {
				t.Error("image present after a refused pull")
			}
		})
	}
}

func TestRegistryMissingIsNotFound(t *testing.T) {
	env := loadRegistryEnv(t)
	rt := newRegistryRuntime(t, WithRegistryTLS(env.tls()))
	ctx := ctxTimeout(t, time.Minute)
	named, err := reference.ParseNormalizedNamed(env.image)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{
		named.Name() + ":no-such-tag",
		reference.Domain(named) + "/fnlet/no-such-repo:v1",
	} {
		t.Run(ref, func(t *testing.T) {
			_, err := rt.EnsureImage(ctx, ref, PullAlways, env.auth())
			wantImageError(t, err, PullNotFound)
			if !errdefs.IsNotFound(err) {
				t.Errorf("not errdefs.NotFound: %v", err)
			}
			if !strings.Contains(err.Error(), ref) {
				t.Errorf("message does not name the image: %v", err)
			}
		})
	}
}

func TestRegistryDownIsUnreachable(t *testing.T) {
	env := loadRegistryEnv(t)
	// A port nobody listens on: bind it, note it, free it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	ref := host + "/fnlet/testfn:v1"
	rt := newRegistryRuntime(t, WithRegistryTLS(env.tls()))
	_, err = rt.EnsureImage(ctxTimeout(t, time.Minute), ref, PullAlways, RegistryAuth{host: {Username: env.user, Password: env.password}})
	wantImageError(t, err, PullUnreachable)
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("message does not say why: %v", err)
	}
}

func TestRegistryUntrustedCAFails(t *testing.T) {
	env := loadRegistryEnv(t)
	other := httptest.NewTLSServer(http.NotFoundHandler()) // only for an unrelated CA
	other.Close()
	otherPool := x509.NewCertPool()
	otherPool.AddCert(other.Certificate())
	for _, tc := range []struct {
		name string
		opts []Opt
	}{
		{"system roots only", nil},
		{"another CA", []Opt{WithRegistryTLS(&tls.Config{RootCAs: otherPool})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newRegistryRuntime(t, tc.opts...)
			freshImage(t, env.image)
			_, err := rt.EnsureImage(ctxTimeout(t, time.Minute), env.image, PullAlways, env.auth())
			ie := wantImageError(t, err, PullOther)
			if msg := ie.Error(); !strings.Contains(msg, "x509") && !strings.Contains(msg, "certificate") {
				t.Errorf("message does not mention the certificate problem: %v", err)
			}
			// Verification was not skipped, nor plain HTTP tried instead.
			if imagePresent(t, env.image) {
				t.Fatal("image pulled from a registry whose certificate is not trusted")
			}
		})
	}
}
