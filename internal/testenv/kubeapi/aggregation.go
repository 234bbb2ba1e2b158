package kubeapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// FrontProxyClientName is the CN of the client certificate the apiserver
// presents to aggregated API servers.
const FrontProxyClientName = "front-proxy-client"

// Aggregation turns on the apiserver's aggregation layer, as kubeadm
// does: a front-proxy CA and client certificate (--requestheader-*,
// --proxy-client-*), and --enable-aggregator-routing so an APIService's
// Service is reached through its EndpointSlices (envtest has no
// kube-proxy for ClusterIPs). The apiserver then publishes the front-proxy
// CA in kube-system/extension-apiserver-authentication for aggregated API
// servers to verify it with.
func Aggregation() Option {
	return func(te *envtest.Environment, dir string) error {
		pki := filepath.Join(dir, "front-proxy")
		if err := os.MkdirAll(pki, 0o700); err != nil {
			return err
		}
		caCert, caKey, err := newCert(nil, nil, "front-proxy-ca", true)
		if err != nil {
			return err
		}
		cert, key, err := newCert(caCert, caKey, FrontProxyClientName, false)
		if err != nil {
			return err
		}
		files := map[string][]byte{"ca.crt": caCert.Raw, "client.crt": cert.Raw}
		for name, der := range files {
			if err := os.WriteFile(filepath.Join(pki, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
				return err
			}
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(pki, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			return err
		}
		if te.ControlPlane.APIServer == nil {
			te.ControlPlane.APIServer = &envtest.APIServer{}
		}
		args := te.ControlPlane.APIServer.Configure()
		args.Set("requestheader-client-ca-file", filepath.Join(pki, "ca.crt"))
		args.Set("requestheader-allowed-names", FrontProxyClientName)
		args.Set("requestheader-username-headers", "X-Remote-User")
		args.Set("requestheader-group-headers", "X-Remote-Group")
		args.Set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
		args.Set("proxy-client-cert-file", filepath.Join(pki, "client.crt"))
		args.Set("proxy-client-key-file", filepath.Join(pki, "client.key"))
		args.Set("enable-aggregator-routing", "true")
		return nil
	}
}

// newCert makes a CA (parent nil) or a client certificate signed by parent.
func newCert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, ca bool) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	signer, signerKey := tmpl, key
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}
