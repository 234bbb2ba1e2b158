package ctrd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PullPolicy says when EnsureImage contacts the registry.
type PullPolicy string

const (
	PullIfNotPresent PullPolicy = "IfNotPresent"
	PullAlways       PullPolicy = "Always"
	PullNever        PullPolicy = "Never"
)

// PullErrorClass is the user-facing kind of an image failure.
type PullErrorClass string

const (
	PullUnauthorized PullErrorClass = "Unauthorized"
	PullNotFound     PullErrorClass = "NotFound"
	PullUnreachable  PullErrorClass = "Unreachable"
	PullOther        PullErrorClass = "Other"
)

// ImageError is returned by EnsureImage. Err keeps the registry's message
// and errdefs class.
type ImageError struct {
	Ref   string
	Class PullErrorClass
	Err   error
}

func (e *ImageError) Error() string {
	return fmt.Sprintf("image %s: %s: %v", e.Ref, e.Class, e.Err)
}

func (e *ImageError) Unwrap() error { return e.Err }

// Credential is a registry login.
type Credential struct {
	Username string
	Password string
}

// RegistryAuth maps a registry host (host[:port]) to its login.
type RegistryAuth map[string]Credential

// ParseDockerConfigJSON reads a kubernetes.io/dockerconfigjson payload.
// Keys may be bare hosts or URLs; "auth" (base64 user:pass) or
// username/password are accepted.
func ParseDockerConfigJSON(data []byte) (RegistryAuth, error) {
	var cfg struct {
		Auths map[string]struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Auth     string `json:"auth"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("parse docker config json: %w", err)
	}
	if cfg.Auths == nil {
		return nil, fmt.Errorf("parse docker config json: no \"auths\" object")
	}
	out := RegistryAuth{}
	for key, a := range cfg.Auths {
		host := registryHostOf(key)
		if host == "" {
			return nil, fmt.Errorf("parse docker config json: bad registry key %q", key)
		}
		c := Credential{Username: a.Username, Password: a.Password}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("parse docker config json: auth for %q is not base64: %w", key, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("parse docker config json: auth for %q is not user:password", key)
			}
			c = Credential{Username: user, Password: pass}
		}
		out[host] = c
	}
	return out, nil
}

// registryHostOf turns "https://host:port/v1/" or "host:port" into host:port.
func registryHostOf(key string) string {
	if strings.Contains(key, "://") {
		u, err := url.Parse(key)
		if err != nil {
			return ""
		}
		return u.Host
	}
	host, _, _ := strings.Cut(key, "/")
	return host
}

// NormalizeImageRef parses a user's image reference into its full form
// (domain/path:tag or @digest), with a clear error for bad input.
func NormalizeImageRef(ref string) (string, error) {
	if ref == "" {
		return "", errors.New("image reference is empty")
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	return named.String(), nil
}

// imageCache remembers images known to be present and unpacked, with their
// config, so the hot path does not ask containerd again for every call.
type imageCache struct {
	mu sync.Mutex
	m  map[string]cachedImage
}

type cachedImage struct {
	img    client.Image
	config ocispec.ImageConfig
}

func (c *imageCache) get(ref string) (cachedImage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ci, ok := c.m[ref]
	return ci, ok
}

func (c *imageCache) put(ref string, ci cachedImage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]cachedImage{}
	}
	c.m[ref] = ci
}

func (c *imageCache) forget(ref string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, ref)
}

// pullGroup de-duplicates concurrent pulls of one reference.
type pullGroup struct {
	mu       sync.Mutex
	inflight map[string]*pullCall
}

type pullCall struct {
	done chan struct{}
	ci   cachedImage
	err  error
}

func (g *pullGroup) do(key string, fn func() (cachedImage, error)) (cachedImage, error) {
	g.mu.Lock()
	if g.inflight == nil {
		g.inflight = map[string]*pullCall{}
	}
	if c, ok := g.inflight[key]; ok {
		g.mu.Unlock()
		<-c.done
		return c.ci, c.err
	}
	c := &pullCall{done: make(chan struct{})}
	g.inflight[key] = c
	g.mu.Unlock()

	c.ci, c.err = fn()
	close(c.done)
	g.mu.Lock()
	delete(g.inflight, key)
	g.mu.Unlock()
	return c.ci, c.err
}

// ImageInfo describes an image ready to run.
type ImageInfo struct {
	Ref    string
	Digest string
	// Pulled is true when this EnsureImage contacted the registry.
	Pulled bool
}

// PullTimeout bounds one pull, shared by every caller waiting on it.
const PullTimeout = 5 * time.Minute

// EnsureImage makes ref present and unpacked according to policy. Errors
// are *ImageError with a class a user can act on, except containerd being
// unreachable (IsUnavailable), which says nothing about the image.
func (r *Runtime) EnsureImage(ctx context.Context, ref string, policy PullPolicy, auth RegistryAuth) (ImageInfo, error) {
	full, err := NormalizeImageRef(ref)
	if err != nil {
		return ImageInfo{}, &ImageError{Ref: ref, Class: PullOther, Err: errdefs.ErrInvalidArgument.WithMessage(err.Error())}
	}
	ci, pulled, err := r.ensureImage(r.ctx(ctx), full, policy, auth)
	if err != nil {
		return ImageInfo{}, err
	}
	return ImageInfo{Ref: full, Digest: ci.img.Target().Digest.String(), Pulled: pulled}, nil
}

func (r *Runtime) ensureImage(ctx context.Context, ref string, policy PullPolicy, auth RegistryAuth) (cachedImage, bool, error) {
	if policy == "" {
		policy = PullIfNotPresent
	}
	if policy != PullAlways {
		if ci, ok := r.images.get(ref); ok {
			return ci, false, nil
		}
		ci, err := r.localImage(ctx, ref)
		if err == nil {
			return ci, false, nil
		}
		if IsUnavailable(err) {
			// containerd is away: nothing is known about the image, and the
			// caller waits for the daemon like for any other call.
			return cachedImage{}, false, err
		}
		if !errdefs.IsNotFound(err) {
			return cachedImage{}, false, &ImageError{Ref: ref, Class: PullOther, Err: err}
		}
		if policy == PullNever {
			return cachedImage{}, false, &ImageError{Ref: ref, Class: PullNotFound,
				Err: fmt.Errorf("not present on the node and imagePullPolicy is Never: %w", errdefs.ErrNotFound)}
		}
	}
	key := ref + "\x00" + auth[hostOfRef(ref)].Username
	ci, err := r.pulls.do(key, func() (cachedImage, error) {
		// The pull is shared: one caller's cancellation must not fail the others.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), PullTimeout)
		defer cancel()
		return r.pull(pctx, ref, auth)
	})
	return ci, err == nil, err
}

func (r *Runtime) localImage(ctx context.Context, ref string) (cachedImage, error) {
	img, err := r.client.GetImage(ctx, ref)
	if err != nil {
		return cachedImage{}, wrapErr(err, "get image %s", ref)
	}
	// From here on NotFound is content missing from an image that is here,
	// not an absent image (which would read "not present on the node").
	if err := checkContainerImage(ctx, ref, img); err != nil {
		return cachedImage{}, err
	}
	unpacked, err := img.IsUnpacked(ctx, r.snapshot)
	if err != nil {
		return cachedImage{}, incomplete(err, "check unpacked %s", ref)
	}
	if !unpacked {
		if err := img.Unpack(ctx, r.snapshot); err != nil {
			return cachedImage{}, incomplete(err, "unpack %s", ref)
		}
	}
	return r.remember(ctx, ref, img)
}

// checkContainerImage refuses what an image store can hold but no runtime
// can run (Helm charts, signatures, other OCI artifacts), instead of running
// an empty root filesystem with whatever config JSON parses.
func checkContainerImage(ctx context.Context, ref string, img client.Image) error {
	cfg, err := img.Config(ctx)
	if err != nil {
		return incomplete(err, "read manifest of %s", ref)
	}
	switch cfg.MediaType {
	case ocispec.MediaTypeImageConfig, images.MediaTypeDockerSchema2Config:
		return nil
	}
	return fmt.Errorf("%s is not a container image: its config has media type %s", ref, cfg.MediaType)
}

// incomplete wraps an error about an image that is present: a NotFound
// there means missing content (a blob), so it keeps its message but loses
// the class, which callers read as "no such image".
func incomplete(err error, format string, args ...any) error {
	if err = native(err); errdefs.IsNotFound(err) {
		return fmt.Errorf("%s: content of the image missing on the node: %v", fmt.Sprintf(format, args...), err)
	}
	return wrapErr(err, format, args...)
}

func (r *Runtime) remember(ctx context.Context, ref string, img client.Image) (cachedImage, error) {
	spec, err := img.Spec(ctx)
	if err != nil {
		return cachedImage{}, wrapErr(err, "read image config %s", ref)
	}
	ci := cachedImage{img: img, config: spec.Config}
	r.images.put(ref, ci)
	return ci, nil
}

func (r *Runtime) pull(ctx context.Context, ref string, auth RegistryAuth) (cachedImage, error) {
	hosts := config.ConfigureHosts(ctx, config.HostOptions{
		Credentials: func(host string) (string, string, error) {
			c := auth[host]
			return c.Username, c.Password, nil
		},
		DefaultTLS: r.registryTLS,
		// Without a scheme, loopback registries are tried over plain HTTP and
		// TLS verification is silently skipped: never allow that.
		DefaultScheme: "https",
		HostDir:       r.hostDir(),
	})
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
	img, err := r.client.Pull(ctx, ref,
		client.WithResolver(resolver),
		client.WithPullUnpack,
		client.WithPullSnapshotter(r.snapshot),
	)
	if err != nil {
		native := wrapErr(err, "pull")
		return cachedImage{}, &ImageError{Ref: ref, Class: classifyPullError(native), Err: native}
	}
	if err := checkContainerImage(ctx, ref, img); err != nil {
		return cachedImage{}, &ImageError{Ref: ref, Class: PullOther, Err: err}
	}
	return r.remember(ctx, ref, img)
}

func (r *Runtime) hostDir() func(string) (string, error) {
	if r.hostsDir == "" {
		return nil
	}
	return config.HostDirFromRoot(r.hostsDir)
}

func hostOfRef(ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	return reference.Domain(named)
}

// classifyPullError maps the many shapes of registry failures to the four
// classes a user sees.
func classifyPullError(err error) PullErrorClass {
	var status remoteerrors.ErrUnexpectedStatus
	switch {
	case errdefs.IsNotFound(err):
		return PullNotFound
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err),
		// The resolver's "pull access denied ...": no credentials for a
		// registry that wants them, or a token the registry refused.
		errors.Is(err, docker.ErrInvalidAuthorization):
		return PullUnauthorized
	case errors.As(err, &status):
		switch status.StatusCode {
		case 401, 403:
			return PullUnauthorized
		case 404:
			return PullNotFound
		}
		return PullOther
	}
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &certErr) {
		// A TLS failure is not "unreachable": the registry answered and
		// could not be trusted. Other keeps the x509 message for the user.
		return PullOther
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.As(err, &dnsErr) || errors.As(err, &opErr) {
		return PullUnreachable
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return PullUnreachable
	}
	return PullOther
}
