package logapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
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

// PeerClient is the HTTPS client a manager forwards with: it presents the
// manager's own credentials (token or client certificate of cfg) and
// trusts peers' serving certificates by caFile, or, without one, does
// not verify them (the peers' self-signed default).
func PeerClient(cfg *rest.Config, caFile string) (*http.Client, error) {
	c := rest.CopyConfig(cfg)
	c.TLSClientConfig.CAFile, c.TLSClientConfig.CAData = caFile, nil
	c.TLSClientConfig.ServerName = ""
	c.TLSClientConfig.Insecure = caFile == ""
	c.Timeout = 0
	return rest.HTTPClientFor(c)
}
