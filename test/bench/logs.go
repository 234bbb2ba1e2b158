package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv/logprobe"
	"github.com/fnlet/fnlet/test/testfn/pattern"
)

// logRun is the log API measured (issue 15) on the bench's manager: the
// time from a line reaching a call's stdout file to its arrival at a
// follower, and the bytes/s a read and a follow stream, each straight from
// the manager and through the kube-apiserver's aggregation layer.
type logRun struct {
	Via string `json:"via"` // how the apiserver reaches the manager
	// Follow latency of a call writing a line every 10 ms.
	FollowDirect stats `json:"followDirect"`
	FollowAPI    stats `json:"followApiserver"`
	// MiB/s reading the whole output of a finished call.
	ReadMiB       int     `json:"readMiB"`
	ReadDirectMBs float64 `json:"readDirectMiBs"`
	ReadAPIMBs    float64 `json:"readApiserverMiBs"`
	// MiB/s following a call that writes as fast as it can (bounded by the
	// call's own writing too), first byte to end.
	FollowMiB       int     `json:"followMiB"`
	FollowDirectMBs float64 `json:"followDirectMiBs"`
	FollowAPIMBs    float64 `json:"followApiserverMiBs"`
}

const (
	logReadMiB   = 50
	logFollowMiB = 50 // under the manager's default --output-limit (64Mi)
	tickerLines  = 200
)

// logPhase measures the log API, when the manager serves it.
func (s *system) logPhase(ctx context.Context, res *result) {
	if s.mgr.logAPIPort == 0 {
		res.note("no log API measured: the manager binary has no --log-api-bind-address flag")
		return
	}
	fmt.Fprintln(os.Stderr, "fnlet: log API (follow latency, read and follow rates)")
	lr := &logRun{ReadMiB: logReadMiB, FollowMiB: logFollowMiB}
	via, remove, err := s.logAPIService(ctx)
	if err != nil {
		res.note("log API through the apiserver not measured: %v", err)
	} else {
		lr.Via = via
		defer remove(context.WithoutCancel(ctx))
	}
	// The admin's client certificate; the manager's certificate is
	// self-signed and not checked here (a user's client, not a peer's).
	dc := rest.CopyConfig(s.rest)
	dc.TLSClientConfig.CAFile, dc.TLSClientConfig.CAData, dc.TLSClientConfig.Insecure = "", nil, true
	direct, err := rest.HTTPClientFor(dc)
	if err != nil {
		res.note("log API: %v", err)
		return
	}
	api, err := kubernetes.NewForConfig(s.rest)
	if err != nil {
		res.note("log API: %v", err)
		return
	}
	// open streams a call's log path (query included) either way.
	open := func(ctx context.Context, viaAPI bool, path string, query map[string]string) (io.ReadCloser, error) {
		if viaAPI {
			req := api.Discovery().RESTClient().Get().AbsPath(path)
			for k, v := range query {
				req = req.Param(k, v)
			}
			return req.Stream(ctx)
		}
		u := fmt.Sprintf("https://127.0.0.1:%d%s?", s.mgr.logAPIPort, path)
		for k, v := range query {
			u += k + "=" + v + "&"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := direct.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
		}
		return resp.Body, nil
	}
	ways := []bool{false}
	if lr.Via != "" {
		ways = append(ways, true)
	}
	for _, viaAPI := range ways {
		name := map[bool]string{false: "direct", true: "apiserver"}[viaAPI]
		lat, err := s.followLatency(ctx, "log-tick-"+name, func(ctx context.Context, path string) (io.ReadCloser, error) {
			return open(ctx, viaAPI, path, map[string]string{"follow": "true"})
		})
		if err != nil {
			res.note("log follow latency (%s): %v", name, err)
		} else if viaAPI {
			lr.FollowAPI = statsOf(lat)
		} else {
			lr.FollowDirect = statsOf(lat)
		}
	}
	// A finished call's whole output, read back.
	big, err := s.logCall(ctx, "log-read", []string{"-stdout-bytes", strconv.Itoa(logReadMiB) + "M"}, true)
	if err != nil {
		res.note("log read: %v", err)
	}
	for _, viaAPI := range ways {
		if err != nil {
			break
		}
		rate, rerr := readRate(ctx, logReadMiB<<20, func() (io.ReadCloser, error) {
			return open(ctx, viaAPI, logprobe.Path(s.cfg.KubeNamespace, big.Name), nil)
		})
		switch {
		case rerr != nil:
			res.note("log read (via apiserver %v): %v", viaAPI, rerr)
		case viaAPI:
			lr.ReadAPIMBs = rate
		default:
			lr.ReadDirectMBs = rate
		}
	}
	// A call followed from its start while it writes as fast as it can.
	for _, viaAPI := range ways {
		name := map[bool]string{false: "direct", true: "apiserver"}[viaAPI]
		fc, err := s.logCall(ctx, "log-follow-"+name, []string{"-stdout-bytes", strconv.Itoa(logFollowMiB) + "M"}, false)
		if err != nil {
			res.note("log follow rate (%s): %v", name, err)
			continue
		}
		rate, err := readRate(ctx, logFollowMiB<<20, func() (io.ReadCloser, error) {
			return open(ctx, viaAPI, logprobe.Path(s.cfg.KubeNamespace, fc.Name), map[string]string{"follow": "true"})
		})
		switch {
		case err != nil:
			res.note("log follow rate (%s): %v", name, err)
		case viaAPI:
			lr.FollowAPIMBs = rate
		default:
			lr.FollowDirectMBs = rate
		}
	}
	res.Logs = lr
}

// logAPIService makes sure the apiserver routes the log API to the
// bench's manager: an APIService already there (the cluster's DaemonSet,
// whose managers forward to this one by its Lease) is used as it is;
// otherwise one is registered for the run and removed after.
func (s *system) logAPIService(ctx context.Context) (via string, remove func(context.Context), err error) {
	got := &unstructured.Unstructured{}
	got.SetAPIVersion("apiregistration.k8s.io/v1")
	got.SetKind("APIService")
	err = s.kc.Get(ctx, client.ObjectKey{Name: logprobe.APIServiceName}, got)
	switch {
	case err == nil:
		werr := logprobe.WaitAvailable(ctx, s.kc, 15*time.Second)
		if werr == nil {
			return "the cluster's APIService, forwarded by a DaemonSet manager", func(context.Context) {}, nil
		}
		// Left by an earlier cluster (e.g. make e2e's, whose DaemonSet is
		// gone): nothing serves it, so it is replaced for this run.
		if err := s.kc.Delete(ctx, got); err != nil {
			return "", nil, fmt.Errorf("%v; and deleting it: %w", werr, err)
		}
		fmt.Fprintf(os.Stderr, "replacing an unavailable APIService %s: %v\n", logprobe.APIServiceName, werr)
	case !apierrors.IsNotFound(err):
		return "", nil, err
	}
	remove, err = logprobe.RegisterAPIService(ctx, s.kc, "fnlet-system", s.mgr.logAPIPort)
	if err != nil {
		return "", nil, err
	}
	return "an APIService of this run, to this manager", remove, nil
}

// logCall creates a call of the bench image with args on the manager's
// node; finished waits for it to succeed, else only for its creation.
func (s *system) logCall(ctx context.Context, name string, args []string, finished bool) (*fnletv1.FunctionCall, error) {
	name = name + "-" + s.runID
	wt := s.fcs.register(name)
	defer s.fcs.unregister(name)
	fc := &fnletv1.FunctionCall{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.cfg.KubeNamespace, Labels: map[string]string{runLabel: s.runID}},
		Spec: fnletv1.FunctionCallSpec{Image: s.cfg.Image, ImagePullPolicy: corev1.PullNever, NodeName: s.cfg.Node,
			Args: args},
	}
	if err := s.kc.Create(ctx, fc); err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	s.created.Add(1)
	if finished {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := await(wctx, wt, "FunctionCall "+name+" Succeeded"); err != nil {
			return nil, err
		}
	}
	return fc, nil
}

// followLatency runs a busybox ticker call and follows it with open.
func (s *system) followLatency(ctx context.Context, name string, open func(context.Context, string) (io.ReadCloser, error)) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	script, ends := logprobe.Ticker(tickerLines, 10*time.Millisecond)
	name = name + "-" + s.runID
	fc := &fnletv1.FunctionCall{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.cfg.KubeNamespace, Labels: map[string]string{runLabel: s.runID}},
		Spec: fnletv1.FunctionCallSpec{Image: "localhost/fnlet/busybox:v1", ImagePullPolicy: corev1.PullNever, NodeName: s.cfg.Node,
			Command: []string{"sh", "-c", script}},
	}
	if err := s.kc.Create(ctx, fc); err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	s.created.Add(1)
	body, err := open(ctx, logprobe.Path(fc.Namespace, name))
	if err != nil {
		return nil, err
	}
	defer body.Close()
	// The follow waits for the container; the latencies need its stdout
	// file, which the manager creates before the task starts.
	stdout := filepath.Join(s.mgr.logDir, "fnlet-"+string(fc.UID), "stdout")
	for {
		if _, err := os.Stat(stdout); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s never appeared: %w", stdout, ctx.Err())
		case <-time.After(10 * time.Millisecond): // the ticker's first line comes a second after the start
		}
	}
	return logprobe.Latencies(stdout, ends, body)
}

// readRate reads what open streams, checks it is the text pattern of n
// bytes, and returns MiB/s from the first byte to the end.
func readRate(ctx context.Context, n int64, open func() (io.ReadCloser, error)) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	body, err := open()
	if err != nil {
		return 0, err
	}
	defer body.Close()
	stop := context.AfterFunc(ctx, func() { body.Close() })
	defer stop()
	var buf bytes.Buffer
	buf.Grow(int(n))
	if _, err := io.CopyN(&buf, body, 1); err != nil {
		return 0, fmt.Errorf("first byte: %w", err)
	}
	start := time.Now()
	if _, err := buf.ReadFrom(body); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if err := pattern.Check(pattern.Text, n, buf.Bytes()); err != nil {
		return 0, err
	}
	return float64(n) / (1 << 20) / took.Seconds(), nil
}

// logLines prints the log API rows of the report.
func logLines(w io.Writer, lr *logRun) {
	fmt.Fprintf(w, "\nlog API (kubectl fnlet logs -f; kubectl get --raw .../log):\n")
	via := lr.Via
	if via == "" {
		via = "not measured"
	}
	fmt.Fprintf(w, "  follow, line written to the file → at the client, %d lines 10 ms apart: direct p50 %s p95 %s ms; through the apiserver p50 %s p95 %s ms (%s)\n",
		tickerLines, ms(lr.FollowDirect.P50), ms(lr.FollowDirect.P95), ms(lr.FollowAPI.P50), ms(lr.FollowAPI.P95), via)
	fmt.Fprintf(w, "  read %d MiB of a finished call: direct %.0f MiB/s, through the apiserver %.0f MiB/s\n", lr.ReadMiB, lr.ReadDirectMBs, lr.ReadAPIMBs)
	fmt.Fprintf(w, "  follow a call writing %d MiB flat out: direct %.0f MiB/s, through the apiserver %.0f MiB/s (bounded by the call's own writing)\n",
		lr.FollowMiB, lr.FollowDirectMBs, lr.FollowAPIMBs)
}
