package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/controllers"
	"github.com/fnlet/fnlet/internal/logapi"
	"github.com/fnlet/fnlet/internal/testenv/kubeapi"
	"github.com/fnlet/fnlet/internal/testenv/logprobe"
	"github.com/fnlet/fnlet/test/testfn/pattern"
)

// TestLogAPI runs two managers serving the log API and reads calls'
// output from them as users the real apiserver authenticates (client
// certificates, delegated authentication) and authorizes (RBAC through
// SubjectAccessReviews): the manager's side of the aggregated API, where
// the apiserver's front proxy would send the same requests.
func TestLogAPI(t *testing.T) {
	requireEnv(t)
	ctx := context.Background()
	ns := newNamespace(t)
	grantAuthReader(t)
	addr := map[string]string{}
	for i, node := range []string{"n1", "n2"} {
		addr[node] = freeAddress(t)
		_, port, _ := net.SplitHostPort(addr[node])
		startManager(t, node, t.TempDir(), "--containerd-namespace", nodeNamespaces[i],
			"--log-api-bind-address", ":"+port, "--log-api-advertise-address", addr[node], "--log-retention", "1h")
	}
	reader := userClient(t, "log-reader")
	outsider := userClient(t, "log-outsider")
	bindLogReader(t, ns, "log-reader")

	big := create(t, call("big", ns, "n1").Args("-stdout-bytes", "50M", "-stderr-text", "done").Obj())
	env.calls.WaitFinished(t, big, 3*time.Minute)
	path := func(name string) string {
		return "/apis/logs.fnlet.dev/v1alpha1/namespaces/" + ns + "/functioncalls/" + name + "/log"
	}

	t.Run("anonymous is refused", func(t *testing.T) {
		anon := userClientInsecureAnonymous(t)
		code, body := getLog(t, anon, addr["n1"], path("big"))
		if code != http.StatusUnauthorized {
			t.Errorf("anonymous: %d %s, want 401", code, clip(body))
		}
	})
	t.Run("a user without the verb gets 403", func(t *testing.T) {
		code, body := getLog(t, outsider, addr["n1"], path("big"))
		if code != http.StatusForbidden || !bytes.Contains(body, []byte(`cannot get resource \"functioncalls/log\"`)) {
			t.Errorf("outsider: %d %s, want 403 naming functioncalls/log", code, clip(body))
		}
	})
	t.Run("50 MiB read back byte-exact", func(t *testing.T) {
		start := time.Now()
		code, body := getLog(t, reader, addr["n1"], path("big"))
		took := time.Since(start)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, clip(body))
		}
		if err := pattern.Check(pattern.Text, 50<<20, body); err != nil {
			t.Fatal(err)
		}
		t.Logf("50 MiB straight from the manager in %s (%.0f MiB/s)", took.Round(time.Millisecond), 50/took.Seconds())
	})
	t.Run("forwarded from the other node, byte-exact", func(t *testing.T) {
		// n2 forwards only to the certificate n1's Lease publishes: the one
		// n1 serves.
		var lease coordinationv1.Lease
		if err := env.k8s.Get(ctx, types.NamespacedName{Namespace: "fnlet-system", Name: controllers.NodeLeasePrefix + "n1"}, &lease); err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", addr["n1"], &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].Raw)
		conn.Close()
		if pin := lease.Annotations["fnlet.dev/log-cert-sha256"]; pin != hex.EncodeToString(sum[:]) {
			t.Fatalf("n1's Lease publishes certificate sha256 %q, n1 serves %x", pin, sum)
		}
		code, body := getLog(t, reader, addr["n2"], path("big"))
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, clip(body))
		}
		if err := pattern.Check(pattern.Text, 50<<20, body); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("offset and tail", func(t *testing.T) {
		const n = 50 << 20
		for _, tc := range []struct {
			query string
			from  int64
		}{
			{"?offset=1000", 1000},
			{"?tailBytes=4096", n - 4096},
			{"?offset=" + strconv.Itoa(n-10), n - 10},
		} {
			code, body := getLog(t, reader, addr["n1"], path("big")+tc.query)
			if code != http.StatusOK {
				t.Fatalf("%s: %d %s", tc.query, code, clip(body))
			}
			want := pattern.Bytes(pattern.Text, n)[tc.from:]
			if !bytes.Equal(body, want) {
				t.Errorf("%s: %d bytes, want the %d from %d", tc.query, len(body), len(want), tc.from)
			}
		}
		code, body := getLog(t, reader, addr["n2"], path("big")+"?stream=stderr")
		if code != http.StatusOK || string(body) != "done\n" {
			t.Errorf("stderr: %d %q", code, clip(body))
		}
	})
	t.Run("follow of a running call, from either node", func(t *testing.T) {
		for _, via := range []string{"n1", "n2"} {
			key := create(t, call("follow-"+via, ns, "n1").Args("-stdout-text", "first", "-sleep", "3s").Obj())
			resp := open(t, reader, addr[via], path(key.Name)+"?follow=true")
			first := make([]byte, len("first\n"))
			if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
				t.Fatalf("via %s: read %q, %v", via, first, err)
			}
			var fc fnletv1.FunctionCall
			if err := env.k8s.Get(ctx, key, &fc); err != nil {
				t.Fatal(err)
			}
			if fc.IsFinished() {
				t.Errorf("via %s: the call had already ended (%s) when its first line arrived", via, fc.Status.Phase)
			}
			rest, err := io.ReadAll(resp.Body) // ends when the call ends
			resp.Body.Close()
			if err != nil || len(rest) != 0 {
				t.Errorf("via %s: after the first line %q, %v", via, rest, err)
			}
			if err := env.k8s.Get(ctx, key, &fc); err != nil || !fc.IsFinished() {
				t.Errorf("via %s: follow ended before the call did (%s, %v)", via, fc.Status.Phase, err)
			}
		}
	})
	t.Run("through the apiserver (aggregated API)", func(t *testing.T) {
		registerAPIService(t, addr["n2"])
		for _, tc := range []struct {
			user   string
			params map[string]string
			code   int
			want   []byte
		}{
			{"log-outsider", nil, http.StatusForbidden, nil},
			{"log-reader", nil, http.StatusOK, pattern.Bytes(pattern.Text, 50<<20)},
			{"log-reader", map[string]string{"tailBytes": "100"}, http.StatusOK, pattern.Bytes(pattern.Text, 50<<20)[50<<20-100:]},
			{"log-reader", map[string]string{"stream": "stderr", "follow": "true"}, http.StatusOK, []byte("done\n")},
		} {
			req := restClient(t, tc.user).Get().AbsPath(path("big"))
			for k, v := range tc.params {
				req = req.Param(k, v)
			}
			start := time.Now()
			body, err := req.DoRaw(ctx)
			if len(body) == 50<<20 {
				t.Logf("50 MiB through the apiserver in %s (%.0f MiB/s)", time.Since(start).Round(time.Millisecond), 50/time.Since(start).Seconds())
			}
			if tc.code == http.StatusForbidden {
				if !apierrors.IsForbidden(err) {
					t.Errorf("%s %v: %v, want 403", tc.user, tc.params, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(body, tc.want) {
				t.Errorf("%s %v: %d bytes (%v), want %d bytes", tc.user, tc.params, len(body), err, len(tc.want))
			}
		}
		// A running call on n1, followed through the apiserver and n2.
		key := create(t, call("follow-apiserver", ns, "n1").Args("-stdout-text", "first", "-sleep", "3s").Obj())
		r, err := restClient(t, "log-reader").Get().AbsPath(path(key.Name)).Param("follow", "true").Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		first := make([]byte, len("first\n"))
		if _, err := io.ReadFull(r, first); err != nil || string(first) != "first\n" {
			t.Fatalf("read %q, %v", first, err)
		}
		var fc fnletv1.FunctionCall
		if err := env.k8s.Get(ctx, key, &fc); err != nil || fc.IsFinished() {
			t.Errorf("the call had ended (%s, %v) when its first line arrived", fc.Status.Phase, err)
		}
		if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
			t.Errorf("after the first line %q, %v", rest, err)
		}
		if err := env.k8s.Get(ctx, key, &fc); err != nil || !fc.IsFinished() {
			t.Errorf("follow ended before the call did (%s, %v)", fc.Status.Phase, err)
		}
	})
	t.Run("no such call", func(t *testing.T) {
		code, body := getLog(t, reader, addr["n1"], path("nope"))
		if code != http.StatusNotFound {
			t.Errorf("%d %s, want 404", code, clip(body))
		}
	})
}

// grantAuthReader gives the manager user what config/manager's RoleBinding
// gives its service account: the front-proxy CA in kube-system.
func grantAuthReader(t *testing.T) {
	t.Helper()
	err := env.k8s.Create(context.Background(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "fnlet-manager-auth-reader", Namespace: "kube-system"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "extension-apiserver-authentication-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: kubeapi.ManagerUser}},
	})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// bindLogReader binds config/rbac/log_reader_role.yaml's rule to user in ns.
func bindLogReader(t *testing.T, ns, user string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "fnlet-log-reader", Namespace: ns},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{logapi.Group}, Resources: []string{"functioncalls/log"}, Verbs: []string{"get"}}}}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "fnlet-log-reader", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}
	if err := env.k8s.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := env.k8s.Create(ctx, rb); err != nil {
		t.Fatal(err)
	}
}

// userClient is an HTTPS client presenting user's client certificate
// (issued by the apiserver's client CA), not verifying the managers'
// self-signed serving certificates.
func userClient(t *testing.T, user string) *http.Client {
	t.Helper()
	kc, err := env.api.Kubeconfig(envtest.User{Name: user})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	return insecureClient(t, cfg)
}

func userClientInsecureAnonymous(t *testing.T) *http.Client {
	t.Helper()
	kc, err := env.api.Kubeconfig(envtest.User{Name: "log-anon-base"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSClientConfig.CertData, cfg.TLSClientConfig.KeyData, cfg.TLSClientConfig.CertFile, cfg.TLSClientConfig.KeyFile = nil, nil, "", ""
	cfg.BearerToken = ""
	return insecureClient(t, cfg)
}

// insecureClient presents cfg's credentials and does not verify the
// manager's certificate (a user's side of the test, not a peer's).
func insecureClient(t *testing.T, cfg *rest.Config) *http.Client {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.TLSClientConfig.CAFile, c.TLSClientConfig.CAData, c.TLSClientConfig.ServerName = "", nil, ""
	c.TLSClientConfig.Insecure = true
	c.Timeout = 0
	hc, err := rest.HTTPClientFor(c)
	if err != nil {
		t.Fatal(err)
	}
	return hc
}

func freeAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// open GETs path from the manager at addr, waiting for it to listen (it
// starts in the background): connection refused is retried, on a timer.
func open(t *testing.T, c *http.Client, addr, path string) *http.Response {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get("https://" + addr + path)
		if err == nil {
			return resp
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from %s: %v", path, addr, err)
		}
		<-time.After(200 * time.Millisecond)
	}
}

func getLog(t *testing.T, c *http.Client, addr, path string) (int, []byte) {
	t.Helper()
	resp := open(t, c, addr, path)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, b
}

func clip(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%s... (%d bytes)", b[:300], len(b))
	}
	var st metav1.Status
	if json.Unmarshal(b, &st) == nil && st.Message != "" {
		return fmt.Sprintf("%d %s: %s", st.Code, st.Reason, st.Message)
	}
	return string(b)
}

// restClient is a client of the apiserver as user.
func restClient(t *testing.T, user string) rest.Interface {
	t.Helper()
	kc, err := env.api.Kubeconfig(envtest.User{Name: user})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs.Discovery().RESTClient()
}

// registerAPIService points config/logapi's APIService at the manager
// at addr until the test ends.
func registerAPIService(t *testing.T, addr string) {
	t.Helper()
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	remove, err := logprobe.RegisterAPIService(context.Background(), env.k8s, kubeapi.ManagerNamespace, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remove(context.Background()) })
}
