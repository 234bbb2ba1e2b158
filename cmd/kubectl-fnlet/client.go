package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

// clients are what the commands talk to: FunctionCalls (create, watch,
// patch, delete) and the log API.
type clients struct {
	calls     client.WithWatch
	raw       rest.Interface
	namespace string
}

func newClients(flags *genericclioptions.ConfigFlags) (*clients, error) {
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	ns, _, err := flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := fnletv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &clients{calls: c, raw: cs.Discovery().RESTClient(), namespace: ns}, nil
}

// logOptions are the log API's query parameters (internal/logapi).
type logOptions struct {
	stderr    bool
	follow    bool
	tailBytes int64 // < 0: all
	offset    int64
}

// openLog opens one stream of a call's output; the caller closes it.
func (c *clients) openLog(ctx context.Context, name string, o logOptions) (io.ReadCloser, error) {
	req := c.raw.Get().AbsPath("/apis/logs.fnlet.dev/v1alpha1/namespaces", c.namespace, "functioncalls", name, "log")
	if o.stderr {
		req = req.Param("stream", "stderr")
	}
	if o.follow {
		req = req.Param("follow", "true")
	}
	if o.tailBytes >= 0 {
		req = req.Param("tailBytes", strconv.FormatInt(o.tailBytes, 10))
	} else if o.offset > 0 {
		req = req.Param("offset", strconv.FormatInt(o.offset, 10))
	}
	return req.Stream(ctx)
}

// copyLog copies one stream to w; it returns when the stream ends (for a
// follow: when the call ends).
func (c *clients) copyLog(ctx context.Context, name string, o logOptions, w io.Writer) error {
	r, err := c.openLog(ctx, name, o)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(w, r)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("read output of %s: %w", name, err)
	}
	return nil
}
