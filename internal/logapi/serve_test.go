package logapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"k8s.io/client-go/rest"
)

// TestUnitPeers: a forwarding manager sends its request, with its token,
// only to a peer showing the certificate that peer's Lease publishes (or
// one the given CA signed), and nothing at all to any other.
func TestUnitPeers(t *testing.T) {
	var seen atomic.Int32
	var auth atomic.Value
	peer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		auth.Store(r.Header.Get("Authorization"))
		io.WriteString(w, "output")
	}))
	defer peer.Close()
	sum := sha256.Sum256(peer.Certificate().Raw)
	pin := hex.EncodeToString(sum[:])
	other := sha256.Sum256([]byte("another certificate"))
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: peer.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{BearerToken: "manager-token"}

	for _, tc := range []struct {
		name, ca, pin string
		wantErr       string // from Client or the request; "" succeeds
	}{
		{name: "the pinned certificate", pin: pin},
		{name: "another certificate than the Lease's", pin: hex.EncodeToString(other[:]), wantErr: "is not the one its node Lease publishes"},
		{name: "no pin published", pin: "", wantErr: "publishes no certificate"},
		{name: "a CA that signed it, pin ignored", ca: caFile, pin: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := seen.Load()
			peers, err := NewPeers(cfg, tc.ca)
			if err != nil {
				t.Fatal(err)
			}
			c, err := peers.Client(tc.pin)
			if err == nil {
				var resp *http.Response
				if resp, err = c.Get(peer.URL + "/log"); err == nil {
					resp.Body.Close()
				}
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("forward: %v", err)
			case tc.wantErr == "":
				if seen.Load() != before+1 || auth.Load() != "Bearer manager-token" {
					t.Errorf("peer saw %d requests, Authorization %q; want 1 with the manager's token", seen.Load()-before, auth.Load())
				}
			case err == nil || !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("forward: %v, want an error saying %q", err, tc.wantErr)
			case seen.Load() != before:
				t.Errorf("the peer got the request although it was refused")
			}
		})
	}
}

// TestUnitPeersReuseByPin: one client per pin, so connections to a peer
// are reused; the set is bounded, as pins change with every restart.
func TestUnitPeersReuseByPin(t *testing.T) {
	peers, err := NewPeers(&rest.Config{}, "")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := peers.Client("aa")
	b, _ := peers.Client("aa")
	if a != b {
		t.Errorf("two clients for one pin")
	}
	for i := range 2 * maxPinned {
		if _, err := peers.Client(strings.Repeat("b", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(peers.pinned); n > maxPinned {
		t.Errorf("%d clients kept, want at most %d", n, maxPinned)
	}
}
