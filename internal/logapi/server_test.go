package logapi

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// headerAuthn takes the user from X-Test-User ("anonymous" → anonymous).
type headerAuthn struct{}

func (headerAuthn) AuthenticateRequest(r *http.Request) (*authenticator.Response, bool, error) {
	switch name := r.Header.Get("X-Test-User"); name {
	case "":
		return nil, false, nil
	case "anonymous":
		return &authenticator.Response{User: &user.DefaultInfo{Name: user.Anonymous, Groups: []string{user.AllUnauthenticated}}}, true, nil
	default:
		return &authenticator.Response{User: &user.DefaultInfo{Name: name, Groups: []string{user.AllAuthenticated}}}, true, nil
	}
}

// allowReader allows get functioncalls/log in namespace "ns" to "reader".
type allowReader struct{}

func (allowReader) Authorize(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	if a.GetUser().GetName() == "reader" && a.GetVerb() == "get" && a.GetAPIGroup() == Group &&
		a.GetResource() == Resource && a.GetSubresource() == Subresource && a.GetNamespace() == "ns" {
		return authorizer.DecisionAllow, "", nil
	}
	return authorizer.DecisionNoOpinion, "", nil
}

func call(name, node string, phase fnletv1.CallPhase, logDir string) *fnletv1.FunctionCall {
	fc := &fnletv1.FunctionCall{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)}}
	fc.Status.NodeName, fc.Status.Phase, fc.Status.LogDir = node, phase, logDir
	return fc
}

func TestUnitServeLog(t *testing.T) {
	root := t.TempDir()
	paths := func(uid string) (string, string) {
		return filepath.Join(root, uid, "stdout"), filepath.Join(root, uid, "stderr")
	}
	done := call("done", "n1", fnletv1.PhaseSucceeded, "/x")
	if err := os.MkdirAll(filepath.Join(root, string(done.UID)), 0o700); err != nil {
		t.Fatal(err)
	}
	out, errOut := paths(string(done.UID))
	if err := os.WriteFile(out, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(errOut, []byte("oops"), 0o600); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := fnletv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	objs := []*fnletv1.FunctionCall{
		done,
		call("expired", "n1", fnletv1.PhaseSucceeded, "/x"),
		call("never-ran", "n1", fnletv1.PhaseFailed, ""),
		call("elsewhere", "n2", fnletv1.PhaseRunning, "/x"),
		call("pending", "", fnletv1.PhasePending, ""),
	}
	b := fake.NewClientBuilder().WithScheme(scheme)
	for _, o := range objs {
		b = b.WithObjects(o)
	}
	c := b.Build()
	srv := &Server{NodeName: "n1", Calls: c, APIReader: c, Paths: paths, Authn: headerAuthn{}, Authz: allowReader{}, Log: logr.Discard()}
	base := groupVersionPath + "/namespaces/ns/functioncalls/"
	for _, tc := range []struct {
		name, user, path string
		header           map[string]string
		wantCode         int
		wantBody         string // exact for 200, a substring otherwise
	}{
		{"no credentials", "", base + "done/log", nil, 401, "Unauthorized"},
		{"anonymous", "anonymous", base + "done/log", nil, 401, "anonymous"},
		{"without the verb", "mallory", base + "done/log", nil, 403, `cannot get resource \"functioncalls/log\"`},
		{"other namespace", "reader", groupVersionPath + "/namespaces/other/functioncalls/done/log", nil, 403, "forbidden"},
		{"whole stdout", "reader", base + "done/log", nil, 200, "0123456789"},
		{"stderr", "reader", base + "done/log?stream=stderr", nil, 200, "oops"},
		{"offset", "reader", base + "done/log?offset=7", nil, 200, "789"},
		{"offset past the end", "reader", base + "done/log?offset=70", nil, 200, ""},
		{"tail", "reader", base + "done/log?tailBytes=3", nil, 200, "789"},
		{"follow of an ended call ends", "reader", base + "done/log?follow=true&tailBytes=4", nil, 200, "6789"},
		{"bad query", "reader", base + "done/log?offset=1&tailBytes=1", nil, 400, "together"},
		{"no such call", "reader", base + "nope/log", nil, 404, "not found"},
		{"expired output", "reader", base + "expired/log", nil, 410, "no longer on node n1"},
		{"failed before it ran: no output", "reader", base + "never-ran/log", nil, 200, ""},
		{"not yet claimed", "reader", base + "pending/log", nil, 200, ""},
		{"another node's, already forwarded once", "reader", base + "elsewhere/log", map[string]string{ForwardedHeader: "n3"}, 503, "runs on node n2"},
		{"another node's, no peers known", "reader", base + "elsewhere/log", nil, 503, "does not forward"},
		{"unknown path", "reader", groupVersionPath + "/namespaces/ns/functioncalls/done", nil, 404, ""},
		{"discovery", "reader", groupVersionPath, nil, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			if tc.user != "" {
				req.Header.Set("X-Test-User", tc.user)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tc.wantCode {
				t.Fatalf("code %d, want %d: %s", rec.Code, tc.wantCode, body)
			}
			switch {
			case tc.name == "discovery":
				if !strings.Contains(string(body), `"functioncalls/log"`) {
					t.Errorf("discovery %s lacks functioncalls/log", body)
				}
			case tc.wantCode == 200:
				if string(body) != tc.wantBody {
					t.Errorf("body %q, want %q", body, tc.wantBody)
				}
			case !strings.Contains(string(body), tc.wantBody):
				t.Errorf("body %s, want it to contain %q", body, tc.wantBody)
			}
		})
	}
}
