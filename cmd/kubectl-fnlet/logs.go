package main

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

func newLogsCommand(flags *genericclioptions.ConfigFlags, streams genericclioptions.IOStreams) *cobra.Command {
	o := logOptions{tailBytes: -1}
	cmd := &cobra.Command{
		Use:   "logs CALL",
		Short: "Print a FunctionCall's whole stdout (or stderr), or follow it",
		Long: `Print the output of a FunctionCall, read from its node through the log API
(needs get on functioncalls/log in API group logs.fnlet.dev, ClusterRole
fnlet-log-reader). A finished call's output is kept on its node for the manager's
--log-retention; after that the answer is 410 Gone.`,
		Example: `  # The whole stdout of a call
  kubectl fnlet logs resize-42

  # Follow its stderr until the call ends
  kubectl fnlet logs resize-42 --stderr -f

  # The last 4 KiB
  kubectl fnlet logs resize-42 --tail 4096`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClients(flags)
			if err != nil {
				return err
			}
			out := streams.Out
			if o.stderr {
				out = streams.ErrOut
			}
			return c.copyLog(cmd.Context(), args[0], o, out)
		},
	}
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "Keep printing output until the call ends.")
	cmd.Flags().BoolVar(&o.stderr, "stderr", false, "The call's stderr instead of its stdout (printed to stderr).")
	cmd.Flags().Int64Var(&o.tailBytes, "tail", -1, "Only the last N bytes (-1: all).")
	cmd.Flags().Int64Var(&o.offset, "offset", 0, "Start at this byte (not with --tail).")
	return cmd
}
