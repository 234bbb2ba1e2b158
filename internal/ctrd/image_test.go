package ctrd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Unit tests of image reference, pull secret and pull error handling: no
// daemon, no registry. The tests are named *Unit* so `make unit` runs them.

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestUnitNormalizeImageRef(t *testing.T) {
	tests := []struct {
		name    string
		ref     string
		want    string
		wantErr string
	}{
		{name: "full reference unchanged", ref: "registry.example:5000/team/fn:v1", want: "registry.example:5000/team/fn:v1"},
		{name: "missing tag gets latest", ref: "registry.example:5000/team/fn", want: "registry.example:5000/team/fn:latest"},
		{name: "localhost domain", ref: "localhost/fnlet/testfn:v1", want: "localhost/fnlet/testfn:v1"},
		{name: "localhost with port", ref: "localhost:5000/fn", want: "localhost:5000/fn:latest"},
		{name: "digest", ref: "registry.example/fn@" + testDigest, want: "registry.example/fn@" + testDigest},
		{name: "tag and digest: digest wins", ref: "registry.example/fn:v1@" + testDigest, want: "registry.example/fn@" + testDigest},
		{name: "uppercase domain allowed", ref: "Registry.Example/fn:v1", want: "Registry.Example/fn:v1"},
		{name: "uppercase repository invalid", ref: "registry.example/Team/fn:v1", wantErr: "must be lowercase"},
		{name: "empty", ref: "", wantErr: "image reference is empty"},
		{name: "space in tag", ref: "registry.example/fn:bad tag", wantErr: "invalid image reference"},
		{name: "empty tag", ref: "registry.example/fn:", wantErr: "invalid image reference"},
		{name: "short digest", ref: "registry.example/fn@sha256:abc", wantErr: "invalid image reference"},
		{name: "scheme is not part of a reference", ref: "https://registry.example/fn", wantErr: "invalid image reference"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizeImageRef(tc.ref)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NormalizeImageRef(%q) = %q, %v; want error containing %q", tc.ref, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizeImageRef(%q) = %q, %v; want %q", tc.ref, got, err, tc.want)
			}
		})
	}
}

// TestUnitNormalizeImageRefShortName: a bare name gets the default registry,
// the library/ path and :latest. The default domain is not spelled out here.
func TestUnitNormalizeImageRefShortName(t *testing.T) {
	for _, ref := range []string{"busybox", "busybox:latest"} {
		got, err := NormalizeImageRef(ref)
		if err != nil {
			t.Fatalf("NormalizeImageRef(%q): %v", ref, err)
		}
		domain, path, ok := strings.Cut(got, "/")
		if !ok || !strings.Contains(domain, ".") {
			t.Errorf("NormalizeImageRef(%q) = %q: no registry domain", ref, got)
		}
		if path != "library/busybox:latest" {
			t.Errorf("NormalizeImageRef(%q) = %q: want path library/busybox:latest", ref, got)
		}
		again, err := NormalizeImageRef(got)
		if err != nil || again != got {
			t.Errorf("not idempotent: %q -> %q, %v", got, again, err)
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestUnitParseDockerConfigJSON(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    RegistryAuth
		wantErr string
	}{
		{
			name: "auth field",
			data: `{"auths":{"registry.example:5000":{"auth":"` + b64("alice:s3cret") + `"}}}`,
			want: RegistryAuth{"registry.example:5000": {Username: "alice", Password: "s3cret"}},
		},
		{
			name: "password may contain colons",
			data: `{"auths":{"registry.example":{"auth":"` + b64("bob:a:b:c") + `"}}}`,
			want: RegistryAuth{"registry.example": {Username: "bob", Password: "a:b:c"}},
		},
		{
			name: "username and password fields",
			data: `{"auths":{"registry.example":{"username":"carol","password":"pw"}}}`,
			want: RegistryAuth{"registry.example": {Username: "carol", Password: "pw"}},
		},
		{
			name: "auth wins over username/password",
			data: `{"auths":{"registry.example":{"username":"x","password":"y","auth":"` + b64("dave:pw") + `"}}}`,
			want: RegistryAuth{"registry.example": {Username: "dave", Password: "pw"}},
		},
		{
			name: "URL keys reduced to host:port",
			data: `{"auths":{"https://registry.example:5000/v1/":{"auth":"` + b64("u:p") + `"},"http://other.example":{"username":"v","password":"q"}}}`,
			want: RegistryAuth{
				"registry.example:5000": {Username: "u", Password: "p"},
				"other.example":         {Username: "v", Password: "q"},
			},
		},
		{
			name: "host/path key reduced to host",
			data: `{"auths":{"registry.example/team":{"username":"u","password":"p"}}}`,
			want: RegistryAuth{"registry.example": {Username: "u", Password: "p"}},
		},
		{
			name: "several registries, extra fields ignored",
			data: `{"auths":{"a.example":{"auth":"` + b64("a:1") + `","email":"a@a.example"},"b.example:443":{"auth":"` + b64("b:2") + `"}},"credsStore":"x"}`,
			want: RegistryAuth{"a.example": {Username: "a", Password: "1"}, "b.example:443": {Username: "b", Password: "2"}},
		},
		{
			name: "empty auths",
			data: `{"auths":{}}`,
			want: RegistryAuth{},
		},
		{name: "bad base64", data: `{"auths":{"registry.example":{"auth":"%%%not-base64"}}}`, wantErr: "not base64"},
		{name: "auth without colon", data: `{"auths":{"registry.example":{"auth":"` + b64("nocolon") + `"}}}`, wantErr: "not user:password"},
		{name: "missing auths", data: `{"credsStore":"desktop"}`, wantErr: `no "auths" object`},
		{name: "auths null", data: `{"auths":null}`, wantErr: `no "auths" object`},
		{name: "not JSON", data: `auths: {}`, wantErr: "parse docker config json"},
		{name: "empty input", data: ``, wantErr: "parse docker config json"},
		{name: "auths of the wrong type", data: `{"auths":[1,2]}`, wantErr: "parse docker config json"},
		{name: "empty key", data: `{"auths":{"":{"username":"u","password":"p"}}}`, wantErr: "bad registry key"},
		{name: "URL key without host", data: `{"auths":{"https:///v1/":{"username":"u","password":"p"}}}`, wantErr: "bad registry key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDockerConfigJSON([]byte(tc.data))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseDockerConfigJSON: %v", err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestUnitParseDockerConfigJSONNoSecretInError: a malformed secret's error
// must not echo the credential material.
func TestUnitParseDockerConfigJSONNoSecretInError(t *testing.T) {
	secret := b64("hunter2") // no colon
	_, err := ParseDockerConfigJSON([]byte(`{"auths":{"registry.example":{"auth":"` + secret + `"}}}`))
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the credential: %v", err)
	}
}

func TestUnitClassifyPullError(t *testing.T) {
	httpStatus := func(code int, text string) error {
		return remoteerrors.ErrUnexpectedStatus{
			Status:        fmt.Sprintf("%d %s", code, text),
			StatusCode:    code,
			RequestMethod: "GET",
			RequestURL:    "https://registry.example/v2/fn/manifests/v1",
		}
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	dns := &net.DNSError{Err: "no such host", Name: "registry.invalid", IsNotFound: true}
	// What net/http returns: the dial error inside a *url.Error.
	httpErr := func(err error) error {
		return &url.Error{Op: "Head", URL: "https://registry.example/v2/fn/manifests/v1", Err: err}
	}
	unknownCA := x509.UnknownAuthorityError{}
	timeout := &url.Error{Op: "Get", URL: "https://registry.example/v2/", Err: timeoutErr{}}

	tests := []struct {
		name string
		err  error
		want PullErrorClass
	}{
		{"errdefs not found", fmt.Errorf("registry.example/fn:v1: %w", errdefs.ErrNotFound), PullNotFound},
		{"errdefs unauthenticated", fmt.Errorf("pull: %w", errdefs.ErrUnauthenticated), PullUnauthorized},
		{"errdefs permission denied", fmt.Errorf("pull: %w", errdefs.ErrPermissionDenied), PullUnauthorized},
		{"no credentials for a registry that wants them", fmt.Errorf("failed to resolve reference: pull access denied, repository does not exist or may require authorization: %w",
			fmt.Errorf("%w: no basic auth credentials", docker.ErrInvalidAuthorization)), PullUnauthorized},
		{"HTTP 401", fmt.Errorf("failed to resolve: %w", httpStatus(401, "Unauthorized")), PullUnauthorized},
		{"HTTP 403", fmt.Errorf("failed to resolve: %w", httpStatus(403, "Forbidden")), PullUnauthorized},
		{"HTTP 404", fmt.Errorf("failed to fetch: %w", httpStatus(404, "Not Found")), PullNotFound},
		{"HTTP 500", fmt.Errorf("failed to fetch: %w", httpStatus(500, "Internal Server Error")), PullOther},
		{"HTTP 429", httpStatus(429, "Too Many Requests"), PullOther},
		{"unknown CA", fmt.Errorf("failed to do request: %w", httpErr(unknownCA)), PullOther},
		{"unknown CA via tls verification error", httpErr(&tls.CertificateVerificationError{Err: unknownCA}), PullOther},
		{"hostname mismatch", httpErr(x509.HostnameError{Host: "registry.example", Certificate: &x509.Certificate{}}), PullOther},
		{"connection refused", fmt.Errorf("failed to do request: %w", httpErr(refused)), PullUnreachable},
		{"bare ECONNREFUSED", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), PullUnreachable},
		{"host unreachable", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, PullUnreachable},
		{"DNS error", fmt.Errorf("failed to do request: %w", httpErr(&net.OpError{Op: "dial", Net: "tcp", Err: dns})), PullUnreachable},
		{"bare DNS error", dns, PullUnreachable},
		{"timeout", fmt.Errorf("failed to do request: %w", timeout), PullUnreachable},
		{"gRPC NotFound converted by wrapErr", wrapErr(grpcStatus(codes.NotFound, "content digest not found"), "pull"), PullNotFound},
		{"gRPC Unauthenticated converted by wrapErr", wrapErr(grpcStatus(codes.Unauthenticated, "no"), "pull"), PullUnauthorized},
		// context.DeadlineExceeded is a net.Error that timed out: a pull
		// that hits PullTimeout reports the registry as unreachable.
		{"pull timeout", fmt.Errorf("pull: %w", context.DeadlineExceeded), PullUnreachable},
		{"canceled", fmt.Errorf("pull: %w", context.Canceled), PullOther},
		{"plain error", errors.New("unpack: layer is corrupt"), PullOther},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := classifyPullError(tc.err); got != tc.want {
				t.Errorf("classifyPullError(%v) = %s, want %s", tc.err, got, tc.want)
			}
		})
	}
}

func grpcStatus(c codes.Code, msg string) error { return status.Error(c, msg) }

// timeoutErr is a net.Error that timed out, as an http.Client timeout is.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestUnitImageErrorKeepsCause(t *testing.T) {
	cause := fmt.Errorf("pull: %w", remoteerrors.ErrUnexpectedStatus{Status: "401 Unauthorized", StatusCode: 401,
		RequestMethod: "GET", RequestURL: "https://registry.example/v2/"})
	err := error(&ImageError{Ref: "registry.example/fn:v1", Class: PullUnauthorized, Err: cause})
	msg := err.Error()
	for _, want := range []string{"registry.example/fn:v1", "Unauthorized", "401 Unauthorized"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	var st remoteerrors.ErrUnexpectedStatus
	if !errors.As(err, &st) || st.StatusCode != 401 {
		t.Errorf("cause not reachable with errors.As")
	}
	nf := &ImageError{Ref: "r", Class: PullNotFound, Err: fmt.Errorf("x: %w", errdefs.ErrNotFound)}
	if !errdefs.IsNotFound(nf) || !IsNotFound(nf) {
		t.Errorf("errdefs class lost through ImageError")
	}
}

// TestUnitEnsureImageInvalidRef: a bad reference fails before any daemon
// call (the runtime has no client here), as InvalidArgument.
func TestUnitEnsureImageInvalidRef(t *testing.T) {
	r := &Runtime{namespace: testNS}
	for _, ref := range []string{"", "registry.example/Bad/fn"} {
		_, err := r.EnsureImage(context.Background(), ref, PullAlways, nil)
		var ie *ImageError
		if !errors.As(err, &ie) || ie.Class != PullOther || !errdefs.IsInvalidArgument(err) {
			t.Errorf("EnsureImage(%q) = %v, want ImageError(Other) wrapping InvalidArgument", ref, err)
		}
	}
}
