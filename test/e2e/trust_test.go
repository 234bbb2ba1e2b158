package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
	"github.com/fnlet/fnlet/internal/testenv"
)

// The trust model's claims (README "Trust model"), held on the real cluster.

// managerSA is the manager's service account, "namespace:name", as the
// DaemonSet runs it.
func managerSA(t *testing.T) string {
	t.Helper()
	var ds appsv1.DaemonSet
	if err := env.k8s.Get(context.Background(), client.ObjectKey{Namespace: systemNamespace, Name: daemonSetName}, &ds); err != nil {
		t.Fatal(err)
	}
	sa := ds.Spec.Template.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return systemNamespace + ":" + sa
}

// waitCallIn waits until the call ns/name has finished.
func waitCallIn(t *testing.T, ns, name string, timeout time.Duration) *fnletv1.FunctionCall {
	t.Helper()
	return env.calls.WaitFinished(t, client.ObjectKey{Namespace: ns, Name: name}, timeout)
}

// canI is `kubectl auth can-i --as=<the manager's service account> args`:
// "yes" or "no".
func canI(t *testing.T, sa string, args ...string) string {
	t.Helper()
	argv := append([]string{"auth", "can-i", "--as=system:serviceaccount:" + sa}, args...)
	o, e, err := kubectlCmd("", argv...)
	ans := strings.TrimSpace(o)
	// can-i exits 1 for "no"; anything but yes/no is a failure.
	if ans != "yes" && ans != "no" {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(argv, " "), err, o, e)
	}
	t.Logf("kubectl %s -> %s", strings.Join(argv, " "), ans)
	return ans
}

// TestNamespaceOptIn: the manager reads Secrets only in namespaces that
// bound fnlet-namespace-reader. The sample config/samples/namespace_opt_in.yaml,
// applied as it is, runs a call with env from a Secret; the same call in a
// namespace without the binding ends InvalidSpec with the command to run,
// and running that command makes it work; kubectl auth can-i shows the
// manager's service account cannot list or get Secrets cluster-wide.
func TestNamespaceOptIn(t *testing.T) {
	requireCluster(t)
	sa := managerSA(t)

	// Bound: the sample, as users would apply it.
	_, file, _, _ := runtime.Caller(0)
	sample := filepath.Join(filepath.Dir(file), "..", "..", "config", "samples", "namespace_opt_in.yaml")
	const sampleNS = "fnlet-sample-secrets"
	t.Cleanup(func() { _, _ = kubectlRaw("", "delete", "namespace", sampleNS, "--wait=false") })
	if out, err := kubectlRaw("", "apply", "-f", sample); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", sample, err, out)
	}
	fc := waitCallIn(t, sampleNS, "greet", 60*time.Second)
	if fc.Status.Phase != fnletv1.PhaseSucceeded || !strings.Contains(fc.Status.Stdout, "GREETING=hello from a Secret\n") {
		t.Fatalf("bound namespace: %s %s %q, stdout %q", fc.Status.Phase, fc.Status.Reason, fc.Status.Message, fc.Status.Stdout)
	}
	t.Logf("bound namespace %s: greet %s/%s, the Secret's value in its env", sampleNS, fc.Status.Phase, fc.Status.Reason)

	// Not bound: a fresh namespace with the same Secret and call.
	unbound := "fnlet-e2e-unbound-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	if out, err := kubectlRaw("", "create", "namespace", unbound); err != nil {
		t.Fatalf("create namespace: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectlRaw("", "delete", "namespace", unbound, "--wait=false") })
	if out, err := kubectlRaw("", "-n", unbound, "create", "secret", "generic", "greeting", "--from-literal=text=hello from a Secret"); err != nil {
		t.Fatalf("create secret: %v\n%s", err, out)
	}
	withSecret := func(name string) string {
		return fcYAML(name, []string{"-print-env"}, "env: [{name: GREETING, valueFrom: {secretKeyRef: {name: greeting, key: text}}}]")
	}
	if out, err := kubectlRaw(withSecret("greet")+"---\n"+fcYAML("plain", []string{"-stdout-text", "no secrets needed"}),
		"-n", unbound, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	fc = waitCallIn(t, unbound, "greet", 60*time.Second)
	grant := "kubectl create rolebinding fnlet-namespace-reader -n " + unbound + " --clusterrole=fnlet-namespace-reader --serviceaccount=" + sa
	if fc.Status.Phase != fnletv1.PhaseFailed || fc.Status.Reason != fnletv1.ReasonInvalidSpec || !strings.Contains(fc.Status.Message, grant) {
		t.Fatalf("unbound namespace: %s %s %q, want Failed InvalidSpec naming %q", fc.Status.Phase, fc.Status.Reason, fc.Status.Message, grant)
	}
	if strings.Contains(fc.Status.Message, "forbidden") || strings.Contains(fc.Status.Stdout, "hello from a Secret") {
		t.Errorf("unbound namespace: the message passes a raw 403 on or the value leaked: %+v", fc.Status)
	}
	t.Logf("unbound namespace %s: greet %s/%s: %s", unbound, fc.Status.Phase, fc.Status.Reason, fc.Status.Message)
	if p := waitCallIn(t, unbound, "plain", 60*time.Second); p.Status.Phase != fnletv1.PhaseSucceeded {
		t.Errorf("a call without Secret references in the unbound namespace: %s %s %q", p.Status.Phase, p.Status.Reason, p.Status.Message)
	}

	// What the manager's service account may do, as the apiserver decides.
	for _, res := range []string{"secrets", "configmaps"} {
		for _, verb := range []string{"list", "get", "watch"} {
			if ans := canI(t, sa, verb, res, "-A"); ans != "no" {
				t.Errorf("the manager can %s %s in all namespaces", verb, res)
			}
		}
		if ans := canI(t, sa, "get", res, "-n", unbound); ans != "no" {
			t.Errorf("the manager can get %s in the unbound namespace", res)
		}
		if ans := canI(t, sa, "get", res, "-n", sampleNS); ans != "yes" {
			t.Errorf("the manager cannot get %s in the namespace that bound fnlet-namespace-reader", res)
		}
		if ans := canI(t, sa, "list", res, "-n", sampleNS); ans != "no" {
			t.Errorf("the manager can list %s in the bound namespace: get is all it needs", res)
		}
	}

	// The message's command is the fix: run it, apply the call again.
	argv := strings.Fields(grant)[1:] // drop "kubectl"
	if out, err := kubectlRaw("", argv...); err != nil {
		t.Fatalf("%s: %v\n%s", grant, err, out)
	}
	testenv.Eventually(t, 30*time.Second, 250*time.Millisecond, "the binding takes effect", func() error {
		if canI(t, sa, "get", "secrets", "-n", unbound) != "yes" {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if out, err := kubectlRaw(withSecret("greet-again"), "-n", unbound, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if fc := waitCallIn(t, unbound, "greet-again", 60*time.Second); fc.Status.Phase != fnletv1.PhaseSucceeded ||
		!strings.Contains(fc.Status.Stdout, "GREETING=hello from a Secret\n") {
		t.Errorf("after running the message's command: %s %s %q", fc.Status.Phase, fc.Status.Reason, fc.Status.Message)
	}
}

// portForward runs kubectl port-forward to the pod's ports and returns the
// local port of each, in order. The process is stopped at the end of the test.
func portForward(t *testing.T, ns, pod string, ports ...int) []int {
	t.Helper()
	args := []string{"--kubeconfig", env.kubeconfig, "-n", ns, "port-forward", "pod/" + pod}
	for _, p := range ports {
		args = append(args, ":"+strconv.Itoa(p))
	}
	cmd := exec.Command(kubectlBin(), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// "Forwarding from 127.0.0.1:41234 -> 8443"
	re := regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)`)
	local := map[int]int{}
	found := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				l, _ := strconv.Atoi(m[1])
				r, _ := strconv.Atoi(m[2])
				local[r] = l
				if len(local) == len(ports) {
					found <- nil
					_, _ = io.Copy(io.Discard, stdout)
					return
				}
			}
		}
		found <- fmt.Errorf("kubectl port-forward ended: %s", stderr.String())
	}()
	select {
	case err := <-found:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl port-forward: no ports after 30s: %s", stderr.String())
	}
	out := make([]int, len(ports))
	for i, p := range ports {
		out[i] = local[p]
	}
	return out
}

// TestManagerMetrics scrapes a manager pod's metrics endpoint (HTTPS,
// 8443) the way Prometheus would, through kubectl port-forward (a plain TCP
// tunnel: the token and TLS are the scraper's own): no token → 401, a
// token of a service account without fnlet-metrics-reader → 403, with it
// → the metrics, fnlet's counters included. The health port stays plain
// HTTP and serves no metrics.
func TestManagerMetrics(t *testing.T) {
	requireCluster(t)
	apply(t, fcYAML("counted", []string{"-stdout-text", "x"}))
	node := waitFinished(t, "counted", 60*time.Second).Status.NodeName
	pod := strings.TrimSpace(kubectl(t, "-n", systemNamespace, "get", "pods", "-l", managerSelector,
		"--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name}"))
	if pod == "" {
		t.Fatalf("no manager pod on node %s", node)
	}
	local := portForward(t, systemNamespace, pod, 8443, 8081)
	metricsURL := fmt.Sprintf("https://127.0.0.1:%d/metrics", local[0])
	healthURL := fmt.Sprintf("http://127.0.0.1:%d", local[1])

	// Two service accounts; only the scraper is bound to the reader role.
	for _, sa := range []string{"metrics-nobody", "metrics-scraper"} {
		kubectl(t, "create", "serviceaccount", sa)
	}
	crb := "fnlet-e2e-metrics-" + env.ns
	if out, err := kubectlRaw("", "create", "clusterrolebinding", crb, "--clusterrole=fnlet-metrics-reader",
		"--serviceaccount="+env.ns+":metrics-scraper"); err != nil {
		t.Fatalf("create clusterrolebinding: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectlRaw("", "delete", "clusterrolebinding", crb, "--ignore-not-found") })
	token := func(sa string) string {
		return strings.TrimSpace(kubectl(t, "create", "token", sa, "--duration=10m"))
	}

	// The serving certificate is the manager's self-signed one: the test
	// checks TLS is spoken, not who signed it.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	scrape := func(url, tok string) (int, string, error) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return 0, "", err
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	expect := func(what, url, tok string, want int) string {
		t.Helper()
		var body string
		testenv.Eventually(t, 30*time.Second, 250*time.Millisecond, what, func() error {
			code, b, err := scrape(url, tok)
			if err != nil {
				return err
			}
			if body = b; code != want {
				return fmt.Errorf("HTTP %d, want %d: %.200s", code, want, b)
			}
			return nil
		})
		t.Logf("%s: GET %s -> %d", what, url, want)
		return body
	}

	if code, _, err := scrape(strings.Replace(metricsURL, "https:", "http:", 1), ""); err == nil && code == http.StatusOK {
		t.Errorf("metrics answered 200 over plain HTTP")
	}
	expect("no token", metricsURL, "", http.StatusUnauthorized)
	// A token the apiserver rejects: controller-runtime's filter answers
	// 500 "Authentication failed" (its authenticator reports the rejection
	// as an error), not 401; what matters here is that nothing is served.
	if code, body, err := scrape(metricsURL, "not-a-token"); err != nil || code == http.StatusOK || strings.Contains(body, "fnlet_") {
		t.Errorf("a token the apiserver does not know: HTTP %d %v, want it refused: %.200s", code, err, body)
	} else {
		t.Logf("a token the apiserver does not know: GET %s -> %d (refused)", metricsURL, code)
	}
	expect("a token without fnlet-metrics-reader", metricsURL, token("metrics-nobody"), http.StatusForbidden)
	var out string
	scraper := token("metrics-scraper")
	testenv.Eventually(t, 30*time.Second, 250*time.Millisecond, "fnlet_calls_total{phase=Succeeded,reason=Completed} >= 1 with fnlet-metrics-reader", func() error {
		code, b, err := scrape(metricsURL, scraper)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("HTTP %d: %.200s", code, b)
		}
		out = b
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "fnlet_calls_total{") && strings.Contains(l, `phase="Succeeded"`) && strings.Contains(l, `reason="Completed"`) {
				f := strings.Fields(l)
				if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v >= 1 {
					return nil
				}
				return fmt.Errorf("%s", l)
			}
		}
		return fmt.Errorf("no such series")
	})
	var fnlet []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "fnlet_") && !strings.Contains(l, "_bucket{") {
			fnlet = append(fnlet, l)
		}
	}
	for _, m := range []string{"fnlet_running_calls", "fnlet_capacity_calls", "fnlet_apply_to_claim_seconds_count"} {
		if !strings.Contains(out, "\n"+m+" ") {
			t.Errorf("metric %s missing", m)
		}
	}
	t.Logf("with fnlet-metrics-reader: HTTP 200, manager %s metrics:\n%s", pod, strings.Join(fnlet, "\n"))

	// Health: plain HTTP, no token, a bare "ok" and nothing else.
	if code, body, err := scrape(healthURL+"/healthz", ""); err != nil || code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz on the health port: %d %q %v, want 200 ok", code, body, err)
	}
	if code, body, err := scrape(healthURL+"/metrics", ""); err != nil || code == http.StatusOK {
		t.Errorf("GET /metrics on the health port: %d %.100q %v, want no metrics there", code, body, err)
	}
}
