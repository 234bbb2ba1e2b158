// Package cninet makes a throwaway CNI network for tests of network: pod:
// a bridge conflist of the standard plugins (Debian's
// containernetworking-plugins) with its own bridge, subnet and IPAM state,
// and counts what calls on it could leak — addresses, veths, masquerade
// chains and pinned namespaces — so a test can require all of it be zero.
package cninet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fnlet/fnlet/internal/testenv"
)

// BinDirs are where the standard plugins are looked for.
var BinDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// Net is one test network.
type Net struct {
	Name    string // the network's name (conflist "name")
	Bridge  string
	Subnet  string
	ConfDir string // holds only this network's conflist
	DataDir string // host-local IPAM state
	NSDir   string // where the runtime pins namespaces
}

// Missing says why no network can be made here ("" when one can).
func Missing() string {
	if os.Geteuid() != 0 {
		return "CNI test networks need root"
	}
	for _, d := range BinDirs {
		if _, err := os.Stat(filepath.Join(d, "bridge")); err == nil {
			if _, err := exec.LookPath("iptables"); err != nil {
				return "iptables not found (the bridge plugin's ipMasq needs it; hack/install-deps.sh installs it)"
			}
			return ""
		}
	}
	return fmt.Sprintf("no CNI bridge plugin in %v (apt-get install containernetworking-plugins; hack/install-deps.sh does)", BinDirs)
}

// New writes a network's configuration under dir. Remove deletes its
// bridge afterwards.
func New(dir string) (*Net, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	h := hex.EncodeToString(b[:])
	n := &Net{
		Name:    "fnlet-test-" + h,
		Bridge:  "fnt" + h,
		Subnet:  fmt.Sprintf("10.%d.%d.0/24", 200+int(b[0])%50, b[1]),
		ConfDir: filepath.Join(dir, "net.d"),
		DataDir: filepath.Join(dir, "ipam"),
		NSDir:   filepath.Join(dir, "netns"),
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}
  }]
}`, n.Name, n.Bridge, n.Subnet, n.DataDir)
	if err := os.MkdirAll(n.ConfDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(n.ConfDir, "10-test.conflist"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return n, nil
}

// ForTest makes a network for t in a directory of its own, removed with
// its bridge when t ends; where none can be made, t is marked missing a
// daemon (testenv.Missing: a skip saying why, or a failure under
// FNLET_REQUIRE_DAEMONS=1).
func ForTest(t testing.TB) *Net {
	t.Helper()
	if why := Missing(); why != "" {
		testenv.Missing(t, "%s", why)
	}
	n, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Remove)
	return n
}

// Remove deletes the bridge (the plugins never do).
func (n *Net) Remove() {
	_ = exec.Command("ip", "link", "delete", n.Bridge).Run()
}

// Leaks is what is left of calls on the network.
type Leaks struct {
	Addresses int // host-local allocations
	Veths     int // links attached to the bridge
	Chains    int // masquerade chains of the network in the nat table
	Pins      int // pinned namespaces (dirs under NSDir)
}

func (l Leaks) String() string {
	return fmt.Sprintf("%d addresses, %d veths, %d iptables chains, %d namespaces", l.Addresses, l.Veths, l.Chains, l.Pins)
}

// Zero says whether nothing is left.
func (l Leaks) Zero() bool { return l == Leaks{} }

// Count counts what is left now.
func (n *Net) Count() (Leaks, error) {
	var l Leaks
	es, err := os.ReadDir(filepath.Join(n.DataDir, n.Name))
	if err != nil && !os.IsNotExist(err) {
		return l, err
	}
	for _, e := range es {
		// host-local keeps a lock and its last reserved IP besides one file
		// per allocated address.
		if name := e.Name(); name != "lock" && !strings.HasPrefix(name, "last_reserved_ip") {
			l.Addresses++
		}
	}
	out, err := exec.Command("ip", "-o", "link", "show", "master", n.Bridge).CombinedOutput()
	if err == nil {
		l.Veths = strings.Count(string(out), "\n")
	} else if !strings.Contains(string(out), "does not exist") && !strings.Contains(string(out), "Cannot find device") {
		return l, fmt.Errorf("ip link show master %s: %v: %s", n.Bridge, err, out)
	}
	out, err = exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		return l, fmt.Errorf("iptables -t nat -S: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// The bridge plugin comments each rule `name: "<net>" id: "<ctr>"`.
		if strings.HasPrefix(line, "-A POSTROUTING") && strings.Contains(line, fmt.Sprintf("name: \\\"%s\\\"", n.Name)) {
			l.Chains++
		}
	}
	pins, err := os.ReadDir(n.NSDir)
	if err != nil && !os.IsNotExist(err) {
		return l, err
	}
	l.Pins = len(pins)
	return l, nil
}
