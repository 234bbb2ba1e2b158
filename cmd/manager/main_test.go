package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindInit(t *testing.T) {
	present := filepath.Join(t.TempDir(), "fnlet-init")
	if err := os.WriteFile(present, []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, flag, want, wantErr string
	}{
		{name: "disabled", flag: "none", want: ""},
		{name: "explicit", flag: present, want: present},
		{name: "explicit but missing", flag: present + "-nope", wantErr: "--init-binary"},
		// The test binary has no fnlet-init beside it: run without, with a warning.
		{name: "default, none beside the executable", flag: "", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findInit(tc.flag)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got (%q, %v), want %q", got, err, tc.want)
			}
		})
	}
}

func TestMetricsOptions(t *testing.T) {
	secure := metricsOptions(options{metricsAddr: ":8443", metricsSecure: true})
	if !secure.SecureServing || secure.FilterProvider == nil || secure.BindAddress != ":8443" {
		t.Errorf("--metrics-secure: SecureServing %v, filter set %v, address %q: want HTTPS behind the authn/authz filter",
			secure.SecureServing, secure.FilterProvider != nil, secure.BindAddress)
	}
	cfg := &tls.Config{}
	for _, f := range secure.TLSOpts {
		f(cfg)
	}
	if len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "http/1.1" || cfg.MinVersion < tls.VersionTLS12 {
		t.Errorf("TLS: NextProtos %v MinVersion %x, want http/1.1 only and TLS >= 1.2", cfg.NextProtos, cfg.MinVersion)
	}
	plain := metricsOptions(options{metricsAddr: "127.0.0.1:9090", metricsSecure: false})
	if plain.SecureServing || plain.FilterProvider != nil {
		t.Errorf("--metrics-secure=false: SecureServing %v, filter set %v: want plain HTTP", plain.SecureServing, plain.FilterProvider != nil)
	}
}
