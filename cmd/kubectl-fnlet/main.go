// Command kubectl-fnlet is the kubectl plugin of fnlet (`kubectl fnlet`):
// run a FunctionCall and stream its output like `docker run --rm`, read or
// follow a call's whole output, and wait for a call.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// exitError ends the plugin with code, after printing msg (if any) the
// way kubectl prints errors.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// Exit codes of the plugin itself, apart from a call's own (docker's
// convention: 125 when the call could not run).
const (
	exitUsage       = 1
	exitCallNotRun  = 125
	exitInterrupted = 130
)

func main() {
	streams := genericclioptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	cmd := newRootCommand(streams)
	err := cmd.Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, ee.msg)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, kubectlError(err))
	os.Exit(exitUsage)
}

// kubectlError formats err as kubectl does: "Error from server (Reason):
// message" for an API error.
func kubectlError(err error) string {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		st := se.Status()
		return fmt.Sprintf("Error from server (%s): %s", st.Reason, st.Message)
	}
	return "error: " + err.Error()
}

func newRootCommand(streams genericclioptions.IOStreams) *cobra.Command {
	flags := genericclioptions.NewConfigFlags(true)
	root := &cobra.Command{
		Use: "fnlet",
		// Help and usage say "kubectl fnlet ...", as the user types it.
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl fnlet"},
		Short:       "Run FunctionCalls and read their output",
		Long: `kubectl fnlet runs fnlet FunctionCalls (fnlet.dev/v1alpha1) and reads their whole
output through the log API (logs.fnlet.dev), which the kube-apiserver proxies to the
fnlet manager of the call's node: it works wherever kubectl works, under your RBAC
(get on functioncalls/log).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	flags.AddFlags(root.PersistentFlags())
	root.AddCommand(newRunCommand(flags, streams), newLogsCommand(flags, streams), newWaitCommand(flags, streams))
	return root
}
