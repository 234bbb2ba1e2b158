package logapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/options"
	"k8s.io/client-go/rest"
)

// Serving is the HTTPS side of a Server: its listener and certificate,
// and the delegated authentication and authorization it is given.
type Serving struct {
	// BindAddress is host:port to listen on.
	BindAddress string
	// CertDir holds tls.crt and tls.key; empty: a self-signed
	// certificate made at start (the APIService then skips TLS
	// verification, as metrics-server's default does).
	CertDir string
	// Kubeconfig is the file the delegated TokenReviews and
	// SubjectAccessReviews use and that the front-proxy CA is read with
	// (configmap kube-system/extension-apiserver-authentication); empty:
	// the in-cluster config.
	Kubeconfig string

	info *server.SecureServingInfo
}

// Prepare listens and builds s's authenticator and authorizer into srv.
func (s *Serving) Prepare(srv *Server) error {
	host, portStr, err := net.SplitHostPort(s.BindAddress)
	if err != nil {
		return fmt.Errorf("log API bind address %q: %w", s.BindAddress, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("log API bind address %q: %w", s.BindAddress, err)
	}
	ss := options.NewSecureServingOptions()
	ss.BindAddress = net.ParseIP("0.0.0.0")
	if host != "" {
		ss.BindAddress = net.ParseIP(host)
	}
	ss.BindPort = port
	// HTTP/1.1 only: a follow is one long response; no HTTP/2 rapid reset.
	ss.DisableHTTP2Serving = true
	if s.CertDir != "" {
		ss.ServerCert.CertKey.CertFile = filepath.Join(s.CertDir, "tls.crt")
		ss.ServerCert.CertKey.KeyFile = filepath.Join(s.CertDir, "tls.key")
	} else {
		// In memory only: a manager's root filesystem is read-only, and a
		// key written to the working directory would outlive the process.
		ss.ServerCert.CertDirectory = ""
		if err := ss.MaybeDefaultWithSelfSignedCerts("localhost", nil, nil); err != nil {
			return err
		}
	}
	if err := ss.ApplyTo(&s.info); err != nil {
		return err
	}
	authn := options.NewDelegatingAuthenticationOptions()
	authn.RemoteKubeConfigFile = s.Kubeconfig
	var authnInfo server.AuthenticationInfo
	if err := authn.ApplyTo(&authnInfo, s.info, nil); err != nil {
		return fmt.Errorf("log API authentication: %w", err)
	}
	authz := options.NewDelegatingAuthorizationOptions()
	authz.RemoteKubeConfigFile = s.Kubeconfig
	authz.AlwaysAllowPaths = nil // no path is open to everyone
	var authzInfo server.AuthorizationInfo
	if err := authz.ApplyTo(&authzInfo); err != nil {
		return fmt.Errorf("log API authorization: %w", err)
	}
	srv.Authn, srv.Authz = authnInfo.Authenticator, authzInfo.Authorizer
	return nil
}

// Port is the port actually listened on (after Prepare).
func (s *Serving) Port() int { return s.info.Listener.Addr().(*net.TCPAddr).Port }

// Runnable serves srv until ctx ends: a controller-runtime Runnable.
type Runnable struct {
	Serving *Serving
	Server  *Server
}

// NeedLeaderElection: every node serves its own calls.
func (r Runnable) NeedLeaderElection() bool { return false }

func (r Runnable) Start(ctx context.Context) error {
	stopped, _, err := r.Serving.info.Serve(r.Server, 5*time.Second, ctx.Done())
	if err != nil {
		return fmt.Errorf("serve log API: %w", err)
	}
	<-stopped
	return nil
}

// CertSHA256 is the SHA-256 (hex) of the leaf certificate served now
// (after Prepare): the node publishes it on its Lease, and peers that
// forward to this manager pin it. Read at every Lease renewal, so a
// certificate reloaded from CertDir is published within one.
func (s *Serving) CertSHA256() string {
	if s.info == nil || s.info.Cert == nil {
		return ""
	}
	certPEM, _ := s.info.Cert.CurrentCertKeyContent()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return ""
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// Peers makes the HTTPS clients a manager forwards with. They present the
// manager's own credentials (token or client certificate of its config)
// and authenticate the peer: by a CA (--log-api-peer-ca) when one is
// given, otherwise by pinning the certificate the peer publishes on its
// Lease (CertSHA256), which only managers can write. A peer that shows any
// other certificate gets no request, so neither the manager's token nor
// the query reach an impostor on the pod network.
type Peers struct {
	cfg *rest.Config
	ca  *http.Client // with a CA; nil: pin

	mu     sync.Mutex
	pinned map[string]*http.Client // by pin
}

// maxPinned bounds the clients kept by pin: a manager's self-signed
// certificate, and so its pin, changes at each restart.
const maxPinned = 64

// NewPeers makes the peer clients of a manager whose API config is cfg;
// caFile is the PEM CA of the peers' certificates, or empty to pin.
func NewPeers(cfg *rest.Config, caFile string) (*Peers, error) {
	p := &Peers{cfg: rest.CopyConfig(cfg), pinned: map[string]*http.Client{}}
	p.cfg.Timeout = 0 // a follow is one long response
	p.cfg.TLSClientConfig.ServerName = ""
	if caFile != "" {
		c := rest.CopyConfig(p.cfg)
		c.TLSClientConfig.CAFile, c.TLSClientConfig.CAData, c.TLSClientConfig.Insecure = caFile, nil, false
		ca, err := rest.HTTPClientFor(c)
		if err != nil {
			return nil, fmt.Errorf("peer client with CA %s: %w", caFile, err)
		}
		p.ca = ca
	}
	return p, nil
}

// Client is the client for a peer that published pin (CertSHA256).
func (p *Peers) Client(pin string) (*http.Client, error) {
	if p.ca != nil {
		return p.ca, nil
	}
	if pin == "" {
		return nil, errors.New("it publishes no certificate to check it by (a manager older than this one, or a --log-api-cert-dir without --log-api-peer-ca)")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.pinned[pin]; ok {
		return c, nil
	}
	c, err := pinnedClient(p.cfg, pin)
	if err != nil {
		return nil, err
	}
	if len(p.pinned) >= maxPinned {
		for k, old := range p.pinned {
			old.CloseIdleConnections()
			delete(p.pinned, k)
		}
	}
	p.pinned[pin] = c
	return c, nil
}

// pinnedClient accepts only a server whose leaf certificate hashes to pin;
// the check runs in the handshake, before any byte of the request.
func pinnedClient(cfg *rest.Config, pin string) (*http.Client, error) {
	c := rest.CopyConfig(cfg)
	c.TLSClientConfig.CAFile, c.TLSClientConfig.CAData, c.TLSClientConfig.Insecure = "", nil, false
	tlsCfg, err := rest.TLSConfigFor(c)
	if err != nil {
		return nil, fmt.Errorf("peer TLS config: %w", err)
	}
	if tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	// The pin replaces chain and name checks: a self-signed certificate
	// for "localhost" has neither a CA we know nor the peer's IP.
	tlsCfg.InsecureSkipVerify, tlsCfg.RootCAs = true, nil
	tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the peer showed no certificate")
		}
		sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
		if got := hex.EncodeToString(sum[:]); got != pin {
			return fmt.Errorf("the peer's certificate (sha256 %s) is not the one its node Lease publishes (sha256 %s)", got, pin)
		}
		return nil
	}
	rt := &http.Transport{
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	wrapped, err := rest.HTTPWrappersForConfig(c, rt)
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	return &http.Client{Transport: wrapped}, nil
}
