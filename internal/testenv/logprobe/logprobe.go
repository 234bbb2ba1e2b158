// Package logprobe measures fnlet's log API from the outside, the same way
// for the integration tests and for `make bench`: how long a line written
// by a call takes to reach a client that follows the call's output, and how
// an APIService for the log API is pointed at one manager on this host.
package logprobe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// APIServiceName is config/logapi's APIService.
const APIServiceName = "v1alpha1.logs.fnlet.dev"

// Path is the log API path of a call's output.
func Path(namespace, name string) string {
	return "/apis/logs.fnlet.dev/v1alpha1/namespaces/" + namespace + "/functioncalls/" + name + "/log"
}

// Ticker is a shell script (busybox sh) that waits a second, then writes
// n lines "line-I\n" gap apart; ends[i] is the stdout offset after line i+1.
func Ticker(n int, gap time.Duration) (script string, ends []int64) {
	var off int64
	for i := 1; i <= n; i++ {
		off += int64(len("line-" + strconv.Itoa(i) + "\n"))
		ends = append(ends, off)
	}
	return fmt.Sprintf(`sleep 1; for i in $(seq %d); do echo line-$i; sleep %.3f; done`, n, gap.Seconds()), ends
}

// Latencies follows a running Ticker call: stdout is its output file on
// this node, watched with inotify for when each line reached it, and body
// the log API's follow stream of it, read line by line for when each line
// arrived. It returns the sorted write→arrival latencies of the lines
// written after it began (earlier ones have no write time), once all lines
// arrived.
func Latencies(stdout string, ends []int64, body io.Reader) ([]time.Duration, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if err := w.Add(stdout); err != nil {
		return nil, fmt.Errorf("watch %s: %w", stdout, err)
	}
	fi, err := os.Stat(stdout)
	if err != nil {
		return nil, err
	}
	known := fi.Size()
	written := make([]time.Time, len(ends))
	watched := make(chan struct{})
	go func() { // owned here: ends when w is closed below
		defer close(watched)
		for range w.Events {
			now := time.Now()
			fi, err := os.Stat(stdout)
			if err != nil {
				return
			}
			for i, e := range ends {
				if e > known && e <= fi.Size() && written[i].IsZero() {
					written[i] = now
				}
			}
		}
	}()
	arrived := make([]time.Time, len(ends))
	br := bufio.NewReader(body)
	var readErr error
	for i := range ends {
		if _, err := br.ReadString('\n'); err != nil {
			readErr = fmt.Errorf("line %d of %d: %w", i+1, len(ends), err)
			break
		}
		arrived[i] = time.Now()
	}
	w.Close()
	<-watched
	if readErr != nil {
		return nil, readErr
	}
	var lat []time.Duration
	for i := range ends {
		if ends[i] > known && !written[i].IsZero() && !arrived[i].Before(written[i]) {
			lat = append(lat, arrived[i].Sub(written[i]))
		}
	}
	if len(lat) < len(ends)/2 {
		return nil, fmt.Errorf("only %d of %d lines measured", len(lat), len(ends))
	}
	slices.Sort(lat)
	return lat, nil
}

// HostIPv4 is this host's first non-loopback IPv4 address: an
// EndpointSlice may not point at loopback.
func HostIPv4() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("no non-loopback IPv4 address on this host for the APIService's endpoint")
}

// RegisterAPIService installs config/logapi's APIService, to a Service
// of its own (fnlet-logs-probe, not config/logapi's fnlet-logs, which may
// be there with a selector) in namespace whose one endpoint is this host's
// port (a manager's --log-api-bind-address), and waits until the
// apiserver calls it Available. remove deletes all three: an unavailable APIService keeps
// namespaces from being deleted.
func RegisterAPIService(ctx context.Context, c client.Client, namespace string, port int) (remove func(context.Context), err error) {
	ip, err := HostIPv4()
	if err != nil {
		return nil, err
	}
	const service = "fnlet-logs-probe"
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: service, Namespace: namespace},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https-logs", Port: 443, TargetPort: intstr.FromInt32(int32(port))}}}}
	name, proto, p32 := "https-logs", corev1.ProtocolTCP, int32(port)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "fnlet-logs-probe", Namespace: namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &p32}},
	}
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": APIServiceName},
		"spec": map[string]any{"group": "logs.fnlet.dev", "version": "v1alpha1", "groupPriorityMinimum": int64(1000),
			"versionPriority": int64(15), "insecureSkipTLSVerify": true,
			"service": map[string]any{"name": service, "namespace": namespace, "port": int64(443)}},
	}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	var created []client.Object
	remove = func(ctx context.Context) {
		for _, o := range slices.Backward(created) {
			_ = c.Delete(ctx, o)
		}
	}
	for _, o := range []client.Object{svc, slice, apiService} {
		if err := c.Create(ctx, o); err != nil {
			remove(ctx)
			return nil, fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
		created = append(created, o)
	}
	if err := WaitAvailable(ctx, c, time.Minute); err != nil {
		remove(ctx)
		return nil, err
	}
	return remove, nil
}

// WaitAvailable waits up to d for the log API's APIService to be Available.
func WaitAvailable(ctx context.Context, c client.Client, d time.Duration) error {
	deadline := time.Now().Add(d)
	var last string
	for {
		got := &unstructured.Unstructured{}
		got.SetAPIVersion("apiregistration.k8s.io/v1")
		got.SetKind("APIService")
		if err := c.Get(ctx, client.ObjectKey{Name: APIServiceName}, got); err != nil {
			return fmt.Errorf("APIService %s: %w", APIServiceName, err)
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, cd := range conds {
			m, _ := cd.(map[string]any)
			if m["type"] == "Available" {
				if m["status"] == "True" {
					return nil
				}
				last = fmt.Sprintf("%v: %v", m["reason"], m["message"])
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("APIService %s not Available after %s (%s)", APIServiceName, d, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // no watch on APIServices through this client
		}
	}
}
