package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	fnletv1 "github.com/fnlet/fnlet/api/v1alpha1"
)

func newWaitCommand(flags *genericclioptions.ConfigFlags, streams genericclioptions.IOStreams) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait CALL",
		Short: "Wait for a FunctionCall to end; exit with its exit code",
		Example: `  # Wait for a call and use its exit code
  kubectl fnlet wait resize-42 && echo done

  # Give up after a minute
  kubectl fnlet wait resize-42 --timeout=1m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClients(flags)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			fc, err := c.waitFinished(ctx, args[0])
			if err != nil {
				return err
			}
			return callExit(fc)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "Give up after this long (0: wait forever).")
	return cmd
}

// waitFinished watches the call until it has ended.
func (c *clients) waitFinished(ctx context.Context, name string) (*fnletv1.FunctionCall, error) {
	return c.waitFinishedNotify(ctx, name, nil)
}

// waitFinishedNotify is waitFinished that shows notify every unfinished
// version of the call it sees.
func (c *clients) waitFinishedNotify(ctx context.Context, name string, notify func(*fnletv1.FunctionCall)) (*fnletv1.FunctionCall, error) {
	for {
		var list fnletv1.FunctionCallList
		sel := client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", name)}
		if err := c.calls.List(ctx, &list, client.InNamespace(c.namespace), sel); err != nil {
			return nil, err
		}
		if len(list.Items) == 0 {
			return nil, apierrors.NewNotFound(fnletv1.GroupVersion.WithResource("functioncalls").GroupResource(), name)
		}
		if fc := &list.Items[0]; fc.IsFinished() {
			return fc, nil
		} else if notify != nil {
			notify(fc)
		}
		w, err := c.calls.Watch(ctx, &fnletv1.FunctionCallList{}, client.InNamespace(c.namespace), sel,
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
		if err != nil {
			return nil, err
		}
		fc, err := untilFinished(ctx, w, notify)
		w.Stop()
		if fc != nil || err != nil {
			return fc, err
		}
		// The watch closed (timeout, apiserver restart): list again.
	}
}

func untilFinished(ctx context.Context, w watch.Interface, notify func(*fnletv1.FunctionCall)) (*fnletv1.FunctionCall, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("timed out waiting for the call: %w", ctx.Err())
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, nil
			}
			switch ev.Type {
			case watch.Deleted:
				fc := ev.Object.(*fnletv1.FunctionCall)
				return nil, fmt.Errorf("FunctionCall %s/%s was deleted before it ended", fc.Namespace, fc.Name)
			case watch.Error:
				return nil, apierrors.FromObject(ev.Object)
			}
			if fc, ok := ev.Object.(*fnletv1.FunctionCall); ok {
				if fc.IsFinished() {
					return fc, nil
				}
				if notify != nil {
					notify(fc)
				}
			}
		}
	}
}

// callExit mirrors a finished call's outcome in the plugin's exit: the
// process's exit code, or 125 with the reason when it never exited (it
// failed before it ran, or was lost).
func callExit(fc *fnletv1.FunctionCall) error {
	if fc.Status.ExitCode != nil {
		if *fc.Status.ExitCode == 0 {
			return nil
		}
		msg := ""
		if fc.Status.Reason != fnletv1.ReasonError {
			msg = fmt.Sprintf("FunctionCall %s/%s: %s (exit code %d)", fc.Namespace, fc.Name, fc.Status.Reason, *fc.Status.ExitCode)
		}
		return &exitError{code: int(*fc.Status.ExitCode), msg: msg}
	}
	msg := fmt.Sprintf("error: FunctionCall %s/%s %s: %s", fc.Namespace, fc.Name, fc.Status.Phase, fc.Status.Reason)
	if fc.Status.Message != "" {
		msg += ": " + fc.Status.Message
	}
	return &exitError{code: exitCallNotRun, msg: msg}
}
