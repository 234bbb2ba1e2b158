package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

type runOptions struct {
	name, stdin, memory, cpu, network string
	env, command                      []string
	timeout                           time.Duration
	rm, quiet                         bool
}

func newRunCommand(flags *genericclioptions.ConfigFlags, streams genericclioptions.IOStreams) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run IMAGE [-- ARGS...]",
		Short: "Run a FunctionCall, stream its output and exit with its exit code",
		Long: `Create a FunctionCall (server-side: inputs up to the API's 1 MiB work), stream its
stdout and stderr live, and exit with the call's exit code. A call that could not
run (image pull, invalid spec, ...) prints its reason and exits 125. Ctrl-C
cancels the call (and deletes it with --rm) and exits 130.`,
		Example: `  # Run the image's default command, delete the call afterwards
  kubectl fnlet run localhost/fnlet/testfn:v1 --rm

  # Arguments (the image's CMD) after --; stdin from a file; limits
  kubectl fnlet run localhost/fnlet/testfn:v1 --stdin input.json --memory 64Mi --cpu 500m --timeout 30s -- -stdin-echo

  # stdin from a pipe, an environment variable, another entrypoint
  echo hello | kubectl fnlet run localhost/fnlet/busybox:v1 --stdin - -e GREETING=hi --command sh --rm -- -c 'echo $GREETING; cat'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClients(flags)
			if err != nil {
				return err
			}
			fc, err := o.call(args[0], args[1:], streams.In)
			if err != nil {
				return err
			}
			fc.Namespace = c.namespace
			return run(cmd.Context(), c, fc, o, streams)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "Name of the call (default: generated, run-xxxxx).")
	f.StringArrayVarP(&o.env, "env", "e", nil, "Environment variable NAME=VALUE (repeatable).")
	f.StringVarP(&o.stdin, "stdin", "i", "", "File fed to the call's stdin, - for this command's stdin (at most 1 MiB).")
	f.StringVar(&o.memory, "memory", "", "Memory limit, e.g. 64Mi (default: the manager's).")
	f.StringVar(&o.cpu, "cpu", "", "CPU limit, e.g. 500m (default: the manager's).")
	f.StringVar(&o.network, "network", "", "Network of the call: none or host (host needs the manager's --allow-host-network).")
	f.DurationVar(&o.timeout, "timeout", 0, "Timeout of the call (default: the manager's).")
	f.StringArrayVar(&o.command, "command", nil, "Replace the image's ENTRYPOINT (repeatable, one argv word each); ARGS replace its CMD.")
	f.BoolVar(&o.rm, "rm", false, "Delete the call when it ends.")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "Do not print the call's name.")
	return cmd
}

// call builds the FunctionCall of the flags.
func (o runOptions) call(image string, args []string, stdin io.Reader) (*fnletv1.FunctionCall, error) {
	fc := &fnletv1.FunctionCall{Spec: fnletv1.FunctionCallSpec{Image: image, Command: o.command, Args: args}}
	if o.name != "" {
		fc.Name = o.name
	} else {
		fc.GenerateName = "run-"
	}
	for _, kv := range o.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env %q: want NAME=VALUE", kv)
		}
		fc.Spec.Env = append(fc.Spec.Env, fnletv1.EnvVar{Name: k, Value: v})
	}
	if o.stdin != "" {
		var b []byte
		var err error
		if o.stdin == "-" {
			b, err = io.ReadAll(io.LimitReader(stdin, fnletv1.MaxInputBytes+1))
		} else {
			b, err = os.ReadFile(o.stdin)
		}
		if err != nil {
			return nil, fmt.Errorf("--stdin: %w", err)
		}
		if len(b) > fnletv1.MaxInputBytes {
			return nil, fmt.Errorf("--stdin: more than %d bytes (the API's limit for inline input; use a Secret or ConfigMap)", fnletv1.MaxInputBytes)
		}
		if len(b) > 0 {
			fc.Spec.Input = &fnletv1.Input{BinaryData: b}
		}
	}
	if o.memory != "" || o.cpu != "" {
		fc.Spec.Resources = &fnletv1.CallResources{}
		for _, q := range []struct {
			flag, v string
			dst     **resource.Quantity
		}{{"memory", o.memory, &fc.Spec.Resources.Memory}, {"cpu", o.cpu, &fc.Spec.Resources.CPU}} {
			if q.v == "" {
				continue
			}
			x, err := resource.ParseQuantity(q.v)
			if err != nil {
				return nil, fmt.Errorf("--%s %q: %w", q.flag, q.v, err)
			}
			*q.dst = &x
		}
	}
	if o.timeout > 0 {
		fc.Spec.Timeout = &metav1.Duration{Duration: o.timeout}
	}
	fc.Spec.Network = fnletv1.NetworkMode(o.network)
	return fc, nil
}

// run creates the call, streams its output and mirrors its end.
func run(ctx context.Context, c *clients, fc *fnletv1.FunctionCall, o runOptions, streams genericclioptions.IOStreams) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// A POST, not an apply: no last-applied annotation, so inputs up to
	// the API's limit fit.
	if err := c.calls.Create(ctx, fc); err != nil {
		return err
	}
	if !o.quiet {
		fmt.Fprintf(streams.ErrOut, "functioncall.fnlet.dev/%s created\n", fc.Name)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	type result struct {
		fc  *fnletv1.FunctionCall
		err error
	}
	done := make(chan result, 1)
	logsDone := make(chan error, 2)
	go func() {
		// A call no node can take waits; say why, once per new reason.
		var said string
		f, err := c.waitFinishedNotify(runCtx, fc.Name, func(fc *fnletv1.FunctionCall) {
			cond := meta.FindStatusCondition(fc.Status.Conditions, fnletv1.ConditionClaimed)
			if cond != nil && cond.Status == metav1.ConditionFalse && cond.Message != said {
				said = cond.Message
				fmt.Fprintf(streams.ErrOut, "waiting: %s: %s\n", cond.Reason, cond.Message)
			}
		})
		done <- result{f, err}
	}()
	for _, s := range []struct {
		stderr bool
		w      io.Writer
	}{{false, streams.Out}, {true, streams.ErrOut}} {
		go func() {
			logsDone <- c.copyLog(runCtx, fc.Name, logOptions{stderr: s.stderr, follow: true, tailBytes: -1}, s.w)
		}()
	}
	var end result
	select {
	case <-sigs:
		stop()
		return cancelCall(c, fc, o, streams)
	case end = <-done:
	}
	if end.err != nil {
		return end.err
	}
	// The follows end with the call; their last bytes may still be on the way.
	var logErr error
	for range 2 {
		select {
		case err := <-logsDone:
			logErr = errors.Join(logErr, err)
		case <-sigs:
			stop()
		}
	}
	if logErr != nil {
		fmt.Fprintln(streams.ErrOut, "warning: the output could not be streamed ("+kubectlError(logErr)+"); the tails in the call's status:")
		fmt.Fprint(streams.Out, end.fc.Status.Stdout)
		fmt.Fprint(streams.ErrOut, end.fc.Status.Stderr)
	}
	if o.rm {
		if err := c.calls.Delete(context.Background(), end.fc); client.IgnoreNotFound(err) != nil {
			fmt.Fprintln(streams.ErrOut, kubectlError(err))
		}
	}
	return callExit(end.fc)
}

// cancelCall stops the call on Ctrl-C: spec.cancel, and with --rm the
// call is deleted (which stops it too).
func cancelCall(c *clients, fc *fnletv1.FunctionCall, o runOptions, streams genericclioptions.IOStreams) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if o.rm {
		err = c.calls.Delete(ctx, fc)
	} else {
		err = c.calls.Patch(ctx, fc, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"cancel":true}}`)))
	}
	if client.IgnoreNotFound(err) != nil {
		return &exitError{code: exitInterrupted, msg: "interrupted; cancelling the call failed: " + kubectlError(err)}
	}
	what := "cancelled"
	if o.rm {
		what = "deleted"
	}
	return &exitError{code: exitInterrupted, msg: fmt.Sprintf("interrupted: functioncall.fnlet.dev/%s %s", fc.Name, what)}
}
