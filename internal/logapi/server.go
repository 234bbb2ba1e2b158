// Package logapi serves a call's whole stdout and stderr through the
// Kubernetes API: an aggregated API (APIService v1alpha1.logs.fnlet.dev)
// that every manager serves, as metrics-server serves node metrics.
//
//	GET /apis/logs.fnlet.dev/v1alpha1/namespaces/NS/functioncalls/NAME/log
//	    ?stream=stdout|stderr  (default stdout)
//	    &offset=N              first byte (default 0)
//	    &tailBytes=N           only the last N bytes (not with offset)
//	    &follow=true           keep sending until the call ends
//
// Who may read is ordinary RBAC: the verb get on the resource
// functioncalls/log of API group logs.fnlet.dev in the call's namespace
// (ClusterRole fnlet-log-reader). The kube-apiserver checks it before it
// proxies, and the manager checks it again (delegated authentication of
// the aggregator's front-proxy headers or a bearer token or client
// certificate, delegated authorization by SubjectAccessReview): a request
// that reached the pod some other way gets no further. Anonymous requests
// are refused.
//
// The request reaches any manager behind the Service; only the manager of
// the call's node has the files. Another node's manager forwards it to
// that node's manager (its address is on the node's Lease), over HTTPS,
// authenticated as itself: the receiving manager authorizes the
// forwarding manager like any user (its ClusterRole has get on
// functioncalls/log) and never forwards again.
package logapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/controllers"
)

// The API this package serves.
const (
	Group       = "logs.fnlet.dev"
	Version     = "v1alpha1"
	Resource    = "functioncalls"
	Subresource = "log"
	// ForwardedHeader marks a request one manager forwarded to another:
	// the receiver serves it or fails, it never forwards again.
	ForwardedHeader = "X-Fnlet-Forwarded-By"
	// StartHeader is the offset of the first byte in the body (useful
	// after tailBytes, to resume from StartHeader + bytes read).
	StartHeader = "X-Fnlet-Log-Start"
)

var groupVersionPath = "/apis/" + Group + "/" + Version

// Authorizer is the part of k8s.io/apiserver's authorizer.Authorizer the
// server uses (the delegated SubjectAccessReview authorizer in a manager).
type Authorizer interface {
	Authorize(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error)
}

// Server answers log requests for the calls of one node and forwards the
// others to their node.
type Server struct {
	NodeName string
	// Calls is the manager's cache (this node's unfinished calls): a
	// follow asks it whether the call has ended, at no apiserver cost.
	Calls client.Reader
	// APIReader reads a call from the apiserver: finished calls are not
	// cached. One GET per request (a follow adds none while its call is in
	// the cache).
	APIReader client.Reader
	// Nodes tells where a peer's log API is (its Lease).
	Nodes controllers.NodeLister
	// Paths are the stdout and stderr files of a call on this node.
	Paths func(callUID string) (stdout, stderr string)
	Authn authenticator.Request
	Authz Authorizer
	// Peer gives the client that forwards to another manager, by the
	// certificate pin that manager publishes (see Peers); nil: none.
	Peer PeerClients
	// Retention is said in the 410 answer for expired output.
	Retention string
	// Poll bounds the wait of a follow between checks (default 250ms).
	Poll time.Duration
	Log  logr.Logger
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case path == "/apis/"+Group:
		writeJSON(w, http.StatusOK, apiGroup())
		return
	case path == groupVersionPath:
		writeJSON(w, http.StatusOK, apiResources())
		return
	}
	ns, name, ok := parseLogPath(path)
	if !ok {
		writeStatus(w, apierrors.NewNotFound(schema.GroupResource{}, path))
		return
	}
	if r.Method != http.MethodGet {
		writeStatus(w, apierrors.NewMethodNotSupported(schema.GroupResource{Group: Group, Resource: Resource + "/" + Subresource}, r.Method))
		return
	}
	if !s.authorize(w, r, u, ns, name) {
		return
	}
	q, err := parseQuery(r.URL.Query())
	if err != nil {
		writeStatus(w, apierrors.NewBadRequest(err.Error()))
		return
	}
	s.serveLog(w, r, types.NamespacedName{Namespace: ns, Name: name}, q)
}

// parseLogPath splits .../namespaces/NS/functioncalls/NAME/log.
func parseLogPath(path string) (ns, name string, ok bool) {
	rest, found := strings.CutPrefix(path, groupVersionPath+"/namespaces/")
	if !found {
		return "", "", false
	}
	p := strings.Split(rest, "/")
	if len(p) != 4 || p[1] != Resource || p[3] != Subresource || p[0] == "" || p[2] == "" {
		return "", "", false
	}
	return p[0], p[2], true
}

func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (user.Info, bool) {
	resp, ok, err := s.Authn.AuthenticateRequest(r)
	if err != nil || !ok || isAnonymous(resp.User) {
		msg := "Unauthorized"
		if err != nil {
			s.Log.V(1).Info("authentication failed", "error", err.Error())
		}
		if ok && isAnonymous(resp.User) {
			msg = "anonymous requests are not allowed to read FunctionCall output"
		}
		writeStatus(w, apierrors.NewUnauthorized(msg))
		return nil, false
	}
	// The front-proxy headers were consumed: never pass them on.
	return resp.User, true
}

func isAnonymous(u user.Info) bool {
	if u == nil || u.GetName() == user.Anonymous {
		return true
	}
	for _, g := range u.GetGroups() {
		if g == user.AllUnauthenticated {
			return true
		}
	}
	return false
}

func (s *Server) authorize(w http.ResponseWriter, r *http.Request, u user.Info, ns, name string) bool {
	attrs := authorizer.AttributesRecord{
		User: u, Verb: "get", Namespace: ns, APIGroup: Group, APIVersion: Version,
		Resource: Resource, Subresource: Subresource, Name: name, ResourceRequest: true,
		Path: r.URL.Path,
	}
	decision, reason, err := s.Authz.Authorize(r.Context(), attrs)
	if decision == authorizer.DecisionAllow {
		return true
	}
	if err != nil {
		s.Log.Error(err, "authorization failed", "user", u.GetName())
	}
	msg := fmt.Sprintf("User %q cannot get resource %q in API group %q in the namespace %q", u.GetName(), Resource+"/"+Subresource, Group, ns)
	if reason != "" {
		msg += ": " + reason
	}
	writeStatus(w, apierrors.NewForbidden(schema.GroupResource{Group: Group, Resource: Resource}, name, errors.New(msg)))
	return false
}

func (s *Server) serveLog(w http.ResponseWriter, r *http.Request, key types.NamespacedName, q Query) {
	ctx := r.Context()
	fc, err := s.waitAssigned(ctx, key, q.Follow)
	if err != nil {
		writeStatus(w, err)
		return
	}
	switch node := fc.Status.NodeName; {
	case node == "":
		// Not yet run anywhere, and not followed: no output yet.
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set(StartHeader, "0")
		w.WriteHeader(http.StatusOK)
	case node == s.NodeName:
		s.serveLocal(w, r, fc, q)
	case r.Header.Get(ForwardedHeader) != "":
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("call %s runs on node %s, not on %s that the request was forwarded to", key, node, s.NodeName)))
	default:
		s.forward(w, r, fc)
	}
}

// waitAssigned reads the call; a follow of a call no node has claimed
// yet waits for its claim (reads only, once per Poll × 4).
func (s *Server) waitAssigned(ctx context.Context, key types.NamespacedName, follow bool) (*fnletv1.FunctionCall, error) {
	for {
		var fc fnletv1.FunctionCall
		if err := s.APIReader.Get(ctx, key, &fc); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, apierrors.NewNotFound(fnletv1.GroupVersion.WithResource("functioncalls").GroupResource(), key.Name)
			}
			return nil, apierrors.NewInternalError(fmt.Errorf("read call %s: %w", key, err))
		}
		if fc.Status.NodeName != "" || !follow || fc.IsFinished() {
			return &fc, nil
		}
		select {
		case <-ctx.Done():
			return nil, apierrors.NewTimeoutError("gave up waiting for the call to be claimed", 0)
		case <-time.After(4 * s.poll()):
		}
	}
}

func (s *Server) poll() time.Duration {
	if s.Poll > 0 {
		return s.Poll
	}
	return 250 * time.Millisecond
}

func (s *Server) serveLocal(w http.ResponseWriter, r *http.Request, fc *fnletv1.FunctionCall, q Query) {
	ctx := r.Context()
	stdout, stderr := s.Paths(string(fc.UID))
	path := stdout
	if q.Stream == "stderr" {
		path = stderr
	}
	ended := s.endedFunc(fc)
	f, err := os.Open(path)
	for errors.Is(err, os.ErrNotExist) && q.Follow && !ended(ctx) {
		// Claimed but not yet created: the file comes with the container.
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.poll()):
		}
		f, err = os.Open(path)
	}
	if errors.Is(err, os.ErrNotExist) {
		if fc.Status.LogDir != "" || fc.Status.StartedAt != nil {
			writeStatus(w, expired(fc, s.Retention))
			return
		}
		// Never had a container (failed before it ran): no output.
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set(StartHeader, "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(fmt.Errorf("open %s of call %s/%s: %w", q.Stream, fc.Namespace, fc.Name, err)))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	start := q.start(fi.Size())
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(StartHeader, strconv.FormatInt(start, 10))
	h.Set("X-Content-Type-Options", "nosniff")
	if !q.Follow {
		n := max(0, fi.Size()-start)
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		w.WriteHeader(http.StatusOK)
		if _, err := io.Copy(w, io.NewSectionReader(f, start, n)); err != nil {
			s.Log.V(1).Info("log read ended early", "call", fc.Namespace+"/"+fc.Name, "error", err.Error())
		}
		return
	}
	w.WriteHeader(http.StatusOK)
	flush := func() {}
	if fl, ok := w.(http.Flusher); ok {
		flush = fl.Flush
		flush()
	}
	wake, stop := watchFile(path)
	defer stop()
	fol := follower{ended: ended, wake: wake, poll: s.poll()}
	if _, err := fol.copyFrom(ctx, f, start, w, flush); err != nil && ctx.Err() == nil {
		s.Log.V(1).Info("log follow ended early", "call", fc.Namespace+"/"+fc.Name, "error", err.Error())
	}
}

// endedFunc says whether the call fc has ended on this node, from the
// manager's cache; only when the cache no longer has it (a finished call
// leaves it) does it ask the apiserver.
func (s *Server) endedFunc(fc *fnletv1.FunctionCall) func(context.Context) bool {
	key := client.ObjectKeyFromObject(fc)
	over := func(c *fnletv1.FunctionCall) bool {
		return c.UID != fc.UID || c.IsFinished() || c.Status.NodeName != s.NodeName
	}
	if over(fc) {
		return func(context.Context) bool { return true }
	}
	return func(ctx context.Context) bool {
		var c fnletv1.FunctionCall
		err := s.Calls.Get(ctx, key, &c)
		if err == nil {
			return over(&c)
		}
		if !apierrors.IsNotFound(err) {
			return false
		}
		err = s.APIReader.Get(ctx, key, &c)
		return apierrors.IsNotFound(err) || (err == nil && over(&c))
	}
}

// watchFile wakes a follow when the file is written (inotify). Without
// inotify the follow polls.
func watchFile(path string) (<-chan struct{}, func()) {
	wake := make(chan struct{}, 1)
	wt, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, func() {}
	}
	if err := wt.Add(path); err != nil {
		wt.Close()
		return nil, func() {}
	}
	go func() {
		for {
			select {
			case _, ok := <-wt.Events:
				if !ok {
					return
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			case _, ok := <-wt.Errors:
				if !ok {
					return
				}
			}
		}
	}()
	return wake, func() { wt.Close() }
}

func expired(fc *fnletv1.FunctionCall, retention string) *apierrors.StatusError {
	msg := fmt.Sprintf("the output of FunctionCall %s/%s is no longer on node %s", fc.Namespace, fc.Name, fc.Status.NodeName)
	if retention != "" {
		msg += " (" + retention + ")"
	}
	return apierrors.NewGone(msg)
}

// forward sends the request on to the manager of the call's node and
// streams its answer back.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, fc *fnletv1.FunctionCall) {
	node := fc.Status.NodeName
	addr, pin, err := s.peerAddress(r.Context(), node)
	if err != nil {
		writeStatus(w, err)
		return
	}
	peer, err := s.Peer.Client(pin)
	if err != nil {
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("will not forward to the manager of node %s (%s): %v", node, addr, err)))
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "https://"+addr+r.URL.RequestURI(), nil)
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	req.Header.Set(ForwardedHeader, s.NodeName)
	resp, err := peer.Do(req)
	if err != nil {
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("cannot reach the manager of node %s (%s), which has the output of %s/%s: %v", node, addr, fc.Namespace, fc.Name, err)))
		return
	}
	defer resp.Body.Close()
	for _, k := range []string{"Content-Type", "Content-Length", StartHeader, "X-Content-Type-Options"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	fw := flushWriter{w: w}
	if fl, ok := w.(http.Flusher); ok {
		fw.f = fl
		fl.Flush()
	}
	if _, err := io.CopyBuffer(fw, resp.Body, make([]byte, 256<<10)); err != nil && r.Context().Err() == nil {
		s.Log.V(1).Info("forwarded log ended early", "node", node, "error", err.Error())
	}
}

// peerAddress finds where node's manager serves its log API, and the
// SHA-256 of the certificate it serves, on the node's Lease.
func (s *Server) peerAddress(ctx context.Context, node string) (addr, pin string, err error) {
	if s.Peer == nil || s.Nodes == nil {
		return "", "", apierrors.NewServiceUnavailable(fmt.Sprintf("the call runs on node %s and this manager (%s) does not forward", node, s.NodeName))
	}
	nodes, err := s.Nodes.Nodes(ctx)
	if err != nil {
		return "", "", apierrors.NewInternalError(err)
	}
	for _, n := range nodes {
		if n.Name != node {
			continue
		}
		if n.LogAddress == "" {
			return "", "", apierrors.NewServiceUnavailable(fmt.Sprintf("node %s publishes no log API address on its Lease", node))
		}
		return n.LogAddress, n.LogCertSHA256, nil
	}
	return "", "", apierrors.NewServiceUnavailable(fmt.Sprintf("node %s has no Lease: its manager is gone, and the output with it unless it comes back", node))
}

// PeerClients gives the HTTPS client for a peer that publishes the given
// certificate pin; Peers is the real one.
type PeerClients interface {
	Client(pin string) (*http.Client, error)
}

// flushWriter flushes after every write: a follow's bytes go out as the
// peer sends them.
type flushWriter struct {
	w io.Writer
	f http.Flusher
}

func (fw flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	if fw.f != nil {
		fw.f.Flush()
	}
	return n, err
}

func writeStatus(w http.ResponseWriter, err error) {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		se = apierrors.NewInternalError(err)
	}
	st := se.Status()
	st.Kind, st.APIVersion = "Status", "v1"
	writeJSON(w, int(st.Code), &st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","code":500}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func apiGroup() *metav1.APIGroup {
	gv := metav1.GroupVersionForDiscovery{GroupVersion: Group + "/" + Version, Version: Version}
	return &metav1.APIGroup{TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"},
		Name: Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}
}

func apiResources() *metav1.APIResourceList {
	return &metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: Group + "/" + Version,
		APIResources: []metav1.APIResource{{Name: Resource + "/" + Subresource, Namespaced: true, Kind: "FunctionCallLog", Verbs: metav1.Verbs{"get"}}},
	}
}
